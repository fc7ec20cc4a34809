//! Signing secrets of configurations: added, retired, and read for signing or as metadata.

use ebb_common::Result;
use ebb_common::db::Db;
use ebb_common::sealing::Keyring;
use ebb_common::sql::placeholders;
use ebb_common::time::EpochMs;
use sea_orm::{ConnectionTrait, Value};

use super::model::SecretInfo;
use crate::rows;

/// What a signing secret is sealed for: its row, so a sealed value moved to another row does not
/// open there.
fn purpose(secret_id: &str) -> String {
    format!("signing_secrets/{secret_id}")
}

/// Adds a signing secret, sealed under the active encryption key.
pub async fn insert_secret<C: ConnectionTrait>(
    conn: &C,
    keys: &Keyring,
    configuration_id: &str,
    secret: &str,
    now: EpochMs,
) -> Result<()> {
    let id = format!("sec_{}", uuid::Uuid::now_v7().simple());
    let sealed = keys.seal(&purpose(&id), secret.as_bytes());
    conn.execute_raw(ebb_common::db::stmt(
        conn.get_database_backend(),
        "INSERT INTO signing_secrets (id, configuration_id, secret, created_ms, expires_ms)
         VALUES ($1, $2, $3, $4, NULL)",
        [
            Value::from(id),
            Value::from(configuration_id),
            Value::from(sealed),
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
pub async fn signing_secrets_of(
    db: &Db,
    keys: &Keyring,
    ids: &[String],
) -> Result<Vec<(String, String)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = db
        .conn
        .query_all_raw(db.stmt(
            &format!(
                "SELECT id, configuration_id, secret FROM signing_secrets
                 WHERE configuration_id IN ({}) AND (expires_ms IS NULL OR expires_ms > {})
                 ORDER BY created_ms DESC, id DESC",
                placeholders(1, ids.len()),
                ebb_common::db::now_ms_sql(db.backend())
            ),
            ids.iter().map(|i| Value::from(i.clone())),
        ))
        .await?;
    rows.iter()
        .map(|r| {
            let id: String = rows::get(r, "id")?;
            let stored: String = rows::get(r, "secret")?;
            Ok((
                rows::get(r, "configuration_id")?,
                keys.open_text(&purpose(&id), &stored)?,
            ))
        })
        .collect()
}

/// Seals every signing secret under the active key: those in clear (from before secrets were
/// sealed) and those under a retired key. Run at start; a replica doing the same at once only
/// replaces the value it read. How many were re-sealed.
pub async fn reseal_secrets(db: &Db, keys: &Keyring) -> Result<u64> {
    let rows = db
        .conn
        .query_all_raw(db.stmt("SELECT id, secret FROM signing_secrets", []))
        .await?;
    let mut resealed = 0;
    for r in &rows {
        let id: String = rows::get(r, "id")?;
        let stored: String = rows::get(r, "secret")?;
        let Some(new) = keys.reseal(&purpose(&id), &stored)? else {
            continue;
        };
        resealed += db
            .conn
            .execute_raw(db.stmt(
                "UPDATE signing_secrets SET secret = $1 WHERE id = $2 AND secret = $3",
                [Value::from(new), Value::from(id), Value::from(stored)],
            ))
            .await?
            .rows_affected();
    }
    Ok(resealed)
}

/// Secrets that sign now, newest first.
pub async fn signing_secrets(
    db: &Db,
    keys: &Keyring,
    configuration_id: &str,
) -> Result<Vec<String>> {
    Ok(signing_secrets_of(db, keys, &[configuration_id.to_owned()])
        .await?
        .into_iter()
        .map(|(_, s)| s)
        .collect())
}
