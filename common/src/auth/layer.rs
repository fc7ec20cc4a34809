//! The tower layer that puts every call but health and reflection through the [`Guard`].

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
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
            match guard.check(request).await {
                Ok(request) => inner.call(request).await,
                Err(status) => {
                    let mut response = status.into_http();
                    // A refusal answers before the body is read, so an HTTP/1.1 connection
                    // (gRPC-Web) cannot carry another request: say so, or a client's
                    // keep-alive pool reuses a socket the server is closing.
                    if http1 {
                        response.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                    }
                    Ok(response)
                }
            }
        })
    }
}
