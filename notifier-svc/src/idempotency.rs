//! Request ids: a retried mutating call returns the first answer instead of acting twice.
//!
//! The answer is stored in the same transaction as the change, so two concurrent calls with
//! one id cannot both act: the second one's insert fails and it replays the first answer.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ebb_common::Error;
use ebb_common::db::Db;
use prost::Message;
use sea_orm::{ConnectionTrait, Value};
use sha2::{Digest, Sha256};

use crate::rows;

/// Longest accepted request id.
const MAX_LEN: usize = 128;

/// A request id and what it must match on replay.
#[derive(Debug, Clone)]
pub struct RequestKey {
    /// The client's id.
    pub request_id: String,
    /// The RPC.
    pub method: &'static str,
    /// SHA-256 of the request with its request id cleared.
    pub fingerprint: String,
}

impl RequestKey {
    /// `None` when the client sent no request id (no deduplication then).
    pub fn new<M: Message>(
        method: &'static str,
        request_id: &str,
        request_without_id: &M,
    ) -> Result<Option<Self>, Error> {
        if request_id.is_empty() {
            return Ok(None);
        }
        if request_id.len() > MAX_LEN || request_id.chars().any(char::is_control) {
            return Err(Error::invalid(
                "request_id",
                format!("must be at most {MAX_LEN} printable characters"),
            ));
        }
        Ok(Some(Self {
            request_id: request_id.to_owned(),
            method,
            fingerprint: hex::encode(Sha256::digest(request_without_id.encode_to_vec())),
        }))
    }
}

/// The stored answer to `key`, if this request id was seen.
pub async fn replay<R: Message + Default>(
    db: &Db,
    key: &Option<RequestKey>,
) -> Result<Option<R>, Error> {
    let Some(key) = key else { return Ok(None) };
    let row = db
        .conn
        .query_one_raw(db.stmt(
            "SELECT method, fingerprint, response FROM request_ids WHERE request_id = $1",
            [Value::from(key.request_id.clone())],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let method: String = rows::get(&row, "method")?;
    let fingerprint: String = rows::get(&row, "fingerprint")?;
    if method != key.method || fingerprint != key.fingerprint {
        return Err(Error::invalid(
            "request_id",
            "already used for a different request",
        ));
    }
    let response: String = rows::get(&row, "response")?;
    let bytes = STANDARD
        .decode(response)
        .map_err(|e| Error::Internal(format!("stored response: {e}")))?;
    R::decode(bytes.as_slice())
        .map(Some)
        .map_err(|e| Error::Internal(format!("stored response: {e}")))
}

/// Records `response` as the answer to `key` inside the caller's transaction.
pub async fn remember<C: ConnectionTrait, R: Message>(
    conn: &C,
    key: &Option<RequestKey>,
    response: &R,
) -> Result<(), sea_orm::DbErr> {
    let Some(key) = key else { return Ok(()) };
    conn.execute_raw(ebb_common::db::stmt(
        conn.get_database_backend(),
        "INSERT INTO request_ids (request_id, method, fingerprint, response, created_ms)
         VALUES ($1, $2, $3, $4, $5)",
        [
            Value::from(key.request_id.clone()),
            Value::from(key.method),
            Value::from(key.fingerprint.clone()),
            Value::from(STANDARD.encode(response.encode_to_vec())),
            Value::from(ebb_common::time::now_ms()),
        ],
    ))
    .await?;
    Ok(())
}
