//! The API token store: tokens bound to an organization and a role (service tokens to no
//! organization), kept as SHA-256 hashes of their secrets, listed without secrets and revoked
//! at once. Also what the other services need from it: authenticating a secret, telling which
//! organization a resource belongs to, and recording refused calls as `auth.denied` events.

use std::sync::Arc;

use ebb_common::auth::{
    AuthError, Caller, Denial, DenialSink, Role, TableResolver, TokenAuthority, hash_secret,
};
use ebb_common::db::Db;
use ebb_common::time::{EpochMs, now_ms};
use ebb_common::{Error, Result};
use futures::future::BoxFuture;
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use sea_orm_migration::prelude::*;
use serde_json::json;

use crate::core::Lifecycle;
use crate::outbox::{self, NewEvent};
use crate::sql::{exec, query_all, query_one};

/// The `api_tokens` table.
pub struct M0003Tokens;

impl MigrationName for M0003Tokens {
    fn name(&self) -> &str {
        "m0003_tokens"
    }
}

const TOKENS_SQL: &str = r#"
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    -- NULL only for service tokens, which act across organizations.
    organization_id TEXT REFERENCES organizations (id),
    role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'runner', 'service', 'reader')),
    -- SHA-256 of a 256-bit random secret; the secret itself is never stored.
    secret_sha256 TEXT NOT NULL UNIQUE CHECK (length(secret_sha256) = 64),
    description TEXT NOT NULL CHECK (length(description) <= 800),
    request_id TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    CHECK ((role = 'service') = (organization_id IS NULL)),
    CHECK (expires_at IS NULL OR expires_at > created_at)
);
CREATE UNIQUE INDEX api_tokens_request ON api_tokens (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX api_tokens_org ON api_tokens (organization_id, created_at, id);
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0003Tokens {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(TOKENS_SQL)
            .await?;
        Ok(())
    }
}

/// One stored token.
#[derive(Debug, Clone, FromQueryResult)]
pub struct TokenRow {
    pub id: String,
    pub organization_id: Option<String>,
    pub role: String,
    pub description: String,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

const COLUMNS: &str =
    "id, organization_id, role, description, created_by, created_at, expires_at, revoked_at";

impl TokenRow {
    /// The role, as stored.
    pub fn role(&self) -> Result<Role> {
        Role::parse(&self.role)
            .ok_or_else(|| Error::Internal(format!("token {} has role {}", self.id, self.role)))
    }
}

/// A token to create.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub organization_id: Option<String>,
    pub role: Role,
    pub description: String,
    pub expires_at: Option<EpochMs>,
    pub request_id: Option<String>,
    pub created_by: String,
}

/// Stores a token for `secret_sha256`. A repeated `request_id` answers the first token and
/// `false` (the secret is not shown again).
pub async fn create(
    conn: &impl ConnectionTrait,
    new: NewToken,
    secret_sha256: &str,
    now: EpochMs,
) -> Result<(TokenRow, bool)> {
    if let Some(rid) = &new.request_id
        && let Some(existing) = query_one::<TokenRow>(
            conn,
            &format!("SELECT {COLUMNS} FROM api_tokens WHERE request_id = $1"),
            [rid.clone().into()],
        )
        .await?
    {
        let same = existing.organization_id == new.organization_id
            && existing.role == new.role.as_str()
            && existing.description == new.description
            && existing.expires_at == new.expires_at;
        if !same {
            return Err(Error::invalid("request_id", "was used for another request"));
        }
        return Ok((existing, false));
    }
    if let Some(org) = &new.organization_id {
        crate::workspaces::get_org(conn, org).await?;
    }
    let id = uuid::Uuid::now_v7().to_string();
    exec(
        conn,
        "INSERT INTO api_tokens (id, organization_id, role, secret_sha256, description, \
         request_id, created_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        [
            id.clone().into(),
            new.organization_id.clone().into(),
            new.role.as_str().into(),
            secret_sha256.into(),
            new.description.clone().into(),
            new.request_id.clone().into(),
            new.created_by.clone().into(),
            now.into(),
            new.expires_at.into(),
        ],
    )
    .await?;
    if let Some(org) = &new.organization_id {
        outbox::write(
            conn,
            vec![NewEvent::new(
                org,
                "token.created",
                "token",
                &id,
                &new.created_by,
                json!({ "role": new.role.as_str(), "description": new.description, "expiresAt": new.expires_at }),
            )],
            now,
        )
        .await?;
    }
    let row = get(conn, &id).await?;
    Ok((row, true))
}

/// A token by id.
pub async fn get(conn: &impl ConnectionTrait, id: &str) -> Result<TokenRow> {
    query_one(
        conn,
        &format!("SELECT {COLUMNS} FROM api_tokens WHERE id = $1"),
        [id.into()],
    )
    .await?
    .ok_or_else(|| Error::not_found("token", id))
}

/// Revokes a token; revoking a revoked token changes nothing.
pub async fn revoke(
    conn: &impl ConnectionTrait,
    id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<TokenRow> {
    let n = exec(
        conn,
        "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        [now.into(), id.into()],
    )
    .await?;
    let row = get(conn, id).await?;
    if n > 0
        && let Some(org) = &row.organization_id
    {
        outbox::write(
            conn,
            vec![NewEvent::new(
                org,
                "token.revoked",
                "token",
                id,
                actor,
                json!({}),
            )],
            now,
        )
        .await?;
    }
    Ok(row)
}

/// Tokens in creation order after `after` (created_at, id); all organizations for `None`.
pub async fn list(
    conn: &impl ConnectionTrait,
    organization_id: Option<&str>,
    include_revoked: bool,
    after: Option<(i64, String)>,
    limit: u64,
) -> Result<Vec<TokenRow>> {
    let mut sql = format!("SELECT {COLUMNS} FROM api_tokens WHERE 1 = 1");
    let mut values: Vec<Value> = Vec::new();
    if let Some(org) = organization_id {
        values.push(org.into());
        sql.push_str(&format!(" AND organization_id = ${}", values.len()));
    }
    if !include_revoked {
        sql.push_str(" AND revoked_at IS NULL");
    }
    if let Some((t, id)) = after {
        values.push(t.into());
        values.push(id.into());
        sql.push_str(&format!(
            " AND (created_at > ${} OR (created_at = ${} AND id > ${}))",
            values.len() - 1,
            values.len() - 1,
            values.len()
        ));
    }
    values.push(
        <i64 as TryFrom<u64>>::try_from(limit)
            .unwrap_or(i64::MAX)
            .into(),
    );
    sql.push_str(&format!(" ORDER BY created_at, id LIMIT ${}", values.len()));
    query_all(conn, &sql, values).await
}

/// The live token whose secret hashes to `secret_sha256`.
pub async fn find_live(
    conn: &impl ConnectionTrait,
    secret_sha256: &str,
    now: EpochMs,
) -> Result<Option<TokenRow>> {
    query_one(
        conn,
        &format!(
            "SELECT {COLUMNS} FROM api_tokens WHERE secret_sha256 = $1 AND revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $2)"
        ),
        [secret_sha256.into(), now.into()],
    )
    .await
}

/// The caller a stored token stands for.
pub fn caller(row: &TokenRow) -> Result<Caller> {
    Ok(Caller {
        token_id: row.id.clone(),
        role: row.role()?,
        organization_id: row.organization_id.clone(),
        expires_at: row.expires_at.and_then(|ms| {
            std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(
                <u64 as TryFrom<i64>>::try_from(ms).ok()?,
            ))
        }),
    })
}

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
            match find_live(&self.db.conn, &hash_secret(secret), now_ms()).await {
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
