//! Answers of the token store remembered for a short time (`auth.cache_ttl`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ebb_common::auth::Caller;

/// Answers of the token store remembered for a short time: a call with a token checked less
/// than `ttl` ago reads nothing. A revocation empties this replica's cache at once; other
/// replicas read the store again within `ttl` (`auth.cache_ttl`, at most 2 seconds), so a
/// revoked token stops working everywhere within that time. A zero `ttl` reads the store on
/// every call. Only live tokens are remembered, never past their expiry (which the guard also
/// checks on every call), and unknown secrets are always read from the store.
pub struct TokenCache {
    ttl: Duration,
    live: Mutex<HashMap<String, (Caller, Instant)>>,
}

/// Most tokens remembered at once; past that the expired ones are dropped, or all.
const TOKEN_CACHE_CAPACITY: usize = 10_000;

impl TokenCache {
    /// A cache keeping answers for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            live: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Caller, Instant)>> {
        // A panic while holding the lock cannot leave the map half-changed.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, secret_sha256: &str, now: Instant) -> Option<Caller> {
        match self.entries().get(secret_sha256) {
            Some((caller, until)) if *until > now => Some(caller.clone()),
            _ => None,
        }
    }

    pub(crate) fn put(&self, secret_sha256: String, caller: &Caller, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut until = now + self.ttl;
        if let Some(expires) = caller.expires_at {
            let left = expires
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            until = until.min(now + left);
        }
        let mut live = self.entries();
        if live.len() >= TOKEN_CACHE_CAPACITY {
            live.retain(|_, (_, u)| *u > now);
            if live.len() >= TOKEN_CACHE_CAPACITY {
                live.clear();
            }
        }
        live.insert(secret_sha256, (caller.clone(), until));
    }

    /// Forgets every remembered token: called after a revocation commits.
    pub fn forget_all(&self) {
        self.entries().clear();
    }
}
