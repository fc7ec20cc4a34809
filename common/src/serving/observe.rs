//! The server side of [`crate::observe`]: every call gets its span (a child of the caller's
//! trace context) and is counted in the `grpc_server_*` series. It is the outermost layer, so
//! calls refused by limits or authentication are counted and traced too.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tracing::Instrument;

use crate::observe::{Call, Side, rpc};

/// Traces, counts and times every call a server answers.
#[derive(Clone, Copy, Debug, Default)]
pub struct ObserveLayer;

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed { inner }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Clone, Debug)]
pub struct Observed<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Observed<S>
where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let rpc = rpc(request.uri().path());
        let span = crate::telemetry::server_span(&request, rpc);
        let call = Call::start(Side::Server, rpc, span.clone());
        let answer = span.in_scope(|| inner.call(request));
        Box::pin(async move {
            let response = answer.instrument(span).await?;
            Ok(call.respond(response))
        })
    }
}
