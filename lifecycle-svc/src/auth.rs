//! What the shared authentication layer needs from lifecycle: authenticating a secret against
//! the token store, telling which organization a resource belongs to, and recording refused
//! calls as `auth.denied` events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ebb_common::Error;
use ebb_common::auth::{
    AuthError, Caller, Denial, DenialSink, TableResolver, TokenAuthority, hash_secret,
};
use ebb_common::db::Db;
use ebb_common::time::{now_ms, rfc3339};
use futures::future::BoxFuture;
use serde_json::json;
use tonic::Code;

use crate::core::Lifecycle;
use crate::events::{NewEvent, outbox};
use crate::tenancy::tokens::{caller, find_live};
use crate::token_cache::TokenCache;

/// Authenticates from the store, through `cache`.
pub struct LocalAuthority {
    db: Db,
    cache: Arc<TokenCache>,
}

impl LocalAuthority {
    /// Reads `db`'s token store, remembering answers in `cache`.
    pub fn new(db: Db, cache: Arc<TokenCache>) -> Self {
        Self { db, cache }
    }
}

impl TokenAuthority for LocalAuthority {
    fn authenticate<'a>(
        &'a self,
        secret: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Caller, AuthError>> {
        Box::pin(async move {
            let hash = hash_secret(secret);
            let now = Instant::now();
            if let Some(caller) = self.cache.get(&hash, now) {
                return Ok(caller);
            }
            match find_live(&self.db.read, &hash, now_ms()).await {
                Ok(Some(row)) => {
                    let caller = caller(&row).map_err(|e| AuthError::Unavailable(e.to_string()))?;
                    self.cache.put(hash, &caller, now);
                    Ok(caller)
                }
                Ok(None) => Err(AuthError::Invalid),
                Err(e) => Err(AuthError::Unavailable(e.to_string())),
            }
        })
    }
}

/// Which organization owns the workspaces, projects, runs and tokens named in requests.
/// Remembered once read: none of these rows ever changes organization, and their ids are
/// UUIDs never reused.
pub fn resolver(db: Db) -> TableResolver {
    TableResolver::new(
        db,
        &[
            ("ebb.lifecycle.v1.", "workspace_id", "workspace"),
            ("ebb.lifecycle.v1.", "workspace.id", "workspace"),
            ("ebb.lifecycle.v1.", "project_id", "project"),
            ("ebb.lifecycle.v1.", "run_id", "run"),
            ("ebb.lifecycle.v1.TokenService", "token_id", "token"),
            ("ebb.lifecycle.v1.DeprovisionService", "entity_id", "entity"),
            ("ebb.lifecycle.v1.DeprovisionService", "entity.id", "entity"),
            (
                "ebb.lifecycle.v1.DeprovisionService",
                "from_entity_id",
                "entity",
            ),
            (
                "ebb.lifecycle.v1.DeprovisionService",
                "to_entity_id",
                "entity",
            ),
            (
                "ebb.lifecycle.v1.DeprovisionService",
                "relationship_id",
                "relationship",
            ),
            (
                "ebb.lifecycle.v1.DeprovisionService",
                "action_run_id",
                "action_run",
            ),
            (
                "ebb.lifecycle.v1.DeprovisionService",
                "scheduled_action_id",
                "scheduled_action",
            ),
            (
                "ebb.lifecycle.v1.DeprovisionService",
                "step_id",
                "action_step",
            ),
        ],
        &[
            ("entity", "entities", "id"),
            ("relationship", "relationships", "id"),
            ("action_run", "action_runs", "id"),
            ("scheduled_action", "scheduled_actions", "id"),
            (
                "action_step",
                "(SELECT s.id AS id, r.organization_id AS organization_id FROM action_steps s \
                 JOIN action_runs r ON r.id = s.action_run_id) AS steps_of_organizations",
                "id",
            ),
            ("workspace", "workspaces", "id"),
            ("project", "projects", "id"),
            ("run", "runs", "id"),
            ("token", "api_tokens", "id"),
        ],
    )
    .remembering()
}

/// Writes `auth.denied` outbox events for refusals of tokens bound to an organization,
/// aggregated: one event per caller (token), method and code per window (a minute by
/// default), carrying how many calls it stands for. Refusals cost the caller nothing, so
/// without this 300 refused calls were 300 events, 300 audit rows and 300 webhooks.
///
/// The first refusal of a key opens its window; the event is written when the window closes.
/// At most [`MAX_OPEN_WINDOWS`] keys are open at once; refusals past that are only logged
/// (by the guard, as every refusal is). Windows still open at shutdown are lost with the
/// process; the log has every refusal.
#[derive(Clone)]
pub struct DeniedEvents {
    core: Lifecycle,
    window: Duration,
    open: Arc<Mutex<HashMap<DenialKey, Tally>>>,
}

