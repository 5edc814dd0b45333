//! The hello-world limit for `scripts/bench.sh`: an axum 0.8 server on vramguard's own tokio
//! runtime (`vramguard::runtime` with the default `http.worker_threads`: every driver on, at
//! most 8 blocking threads) that answers `GET /api/v1/system/resource-check` with a fixed JSON body, read once
//! from a file: the bench saves vramguard's own answer there, so both send a body of the same
//! size. No routing beyond that one path, no middleware, no tracing, no work per request: what
//! axum and hyper cost on this machine, the ceiling vramguard's resource-check is compared with.
//!
//!   cargo build --release --example hello
//!   target/release/examples/hello BODY_FILE [ADDR]     (ADDR defaults to 127.0.0.1:0)
//!
//! Prints `listening on http://ADDR` on stderr once bound, as vramguard does.

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::Router;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(body_file) = args.next() else {
        eprintln!("usage: hello BODY_FILE [ADDR]");
        return ExitCode::from(2);
    };
    let addr: SocketAddr = match args.next().map(|a| a.to_string_lossy().parse()) {
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            eprintln!("hello: bad address: {e}");
            return ExitCode::from(2);
        }
    };
    let body = match std::fs::read(&body_file) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            eprintln!("hello: {}: {e}", body_file.to_string_lossy());
            return ExitCode::FAILURE;
        }
    };
    // The same runtime as vramguard's.
    let runtime = match vramguard::runtime(vramguard::Config::default().http.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hello: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: std::io::Result<()> = runtime.block_on(async move {
        let app = Router::new().route(
            "/api/v1/system/resource-check",
            get(move || {
                let body = body.clone();
                async move { ([(CONTENT_TYPE, "application/json")], body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr).await?;
        eprintln!("listening on http://{}", listener.local_addr()?);
        axum::serve(listener, app).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello: {e}");
            ExitCode::FAILURE
        }
    }
}
