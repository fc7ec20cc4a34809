//! Stored responses that hold secrets (a signing secret returned once): sealed under the
//! service's encryption key ([`crate::sealing`]) instead of kept in clear for the retention.

use sea_orm::{ConnectionTrait, Value};

use super::{RequestKey, remember_with, replay_with, response_purpose};
use crate::db::stmt;
use crate::error::{Error, Result};
use crate::sealing::{self, Keyring};
use crate::time::EpochMs;
use prost::Message;

/// [`super::replay`] of a response stored by [`remember`]: for calls whose answers hold secrets.
pub async fn replay<R: Message + Default>(
    conn: &impl ConnectionTrait,
    key: Option<&RequestKey>,
    keys: &Keyring,
) -> Result<Option<R>> {
    replay_with(conn, key, Some(keys)).await
}

/// [`super::remember`], with the response sealed under `keys` (see [`crate::sealing`]): for calls whose
/// answers hold secrets, which must not be kept in clear for the retention.
pub async fn remember(
    conn: &impl ConnectionTrait,
    key: Option<&RequestKey>,
    response: &impl Message,
    now: EpochMs,
    keys: &Keyring,
) -> Result<()> {
    remember_with(conn, key, response, now, Some(keys)).await
}

/// Seals every stored response under the active key of `keys`: those in clear (stored before
/// the service sealed them) and those under a retired key. Run at start by services whose
/// responses hold secrets; concurrent replicas only replace the value they read. How many.
pub async fn reseal_responses(conn: &impl ConnectionTrait, keys: &Keyring) -> Result<u64> {
    let backend = conn.get_database_backend();
    let rows = conn
        .query_all_raw(stmt(
            backend,
            "SELECT organization_id, method, request_id, request_hash, response FROM request_log",
            [],
        ))
        .await?;
    let mut resealed = 0;
    for row in rows {
        let key = RequestKey {
            organization_id: row.try_get("", "organization_id")?,
            method: row.try_get("", "method")?,
            request_id: row.try_get("", "request_id")?,
            request_hash: row.try_get("", "request_hash")?,
        };
        let stored: Vec<u8> = row.try_get("", "response")?;
        let new = if stored.starts_with(sealing::PREFIX.as_bytes()) {
            let text = String::from_utf8(stored.clone())
                .map_err(|_| Error::Internal("a sealed stored response is not text".into()))?;
            match keys.reseal(&response_purpose(&key), &text)? {
                Some(new) => new.into_bytes(),
                None => continue,
            }
        } else {
            keys.seal(&response_purpose(&key), &stored).into_bytes()
        };
        resealed += conn
            .execute_raw(stmt(
                backend,
                "UPDATE request_log SET response = $1 \
                 WHERE organization_id = $2 AND method = $3 AND request_id = $4 AND response = $5",
                [
                    Value::from(new),
                    key.organization_id.into(),
                    key.method.into(),
                    key.request_id.into(),
                    Value::from(stored),
                ],
            ))
            .await?
            .rows_affected();
    }
    Ok(resealed)
}
