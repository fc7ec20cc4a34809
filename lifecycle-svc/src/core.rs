//! The service's shared state and its transaction discipline.

use std::sync::Arc;

use ebb_common::db::Db;
use ebb_common::time::{self, EpochMs};
use ebb_common::{Error, Result};
use futures::future::BoxFuture;
use prost::Message;
use sea_orm::{DatabaseTransaction, SqliteTransactionMode, TransactionOptions, TransactionTrait};
use tokio::sync::Notify;

use crate::Config;
use crate::store::idempotency;

/// lifecycle-svc's state, cheap to clone.
#[derive(Clone)]
pub struct Lifecycle {
    /// The service's database.
    pub db: Db,
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Wakes long-polling runners when this process queues a run.
    pub runs_queued: Arc<Notify>,
    /// Keys the callback tokens of webhook steps; shared by replicas through the database.
    pub callback_secret: Arc<Vec<u8>>,
}

impl Lifecycle {
    /// State over `db`.
    pub fn new(db: Db, config: Config) -> Self {
        Self {
            db,
            config: Arc::new(config),
            runs_queued: Arc::new(Notify::new()),
            callback_secret: Arc::new(Vec::new()),
        }
    }

    /// The same state with the secret that keys callback tokens.
    pub fn with_callback_secret(mut self, secret: Vec<u8>) -> Self {
        self.callback_secret = Arc::new(secret);
        self
    }

    /// The one clock every decision reads.
    pub fn now(&self) -> EpochMs {
        time::now_ms()
    }

    /// Starts a write transaction (IMMEDIATE on SQLite so it never fails upgrading its lock).
    pub async fn begin(&self) -> Result<DatabaseTransaction> {
        Ok(self
            .db
            .conn
            .begin_with_options(TransactionOptions {
                isolation_level: None,
                access_mode: None,
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            })
            .await?)
    }

    /// Runs a mutation in one transaction. With a `request_id`, a repeat of the same request
    /// answers the stored response and changes nothing; the same id with another request is
    /// refused.
    pub async fn mutate<Req, Resp, F>(
        &self,
        method: &'static str,
        request_id: &str,
        request: &Req,
        f: F,
    ) -> Result<Resp>
    where
        Req: Message,
        Resp: Message + Default,
        F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, Result<Resp>>,
    {
        idempotency::check_request_id(request_id)?;
        let txn = self.begin().await?;
        let hash = idempotency::request_hash(request);
        if !request_id.is_empty()
            && let Some(stored) = idempotency::replay(&txn, method, request_id, &hash).await?
        {
            return Ok(stored);
        }
        let response = f(&txn).await?;
        if !request_id.is_empty() {
            idempotency::remember(&txn, method, request_id, &hash, &response, self.now()).await?;
        }
        txn.commit().await.map_err(Error::from)?;
        Ok(response)
    }
}
