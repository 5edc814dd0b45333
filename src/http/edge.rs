//! The gates a request passes before routing: [`Edge`] on every router (Host, Origin, declared
//! length, then who the caller is), and the server's [`front_door`] (what only a real connection
//! needs checked). One plain tower service, [`Gate`], runs either check, rather than `from_fn`
//! middlewares: a request that passes costs its header checks and no boxed future, clone of the
//! router or extra task state.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};

use super::error::ApiError;
use super::host_check::{AllowedHosts, FrontDoor};
use crate::app::AppState;

/// What a [`Gate`] asks of each request: pass it on (after marking it, if need be) or answer it
/// here.
pub(crate) trait Check: Clone {
    /// `Ok` passes the request on; `Err` is the refusal answered instead.
    fn check(&self, req: &mut Request) -> Result<(), ApiError>;
}

/// Host, Origin and declared length ([`super::host_check::check`]), then who the caller is
/// ([`super::auth::identify`]), whose [`crate::app::Caller`] the request then carries.
#[derive(Clone)]
pub(crate) struct Edge {
    state: AppState,
    hosts: AllowedHosts,
}

impl Edge {
    /// The layer for `state`, with the host names its configuration allows.
    pub(crate) fn layer(state: AppState) -> GateLayer<Self> {
        let hosts = AllowedHosts::from_config(&state.config());
        GateLayer(Self { state, hosts })
    }
}

impl Check for Edge {
    fn check(&self, req: &mut Request) -> Result<(), ApiError> {
        super::host_check::check(&self.hosts, req)?;
        let caller = super::auth::identify(&self.state, req)?;
        req.extensions_mut().insert(caller);
        Ok(())
    }
}

/// The checks only a real connection needs ([`FrontDoor::check`]), in front of the router: the
/// server adds this layer, so the router driven in-process by tests keeps only the checks that
/// need no connection.
pub(crate) fn front_door(front: Arc<FrontDoor>) -> GateLayer<Arc<FrontDoor>> {
    GateLayer(front)
}

impl Check for Arc<FrontDoor> {
    fn check(&self, req: &mut Request) -> Result<(), ApiError> {
        FrontDoor::check(self, req)
    }
}

/// Adds a [`Gate`] with its check in front of a service.
#[derive(Clone)]
pub(crate) struct GateLayer<C>(C);

impl<C: Check, S> Layer<S> for GateLayer<C> {
    type Service = Gate<C, S>;

    fn layer(&self, inner: S) -> Gate<C, S> {
        Gate { check: self.0.clone(), inner }
    }
}

/// Answers a request its check refuses; passes the others on.
#[derive(Clone)]
pub(crate) struct Gate<C, S> {
    check: C,
    inner: S,
}

impl<C, S> Service<Request> for Gate<C, S>
where
    C: Check,
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        match self.check.check(&mut req) {
            Ok(()) => GateFuture::Inner { future: self.inner.call(req) },
            Err(refusal) => GateFuture::Refused { response: Some(refusal.into_response()) },
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future, or a refusal ready at once.
    #[project = GateFutureProj]
    pub enum GateFuture<F> {
        /// Passed on.
        Inner { #[pin] future: F },
        /// Refused here.
        Refused { response: Option<Response> },
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for GateFuture<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GateFutureProj::Inner { future } => future.poll(cx),
            // Polled once: a future is not polled again after it is ready.
            GateFutureProj::Refused { response } => Poll::Ready(Ok(response.take().unwrap_or_default())),
        }
    }
}
