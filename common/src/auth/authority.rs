//! Asking who a secret belongs to: the [`TokenAuthority`] seam, and lifecycle as the remote one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tonic::Code;

use super::caller::{Caller, role_from_proto};
use super::secrets::hash_secret;

/// Why a presented token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown, revoked or expired.
    Invalid,
    /// The token store cannot be asked right now.
    Unavailable(String),
}

/// Looks up tokens that are not in the configuration: lifecycle reads its store, the other
/// services ask lifecycle.
pub trait TokenAuthority: Send + Sync + 'static {
    /// The caller a secret belongs to.
    fn authenticate<'a>(&'a self, secret: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>>;
}

/// Asks lifecycle's `TokenService.AuthenticateToken`, caching positive answers for a short
/// time (at most 2 seconds, never past the token's expiry) so that a revocation takes effect
/// on this service within that time.
pub struct RemoteAuthority {
    client: tokio::sync::Mutex<
        ebb_proto::lifecycle::v1::token_service_client::TokenServiceClient<
            crate::client::TracedChannel,
        >,
    >,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Caller, Instant)>>,
}

/// Most entries the positive cache holds before it is emptied.
const CACHE_CAPACITY: usize = 10_000;

impl RemoteAuthority {
    /// Asks lifecycle at `url`, caching answers for `ttl` (capped at 2 seconds).
    pub fn new(url: &str, ttl: Duration) -> Result<Self, String> {
        let channel = crate::client::channel(url, Duration::from_secs(10))?;
        Ok(Self {
            client: tokio::sync::Mutex::new(
                ebb_proto::lifecycle::v1::token_service_client::TokenServiceClient::new(channel),
            ),
            ttl: ttl.min(Duration::from_secs(2)),
            cache: Mutex::new(HashMap::new()),
        })
    }
}

impl TokenAuthority for RemoteAuthority {
    fn authenticate<'a>(&'a self, secret: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(async move {
            let key = hash_secret(secret);
            let now = Instant::now();
            if let Ok(cache) = self.cache.lock()
                && let Some((caller, until)) = cache.get(&key)
                && *until > now
            {
                return Ok(caller.clone());
            }
            let mut client = self.client.lock().await.clone();
            let answer = client
                .authenticate_token(ebb_proto::lifecycle::v1::AuthenticateTokenRequest {
                    secret: secret.to_owned(),
                })
                .await;
            let resp = match answer {
                Ok(r) => r.into_inner(),
                Err(s) if s.code() == Code::NotFound => return Err(AuthError::Invalid),
                Err(s) => {
                    return Err(AuthError::Unavailable(format!(
                        "the token service answered {:?}: {}",
                        s.code(),
                        s.message()
                    )));
                }
            };
            let role = role_from_proto(resp.role).ok_or(AuthError::Invalid)?;
            let expires_at = resp.expire_time.as_ref().and_then(|t| {
                std::time::UNIX_EPOCH.checked_add(Duration::new(
                    u64::try_from(t.seconds).ok()?,
                    u32::try_from(t.nanos).ok()?,
                ))
            });
            let caller = Caller {
                token_id: resp.token_id,
                role,
                organization_id: (!resp.organization_id.is_empty()).then_some(resp.organization_id),
                expires_at,
                description: String::new(),
            };
            let mut until = now + self.ttl;
            if let Some(exp) = expires_at {
                let left = exp
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                until = until.min(now + left);
            }
            if let Ok(mut cache) = self.cache.lock() {
                if cache.len() >= CACHE_CAPACITY {
                    cache.retain(|_, (_, u)| *u > now);
                    if cache.len() >= CACHE_CAPACITY {
                        cache.clear();
                    }
                }
                cache.insert(key, (caller.clone(), until));
            }
            Ok(caller)
        })
    }
}
