//! The tower layer that puts every call but health and reflection through the [`Guard`].

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http_body_util::BodyExt;
use tonic::body::Body;

use super::guard::Guard;
use crate::methods::{is_public, is_self_authorized};

/// A tower layer that runs [`Guard::check`] before every call.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    guard: Arc<Guard>,
}

impl AuthLayer {
    /// A layer consulting `guard`.
    pub fn new(guard: Guard) -> Self {
        Self {
            guard: Arc::new(guard),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            guard: self.guard.clone(),
            inner,
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    guard: Arc<Guard>,
    inner: S,
}

impl<S> tower::Service<http::Request<Body>> for AuthService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready serves this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        if is_public(path)
            || (is_self_authorized(path)
                && !request.headers().contains_key(http::header::AUTHORIZATION))
        {
            return Box::pin(inner.call(request));
        }
        let guard = self.guard.clone();
        let http1 = request.version() < http::Version::HTTP_2;
        Box::pin(async move {
            // Over HTTP/1.1 (gRPC-Web) the body is read before any answer: a refusal sent
            // while the client still writes would close the connection under it (EPIPE), and
            // its keep-alive pool would reuse a socket the server is closing. The limits layer
            // outside bounds what is read.
            let request = if http1 {
                let (parts, body) = request.into_parts();
                match body.collect().await {
                    Ok(bytes) => http::Request::from_parts(
                        parts,
                        Body::new(http_body_util::Full::new(bytes.to_bytes())),
                    ),
                    Err(status) => return Ok(closing(status.into_http())),
                }
            } else {
                request
            };
            match guard.check(request).await {
                Ok(request) => inner.call(request).await,
                Err(status) if http1 => Ok(closing(status.into_http())),
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// An HTTP/1.1 refusal ends its connection, and says so.
fn closing(mut response: http::Response<Body>) -> http::Response<Body> {
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}
