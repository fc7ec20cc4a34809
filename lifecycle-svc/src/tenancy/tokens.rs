//! The API token store: tokens bound to an organization and a role (service tokens to no
//! organization), kept as SHA-256 hashes of their secrets, listed without secrets and revoked
//! at once.

use ebb_common::auth::{Caller, Role};
use ebb_common::time::EpochMs;
use ebb_common::{Error, Result};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::json;

use crate::events::{NewEvent, outbox};
use crate::store::{exec, query_all, query_one};
use crate::tenancy::orgs;

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
        orgs::get_org(conn, org).await?;
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
        description: row.description.clone(),
    })
}