/// Most aggregation windows open at once.
pub const MAX_OPEN_WINDOWS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DenialKey {
    organization_id: String,
    token_id: String,
    method: String,
    code: Code,
}

#[derive(Debug)]
struct Tally {
    count: u64,
    role: String,
    reason: String,
    first_at: i64,
    last_at: i64,
}

impl DeniedEvents {
    /// Writes to `core`'s outbox, one event per key per `window`.
    pub fn new(core: Lifecycle, window: Duration) -> Arc<Self> {
        Arc::new(Self {
            core,
            window,
            open: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<DenialKey, Tally>> {
        // A panic while holding the lock cannot leave the map half-changed.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes `key`'s window: writes its event.
    async fn flush(self, key: DenialKey) {
        tokio::time::sleep(self.window).await;
        let Some(tally) = self.open().remove(&key) else {
            return;
        };
        let event = NewEvent::new(
            &key.organization_id,
            "auth.denied",
            "token",
            &key.token_id,
            &key.token_id,
            json!({
                "method": key.method,
                "code": format!("{:?}", key.code),
                "reason": tally.reason,
                "role": tally.role,
                "count": tally.count,
                "first_time": rfc3339(tally.first_at),
                "last_time": rfc3339(tally.last_at),
                "window_seconds": self.window.as_secs_f64(),
            }),
        );
        let written = async {
            let txn = self.core.begin().await?;
            outbox::write(&txn, vec![event], now_ms()).await?;
            txn.commit().await.map_err(Error::from)
        }
        .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, organization_id = %key.organization_id, "cannot record denied calls");
        }
    }
}

impl DenialSink for DeniedEvents {
    fn record(&self, denial: Denial) {
        let Some(caller) = denial.caller else {
            return;
        };
        let Some(organization_id) = caller.organization_id.clone() else {
            return;
        };
        let key = DenialKey {
            organization_id,
            token_id: caller.token_id.clone(),
            method: denial.method,
            code: denial.code,
        };
        let now = now_ms();
        let mut open = self.open();
        if let Some(tally) = open.get_mut(&key) {
            tally.count += 1;
            tally.last_at = now;
            return;
        }
        if open.len() >= MAX_OPEN_WINDOWS {
            return;
        }
        open.insert(
            key.clone(),
            Tally {
                count: 1,
                role: caller.role.as_str().to_owned(),
                reason: denial.reason,
                first_at: now,
                last_at: now,
            },
        );
        drop(open);
        tokio::spawn(self.clone().flush(key));
    }
}

#[cfg(test)]
mod tests {
    use ebb_common::auth::Role;

    use super::*;

    fn reader(expires_in: Option<Duration>) -> Caller {
        Caller {
            token_id: "t".into(),
            role: Role::Reader,
            organization_id: Some("org".into()),
            expires_at: expires_in.map(|d| std::time::SystemTime::now() + d),
            description: String::new(),
        }
    }

    #[test]
    fn tokens_are_remembered_for_the_ttl_until_a_revocation() {
        let cache = TokenCache::new(Duration::from_secs(1));
        let now = Instant::now();
        cache.put("h".into(), &reader(None), now);
        assert_eq!(cache.get("h", now), Some(reader(None)));
        assert_eq!(cache.get("other", now), None, "unknown secrets are read");
        assert_eq!(
            cache.get("h", now + Duration::from_secs(1)),
            None,
            "read again once the ttl has passed"
        );
        cache.forget_all();
        assert_eq!(cache.get("h", now), None, "a revocation empties the cache");
    }

    #[test]
    fn never_past_the_expiry_and_never_with_a_zero_ttl() {
        let cache = TokenCache::new(Duration::from_secs(2));
        let now = Instant::now();
        let soon = reader(Some(Duration::from_millis(300)));
        cache.put("h".into(), &soon, now);
        assert_eq!(cache.get("h", now), Some(soon));
        assert_eq!(cache.get("h", now + Duration::from_millis(400)), None);

        let off = TokenCache::new(Duration::ZERO);
        off.put("h".into(), &reader(None), now);
        assert_eq!(off.get("h", now), None);
    }
}
