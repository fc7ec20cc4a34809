//! Whether this process's peers accept the token it presents. A service whose token a peer
//! refuses cannot do its work (every scheduler task, every relayed event, every token check
//! would fail), so its health turns NOT_SERVING and says why in its log, once a minute, instead
//! of failing silently call after call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tonic::transport::Channel;

/// How often a standing refusal is logged again.
const LOG_EVERY: Duration = Duration::from_secs(60);

struct Refusal {
    reason: String,
    logged: Instant,
}

static REFUSALS: Mutex<BTreeMap<String, Refusal>> = Mutex::new(BTreeMap::new());

/// The first peer that refuses this process's token, as a sentence naming it and its answer;
/// `None` while every peer called so far accepts it.
pub fn refusal() -> Option<String> {
    let refusals = REFUSALS.lock().ok()?;
    refusals.values().next().map(|r| r.reason.clone())
}

/// Records what `peer` answered, from the answer's headers: a call refused before it reached
/// a handler (UNAUTHENTICATED, or PERMISSION_DENIED, which service-to-service methods answer
/// only for a token of the wrong kind) is a trailers-only answer whose headers carry the code.
pub fn observe(peer: &str, headers: &http::HeaderMap) {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    let refused = matches!(code, Some(16 | 7));
    let Ok(mut refusals) = REFUSALS.lock() else {
        return;
    };
    if !refused {
        if refusals.remove(peer).is_some() {
            tracing::info!(peer, "the peer accepts this service's token again");
        }
        return;
    }
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| {
            // Percent-encoded, as the gRPC HTTP/2 protocol says.
            percent_encoding::percent_decode_str(m)
                .decode_utf8_lossy()
                .chars()
                .take(200)
                .collect::<String>()
        })
        .unwrap_or_default();
    let reason = format!(
        "{peer} refuses this service's token (auth.service_token, else admin_token): {} {message}",
        if code == Some(16) {
            "UNAUTHENTICATED"
        } else {
            "PERMISSION_DENIED"
        }
    );
    let now = Instant::now();
    match refusals.get_mut(peer) {
        Some(r) if now.duration_since(r.logged) < LOG_EVERY => r.reason = reason,
        _ => {
            tracing::error!(peer, reason = %reason, "not serving: a peer refuses this service's token");
            refusals.insert(
                peer.to_owned(),
                Refusal {
                    reason,
                    logged: now,
                },
            );
        }
    }
}

/// A channel whose answers are [`observe`]d as those of `peer`.
#[derive(Clone, Debug)]
pub struct Watched {
    inner: Channel,
    peer: Arc<str>,
}

impl Watched {
    /// Watches `inner`, the channel to `peer` (its URL).
    pub fn new(inner: Channel, peer: &str) -> Self {
        Self {
            inner,
            peer: peer.into(),
        }
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Watched {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let answer = self.inner.call(request);
        let peer = self.peer.clone();
        Box::pin(async move {
            let response = answer.await?;
            observe(&peer, response.headers());
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(code: &str, message: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", code.parse().expect("value"));
        h.insert("grpc-message", message.parse().expect("value"));
        h
    }

    #[test]
    fn a_refusal_stands_until_the_peer_accepts_again() {
        let peer = "http://peer-under-test:1";
        observe(peer, &headers("16", "invalid%2C revoked or expired token"));
        let reason = refusal().expect("refused");
        assert!(reason.contains(peer), "{reason}");
        assert!(
            reason.contains("UNAUTHENTICATED invalid, revoked or expired token"),
            "{reason}"
        );
        // Another answer of the handler (an error in trailers, or none) clears it.
        observe(peer, &http::HeaderMap::new());
        assert!(refusal().is_none_or(|r| !r.contains(peer)));
        // A handler's own refusal of a request is not about the token.
        observe(peer, &headers("3", "bad"));
        assert!(refusal().is_none_or(|r| !r.contains(peer)));
    }
}
