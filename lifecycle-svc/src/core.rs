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
use crate::actor::{self, Actor};
use crate::events::outbox;
use crate::timing::snooze_links::Links;
use ebb_common::idempotency::{self, RequestKey};

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
    /// Makes the snooze links of reminders; `None` when the snooze server is off.
    pub snooze_links: Option<Arc<Links>>,
    /// Tokens checked a moment ago (`auth.cache_ttl`); emptied by every revocation.
    pub tokens: Arc<crate::token_cache::TokenCache>,
    /// GetWorkspace's reads, coalesced when many arrive at once.
    pub workspace_reads: crate::workspaces::reads::WorkspaceReads,
}

impl Lifecycle {
    /// State over `db`.
    pub fn new(db: Db, config: Config) -> Self {
        let tokens = Arc::new(crate::token_cache::TokenCache::new(
            config.server.auth.cache_ttl,
        ));
        Self {
            tokens,
            workspace_reads: crate::workspaces::reads::workspace_reads(db.read.clone()),
            db,
            config: Arc::new(config),
            runs_queued: Arc::new(Notify::new()),
            callback_secret: Arc::new(Vec::new()),
            snooze_links: None,
        }
    }

    /// The same state with the secret that keys callback tokens.
    pub fn with_callback_secret(mut self, secret: Vec<u8>) -> Self {
        self.callback_secret = Arc::new(secret);
        self
    }

    /// The same state with reminders carrying snooze links made by `links`.
    pub fn with_snooze_links(mut self, links: Links) -> Self {
        self.snooze_links = Some(Arc::new(links));
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

    /// Runs a mutation in one transaction as its caller ([`actor::acting`]). With a
    /// `request_id`, a repeat of the same request by the same organization answers the stored
    /// response and changes nothing; the same id with another request is refused.
    pub async fn mutate<Req, Resp, F>(
        &self,
        call: Call,
        request_id: &str,
        request: &Req,
        f: F,
    ) -> Result<Resp>
    where
        Req: Message,
        Resp: Message + Default,
        F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, Result<Resp>>,
    {
        let key = RequestKey::new(&call.organization_id, call.method, request_id, request)?;
        let txn = self.begin().await?;
        if let Some(stored) = idempotency::replay(&txn, key.as_ref()).await? {
            return Ok(stored);
        }
        let (response, events) = outbox::collecting(actor::acting(call.actor, f(&txn))).await?;
        idempotency::remember(&txn, key.as_ref(), &response, self.now()).await?;
        // Last before the commit: writing events locks the organization's event counter.
        events.write(&txn).await?;
        txn.commit().await.map_err(Error::from)?;
        Ok(response)
    }
}

/// One API call as a mutation sees it: which method, on whose behalf.
#[derive(Debug, Clone)]
pub struct Call {
    /// The RPC's name, e.g. `CreateWorkspace`; request ids are kept per method.
    pub method: &'static str,
    pub actor: Actor,
    /// The caller's organization (empty for tokens of none); request ids are kept per
    /// organization.
    pub organization_id: String,
}

impl Call {
    /// The call `request` makes to `method`.
    pub fn of<T>(request: &tonic::Request<T>, method: &'static str) -> Self {
        Self {
            method,
            actor: Actor::of(request),
            organization_id: Actor::organization_of(request),
        }
    }
}
