//! [`NotifierApi`]'s state, and what its handlers share: replies, request ids, replay and commit.

use std::sync::Arc;

use ebb_common::Result;
use ebb_common::db::Db;
use ebb_common::error::Violations;
use ebb_common::idempotency::{self, RequestKey};
use ebb_common::sealing::Keyring;
use ebb_common::time::now_ms;
use prost::Message;
use sea_orm::DatabaseTransaction;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::transport::Sender;

/// NotifierService over the notifier database.
pub struct NotifierApi {
    pub(super) db: Db,
    /// Seals signing secrets and the stored answers that carry them.
    pub(super) keys: Arc<Keyring>,
    pub(super) sender: Arc<Sender>,
    pub(super) wake: Arc<Notify>,
}

pub(super) fn reply<T>(r: Result<T>) -> std::result::Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

pub(super) fn required(v: &mut Violations, field: &str, value: &str) {
    if value.trim().is_empty() {
        v.add(field, "is required");
    } else if value.len() > 200 {
        v.add(field, "must be at most 200 characters");
    }
}

impl NotifierApi {
    /// Serves `db`, sealing secrets with `keys`, sending through `sender` and waking the local
    /// worker through `wake`.
    pub fn new(db: Db, keys: Arc<Keyring>, sender: Arc<Sender>, wake: Arc<Notify>) -> Self {
        Self {
            db,
            keys,
            sender,
            wake,
        }
    }

    /// The stored answer of an earlier call with `key`. Checked before anything else, and
    /// before the transaction: some calls send a verification message first, which a replay
    /// must not send again.
    pub(super) async fn replay<R: Message + Default>(
        &self,
        key: &Option<RequestKey>,
    ) -> Result<Option<R>> {
        idempotency::sealed::replay(&self.db.conn, key.as_ref(), &self.keys).await
    }

    /// Commits `txn` with `response` remembered under `key`. A concurrent call with the same
    /// request id that remembered its answer first makes this one ABORTED; a retry replays it.
    pub(super) async fn finish<R: Message>(
        &self,
        txn: DatabaseTransaction,
        key: &Option<RequestKey>,
        response: R,
    ) -> Result<R> {
        idempotency::sealed::remember(&txn, key.as_ref(), &response, now_ms(), &self.keys).await?;
        txn.commit().await?;
        Ok(response)
    }
}

/// The request-id key of a call of NotifierService's `method`.
pub(super) fn call_key<T: Message>(
    request: &Request<T>,
    method: &str,
    request_id: &str,
) -> Result<Option<RequestKey>> {
    RequestKey::for_call(
        request,
        &format!("/ebb.notifier.v1.NotifierService/{method}"),
        request_id,
    )
}
