//! The one layer every request passes before routing: [`guard`](super::guard) (Host, Origin,
//! declared length), then [`auth`](super::auth) (who the caller is, and whether it may). Written
//! as a plain tower service rather than two `from_fn` middlewares: a request that passes costs
//! two header checks and no boxed future, clone of the router or extra task state.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};

use super::host_check::{AllowedHosts, FrontDoor};
use crate::app::AppState;

/// Adds [`Edge`] in front of a service.
#[derive(Clone)]
pub(crate) struct EdgeLayer {
    state: AppState,
    hosts: AllowedHosts,
}

impl EdgeLayer {
    /// The layer for `state`, with the host names its configuration allows.
    pub(crate) fn new(state: AppState) -> Self {
        let hosts = AllowedHosts::from_config(&state.config());
        Self { state, hosts }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge { inner, state: self.state.clone(), hosts: self.hosts.clone() }
    }
}

/// Answers a refused request itself; passes the others on with their [`crate::app::Caller`].
#[derive(Clone)]
pub(crate) struct Edge<S> {
    inner: S,
    state: AppState,
    hosts: AllowedHosts,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let checked =
            super::host_check::check(&self.hosts, &req).and_then(|()| super::auth::identify(&self.state, &req));
        match checked {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                EdgeFuture::Inner { future: self.inner.call(req) }
            }
            Err(refusal) => EdgeFuture::Refused { response: Some(refusal.into_response()) },
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future, or a refusal ready at once.
    #[project = EdgeFutureProj]
    pub enum EdgeFuture<F> {
        /// Passed on.
        Inner { #[pin] future: F },
        /// Refused here.
        Refused { response: Option<Response> },
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for EdgeFuture<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EdgeFutureProj::Inner { future } => future.poll(cx),
            // Polled once: a future is not polled again after it is ready.
            EdgeFutureProj::Refused { response } => Poll::Ready(Ok(response.take().unwrap_or_default())),
        }
    }
}

/// The checks only a real connection needs ([`FrontDoor::check`]), in front of the router: the
/// server adds it, so the router driven in-process by tests keeps only the checks that need no
/// connection. A plain service like [`Edge`], for the same reason (a passing request costs four
/// header lookups and nothing boxed).
#[derive(Clone)]
pub(crate) struct FrontDoorLayer(std::sync::Arc<FrontDoor>);

impl FrontDoorLayer {
    /// The layer for the server's front door.
    pub(crate) fn new(front: std::sync::Arc<FrontDoor>) -> Self {
        Self(front)
    }
}

impl<S> Layer<S> for FrontDoorLayer {
    type Service = FrontDoorService<S>;

    fn layer(&self, inner: S) -> FrontDoorService<S> {
        FrontDoorService { inner, front: std::sync::Arc::clone(&self.0) }
    }
}

/// Answers a request that fails the connection checks itself; passes the others on.
#[derive(Clone)]
pub(crate) struct FrontDoorService<S> {
    inner: S,
    front: std::sync::Arc<FrontDoor>,
}

impl<S> Service<Request> for FrontDoorService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.front.check(&req) {
            Ok(()) => EdgeFuture::Inner { future: self.inner.call(req) },
            Err(refusal) => EdgeFuture::Refused { response: Some(refusal.into_response()) },
        }
    }
}
