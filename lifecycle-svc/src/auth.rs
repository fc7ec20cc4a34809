//! What the shared authentication layer needs from lifecycle: authenticating a secret against
//! the token store, telling which organization a resource belongs to, and recording refused
//! calls as `auth.denied` events.

use std::sync::Arc;

use ebb_common::Error;
use ebb_common::auth::{
    AuthError, Caller, Denial, DenialSink, TableResolver, TokenAuthority, hash_secret,
};
use ebb_common::db::Db;
use ebb_common::time::now_ms;
use futures::future::BoxFuture;
use serde_json::json;

use crate::core::Lifecycle;
use crate::events::{NewEvent, outbox};
use crate::tenancy::tokens::{caller, find_live};

/// Authenticates from the store on every call: no cache, so a revocation takes effect at once
/// on every lifecycle replica.
pub struct LocalAuthority {
    db: Db,
}

impl LocalAuthority {
    /// Reads `db`'s token store.
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

impl TokenAuthority for LocalAuthority {
    fn authenticate<'a>(
        &'a self,
        secret: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Caller, AuthError>> {
        Box::pin(async move {
            match find_live(&self.db.read, &hash_secret(secret), now_ms()).await {
                Ok(Some(row)) => caller(&row).map_err(|e| AuthError::Unavailable(e.to_string())),
                Ok(None) => Err(AuthError::Invalid),
                Err(e) => Err(AuthError::Unavailable(e.to_string())),
            }
        })
    }
}

/// Which organization owns the workspaces, projects, runs and tokens named in requests.
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
}

/// Writes an `auth.denied` outbox event for every refusal of a token bound to an
/// organization, in that organization's stream (so its audit chain holds it). Refusals without
/// a valid organization token (no token, a bad one, a service token) have no organization to
/// file them under: they are logged at warn only, which also keeps a flood of anonymous calls
/// from filling the outbox.
pub struct DeniedEvents {
    core: Lifecycle,
}

impl DeniedEvents {
    /// Writes to `core`'s outbox.
    pub fn new(core: Lifecycle) -> Arc<Self> {
        Arc::new(Self { core })
    }
}

impl DenialSink for DeniedEvents {
    fn record(&self, denial: Denial) {
        let Some(caller) = denial.caller.clone() else {
            return;
        };
        let Some(org) = caller.organization_id.clone() else {
            return;
        };
        let core = self.core.clone();
        tokio::spawn(async move {
            let event = NewEvent::new(
                &org,
                "auth.denied",
                "token",
                &caller.token_id,
                &caller.token_id,
                json!({
                    "method": denial.method,
                    "code": format!("{:?}", denial.code),
                    "reason": denial.reason,
                    "role": caller.role.as_str(),
                }),
            );
            let written = async {
                let txn = core.begin().await?;
                outbox::write(&txn, vec![event], now_ms()).await?;
                txn.commit().await.map_err(Error::from)
            }
            .await;
            if let Err(e) = written {
                tracing::warn!(error = %e, organization_id = %org, "cannot record a denied call");
            }
        });
    }
}
