//! What every gRPC call leaves behind on either side: Prometheus series by the grpc-ecosystem
//! names (those of go-grpc-middleware's Prometheus provider, which stock Grafana dashboards
//! and alerting rules query) and a span named and attributed by the OpenTelemetry RPC
//! conventions. The server side is `serving::observe`; the client side is [`ClientLayer`],
//! part of every [`crate::client::TracedChannel`].
//!
//! A call is counted as started when it arrives (or is sent), and as handled, with its status
//! code, when its response stream ends: for streaming calls that is when the last message and
//! the trailers went out, not when the headers did.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body as _, Frame, SizeHint};
use tonic::Code;

pub use crate::rpcs::{Rpc, UNKNOWN, rpc};

/// Which end of a call this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

impl Side {
    fn names(self) -> [&'static str; 3] {
        match self {
            Side::Server => [
                "grpc_server_started_total",
                "grpc_server_handled_total",
                "grpc_server_handling_seconds",
            ],
            Side::Client => [
                "grpc_client_started_total",
                "grpc_client_handled_total",
                "grpc_client_handling_seconds",
            ],
        }
    }
}

/// Describes the call series of both sides.
pub(crate) fn describe() {
    for (side, whose) in [(Side::Server, "received"), (Side::Client, "sent")] {
        let [started, handled, seconds] = side.names();
        metrics::describe_counter!(
            started,
            format!("gRPC calls {whose}, by grpc_service, grpc_method and grpc_type.")
        );
        metrics::describe_counter!(
            handled,
            format!("gRPC calls {whose} that completed, by their status (grpc_code) as well.")
        );
        metrics::describe_histogram!(
            seconds,
            metrics::Unit::Seconds,
            format!("Time from a call's start to the end of its response stream ({whose} calls).")
        );
    }
}

/// The name go-grpc-middleware gives `code` (Go's `codes.Code.String()`): the `grpc_code`
/// label that stock dashboards and alerts match.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Whether a call ending with `code` is an error of its span: on the server only the codes
/// that say the server failed (the OpenTelemetry RPC conventions), on the client any but OK.
fn is_span_error(side: Side, code: Code) -> bool {
    match side {
        Side::Client => code != Code::Ok,
        Side::Server => matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ),
    }
}

/// The `grpc-status` of `headers` (a trailers-only response's headers, or trailers).
fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from_i32)
}

/// One call in flight: counted as started when made, as handled when dropped.
#[derive(Debug)]
pub struct Call {
    side: Side,
    rpc: &'static Rpc,
    started: Instant,
    span: tracing::Span,
    code: Option<Code>,
    ended: bool,
}

impl Call {
    /// Counts the call to `rpc` as started; `span` is its span, which gets its status code.
    pub fn start(side: Side, rpc: &'static Rpc, span: tracing::Span) -> Self {
        let [started, _, _] = side.names();
        metrics::counter!(
            started,
            "grpc_service" => rpc.service,
            "grpc_method" => rpc.method,
            "grpc_type" => rpc.kind,
        )
        .increment(1);
        Self {
            side,
            rpc,
            started: Instant::now(),
            span,
            code: None,
            ended: false,
        }
    }

    /// Ends the call with `code` now.
    pub fn fail(mut self, code: Code) {
        self.code = Some(code);
        self.ended = true;
    }

