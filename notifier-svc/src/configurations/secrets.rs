//! Signing secrets of configurations: added, retired, and read for signing or as metadata.

use ebb_common::Result;
use ebb_common::db::Db;
use ebb_common::sql::placeholders;
use ebb_common::time::EpochMs;
use sea_orm::{ConnectionTrait, Value};

use super::model::SecretInfo;
use crate::rows;

/// Adds a signing secret.
pub async fn insert_secret<C: ConnectionTrait>(
    conn: &C,
    configuration_id: &str,
    secret: &str,
    now: EpochMs,
) -> Result<()> {
    conn.execute_raw(ebb_common::db::stmt(
        conn.get_database_backend(),
        "INSERT INTO signing_secrets (id, configuration_id, secret, created_ms, expires_ms)
         VALUES ($1, $2, $3, $4, NULL)",
        [
            Value::from(format!("sec_{}", uuid::Uuid::now_v7().simple())),
            Value::from(configuration_id),
            Value::from(secret),
            Value::from(now),
        ],
    ))
    .await?;
    Ok(())
}

/// Retires the current secrets of a configuration at `expires` (earlier expiries are kept).
pub async fn expire_secrets<C: ConnectionTrait>(
    conn: &C,
    configuration_id: &str,
    expires: EpochMs,
) -> Result<()> {
    conn.execute_raw(ebb_common::db::stmt(
        conn.get_database_backend(),
        "UPDATE signing_secrets SET expires_ms = $2
         WHERE configuration_id = $1 AND (expires_ms IS NULL OR expires_ms > $2)",
        [Value::from(configuration_id), Value::from(expires)],
    ))
    .await?;
    Ok(())
}

/// Metadata of the secrets of each of `ids`: (configuration id, secret metadata), oldest first.
pub(super) async fn secrets_of<C: ConnectionTrait>(
    conn: &C,
    ids: &[String],
) -> Result<Vec<(String, SecretInfo)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = conn
        .query_all_raw(ebb_common::db::stmt(
            conn.get_database_backend(),
            &format!(
                "SELECT id, configuration_id, created_ms, expires_ms FROM signing_secrets
                 WHERE configuration_id IN ({}) ORDER BY created_ms, id",
                placeholders(1, ids.len())
            ),
            ids.iter().map(|i| Value::from(i.clone())),
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                rows::get(r, "configuration_id")?,
                SecretInfo {
                    id: rows::get(r, "id")?,
                    created_ms: rows::get(r, "created_ms")?,
                    expires_ms: rows::get(r, "expires_ms")?,
                },
            ))
        })
        .collect()
}

/// Secrets that sign now for each of `ids`: (configuration id, secret), newest first.
pub async fn signing_secrets_of(db: &Db, ids: &[String]) -> Result<Vec<(String, String)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = db
        .conn
        .query_all_raw(db.stmt(
            &format!(
                "SELECT configuration_id, secret FROM signing_secrets
                 WHERE configuration_id IN ({}) AND (expires_ms IS NULL OR expires_ms > {})
                 ORDER BY created_ms DESC, id DESC",
                placeholders(1, ids.len()),
                ebb_common::db::now_ms_sql(db.backend())
            ),
            ids.iter().map(|i| Value::from(i.clone())),
        ))
        .await?;
    rows.iter()
        .map(|r| Ok((rows::get(r, "configuration_id")?, rows::get(r, "secret")?)))
        .collect()
}

/// Secrets that sign now, newest first.
pub async fn signing_secrets(db: &Db, configuration_id: &str) -> Result<Vec<String>> {
    Ok(signing_secrets_of(db, &[configuration_id.to_owned()])
        .await?
        .into_iter()
        .map(|(_, s)| s)
        .collect())
}
