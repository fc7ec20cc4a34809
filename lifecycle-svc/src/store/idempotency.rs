//! Safe retries of mutating calls: the response to a `request_id` is stored in the same
//! transaction as the change, and a repeat of the call answers it again.

use ebb_common::db::{is_unique_violation, stmt};
use ebb_common::time::EpochMs;
use ebb_common::{Error, Result};
use prost::Message;
use sea_orm::ConnectionTrait;
use sha2::{Digest, Sha256};

/// Longest accepted request id.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A fingerprint of the request, so a reused id with another request is refused.
pub fn request_hash(request: &impl Message) -> String {
    hex::encode(Sha256::digest(request.encode_to_vec()))
}

/// Validates a request id.
pub fn check_request_id(request_id: &str) -> Result<()> {
    if request_id.len() > MAX_REQUEST_ID_LEN {
        return Err(Error::invalid(
            "request_id",
            format!("longer than {MAX_REQUEST_ID_LEN} bytes"),
        ));
    }
    Ok(())
}

/// The stored response of an earlier call with this id, if any.
pub async fn replay<R: Message + Default>(
    conn: &impl ConnectionTrait,
    method: &str,
    request_id: &str,
    hash: &str,
) -> Result<Option<R>> {
    let row = conn
        .query_one_raw(stmt(
            conn.get_database_backend(),
            "SELECT request_hash, response FROM request_log WHERE method = $1 AND request_id = $2",
            [method.into(), request_id.into()],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let stored_hash: String = row.try_get("", "request_hash")?;
    if stored_hash != hash {
        return Err(Error::invalid(
            "request_id",
            "was already used for a different request",
        ));
    }
    let bytes: Vec<u8> = row.try_get("", "response")?;
    R::decode(bytes.as_slice())
        .map(Some)
        .map_err(|e| Error::Internal(format!("stored response does not decode: {e}")))
}

/// Stores the response of a call.
pub async fn remember(
    conn: &impl ConnectionTrait,
    method: &str,
    request_id: &str,
    hash: &str,
    response: &impl Message,
    now: EpochMs,
) -> Result<()> {
    let result = conn
        .execute_raw(stmt(
            conn.get_database_backend(),
            "INSERT INTO request_log (method, request_id, request_hash, response, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
            [
                method.into(),
                request_id.into(),
                hash.into(),
                response.encode_to_vec().into(),
                now.into(),
            ],
        ))
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(Error::Aborted(
            "a concurrent call with the same request_id is in progress; retry it".into(),
        )),
        Err(e) => Err(e.into()),
    }
}