    /// The response, whose stream ends the call.
    pub fn respond(
        self,
        response: http::Response<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        // A status in the headers is a trailers-only response: the call ends here.
        if let Some(code) = status_in(response.headers()) {
            self.fail(code);
            return response;
        }
        let (parts, body) = response.into_parts();
        let body = Observed {
            inner: body,
            call: Some(self),
        };
        http::Response::from_parts(parts, tonic::body::Body::new(body))
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // A stream dropped before its end was cancelled (the peer went away); one that ended
        // without a status is taken as OK, as gRPC clients do.
        let code = match (self.code, self.ended) {
            (Some(code), _) => code,
            (None, true) => Code::Ok,
            (None, false) => Code::Cancelled,
        };
        let [_, handled, seconds] = self.side.names();
        let rpc = self.rpc;
        metrics::counter!(
            handled,
            "grpc_service" => rpc.service,
            "grpc_method" => rpc.method,
            "grpc_type" => rpc.kind,
            "grpc_code" => code_label(code),
        )
        .increment(1);
        metrics::histogram!(
            seconds,
            "grpc_service" => rpc.service,
            "grpc_method" => rpc.method,
            "grpc_type" => rpc.kind,
        )
        .record(self.started.elapsed().as_secs_f64());
        self.span.record("rpc.grpc.status_code", code as i64);
        if is_span_error(self.side, code) {
            self.span.record("otel.status_code", "ERROR");
        }
        if code != Code::Ok {
            // A failure is worth its trace even where the trace waits to see work.
            crate::telemetry::mark_work_in(&self.span);
        }
    }
}

/// A response body that ends its [`Call`] when the stream ends or is dropped, with the status
/// of the trailers.
struct Observed {
    inner: tonic::body::Body,
    call: Option<Call>,
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                // The trailers end the call: count it before they reach the peer.
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(mut call) = this.call.take()
                {
                    call.code = status_in(trailers);
                    call.ended = true;
                }
            }
            Poll::Ready(Some(Err(status))) => {
                if let Some(mut call) = this.call.take() {
                    call.code = Some(status.code());
                    call.ended = true;
                }
            }
            Poll::Ready(None) => {
                if let Some(mut call) = this.call.take() {
                    call.ended = true;
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(call) = self.call.as_mut()
            && self.inner.is_end_stream()
        {
            call.ended = true;
        }
    }
}

/// Counts, times and traces every call a client sends ([`Side::Client`]): a client span,
/// whose trace context the request carries, and the `grpc_client_*` series.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientLayer;

impl<S> tower::Layer<S> for ClientLayer {
    type Service = ClientCalls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientCalls { inner }
    }
}

/// The service of [`ClientLayer`].
#[derive(Clone, Debug)]
pub struct ClientCalls<S> {
    inner: S,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for ClientCalls<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let rpc = rpc(request.uri().path());
        let span = crate::telemetry::client_span(rpc);
        crate::telemetry::inject_into_headers(&span, request.headers_mut());
        let call = Call::start(Side::Client, rpc, span);
        let answer = inner.call(request);
        Box::pin(async move {
            match answer.await {
                Ok(response) => Ok(call.respond(response)),
                Err(e) => {
                    // The transport failed: tonic reports it as UNAVAILABLE.
                    call.fail(Code::Unavailable);
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpcs_are_named_by_service_method_and_type() {
        let r = rpc("/ebb.audit.v1.AuditService/ExportEvents");
        assert_eq!(
            (r.service, r.method, r.kind, r.name),
            (
                "ebb.audit.v1.AuditService",
                "ExportEvents",
                "server_stream",
                "ebb.audit.v1.AuditService/ExportEvents"
            )
        );
        assert_eq!(rpc("/grpc.health.v1.Health/Check").kind, "unary");
        assert_eq!(rpc("/grpc.health.v1.Health/Watch").kind, "server_stream");
        assert_eq!(
            rpc("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo").kind,
            "bidi_stream"
        );
    }

    #[test]
    fn unknown_paths_share_one_set_of_labels() {
        assert!(std::ptr::eq(rpc("/x.Y/Z"), &UNKNOWN));
        assert!(std::ptr::eq(
            rpc("/ebb.lifecycle.v1.LifecycleService/Nope"),
            &UNKNOWN
        ));
    }

    #[test]
    fn codes_have_the_names_go_grpc_middleware_gives_them() {
        let name = |n| code_label(Code::from_i32(n));
        assert_eq!(name(0), "OK");
        assert_eq!(name(1), "Canceled");
        assert_eq!(name(5), "NotFound");
        assert_eq!(name(16), "Unauthenticated");
        assert_eq!(name(99), "Unknown");
    }
}
