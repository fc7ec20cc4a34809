//! Limits on every call: a deadline, and a size for its request.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tonic::Status;

use crate::config::LimitsConfig;

/// Holds every call to a deadline (the client's `grpc-timeout` or the configured default,
/// whichever is sooner: DEADLINE_EXCEEDED) and its request to a size (RESOURCE_EXHAUSTED).
#[derive(Clone, Debug)]
pub struct LimitsLayer {
    timeout: Duration,
    max_request_bytes: usize,
}

impl LimitsLayer {
    /// The layer of `limits`.
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            timeout: limits.request_timeout,
            max_request_bytes: limits.max_request_bytes,
        }
    }
}

impl<S> tower::Layer<S> for LimitsLayer {
    type Service = Limits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limits {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service of [`LimitsLayer`].
#[derive(Clone, Debug)]
pub struct Limits<S> {
    layer: LimitsLayer,
    inner: S,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Limits<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map_or(self.layer.timeout, |t| t.min(self.layer.timeout));
        let max = self.layer.max_request_bytes;
        let request = request.map(|body| {
            tonic::body::Body::new(LimitedBody {
                inner: body,
                // A gRPC frame adds 5 bytes to the message.
                left: max + 5,
                max,
            })
        });
        Box::pin(async move {
            match tokio::time::timeout(timeout, inner.call(request)).await {
                Ok(response) => response,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the call did not finish within its deadline of {timeout:?}"
                ))
                .into_http()),
            }
        })
    }
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A request body that fails with RESOURCE_EXHAUSTED past `max` message bytes.
struct LimitedBody {
    inner: tonic::body::Body,
    left: usize,
    max: usize,
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if data.len() > this.left {
                        return Poll::Ready(Some(Err(Box::new(Status::resource_exhausted(
                            format!("the request exceeds {} bytes", this.max),
                        )))));
                    }
                    this.left -= data.len();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
