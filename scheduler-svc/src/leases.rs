//! The claim/renew/release protocol over `task_leases`, in database time. A claim is one
//! conditional UPDATE that bumps the fencing epoch; renewals and the release only succeed for
//! the owner at that epoch, so a replica that lost its lease cannot disturb its successor.

use ebb_common::db::{Db, now_ms_sql};
use ebb_common::{Error, Result};
use sea_orm::{ConnectionTrait, FromQueryResult};

/// A lease held by this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub task: String,
    pub shard: i32,
    pub epoch: i64,
}

/// One row of the lease table.
#[derive(Debug, Clone, FromQueryResult)]
pub struct LeaseRow {
    pub task: String,
    pub shard: i32,
    pub owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub epoch: i64,
    pub paused: bool,
    pub interval_ms: i64,
    pub next_run_at: i64,
    pub last_run_at: Option<i64>,
    pub last_outcome: String,
    pub last_duration_ms: Option<i64>,
    pub takeovers: i64,
}

#[derive(FromQueryResult)]
struct Key {
    task: String,
    shard: i32,
}

#[derive(FromQueryResult)]
struct Epoch {
    epoch: i64,
}

/// The lease protocol over one database.
#[derive(Clone, Debug)]
pub struct Leases {
    db: Db,
    owner: String,
}

impl Leases {
    /// Leases owned by `owner`.
    pub fn new(db: Db, owner: String) -> Self {
        Self { db, owner }
    }

    /// This replica's name in lease rows.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Creates missing rows for `task`'s shards and records its interval.
    pub async fn ensure(&self, task: &str, shards: i32, interval_ms: i64) -> Result<()> {
        let now = now_ms_sql(self.db.backend());
        for shard in 0..shards {
            self.db
                .conn
                .execute_raw(self.db.stmt(
                    &format!(
                        "INSERT INTO task_leases (task, shard, interval_ms, next_run_at) \
                         VALUES ($1, $2, $3, {now}) ON CONFLICT (task, shard) DO UPDATE \
                         SET interval_ms = excluded.interval_ms"
                    ),
                    [task.into(), shard.into(), interval_ms.into()],
                ))
                .await?;
        }
        Ok(())
    }

    /// Claims up to `limit` due, unleased (or expired) rows.
    pub async fn claim_due(&self, limit: u64, ttl_ms: i64) -> Result<Vec<Lease>> {
        let now = now_ms_sql(self.db.backend());
        let candidates = Key::find_by_statement(self.db.stmt(
            &format!(
                "SELECT task, shard FROM task_leases WHERE paused = FALSE AND next_run_at <= {now} \
                 AND (owner IS NULL OR lease_expires_at < {now}) ORDER BY next_run_at LIMIT {limit}"
            ),
            [],
        ))
        .all(&self.db.conn)
        .await?;
        let mut claimed = Vec::new();
        for key in candidates {
            let row = Epoch::find_by_statement(self.db.stmt(
                &format!(
                    "UPDATE task_leases SET owner = $1, lease_expires_at = {now} + $2, \
                     epoch = epoch + 1, \
                     takeovers = takeovers + CASE WHEN owner IS NULL THEN 0 ELSE 1 END \
                     WHERE task = $3 AND shard = $4 AND paused = FALSE AND next_run_at <= {now} \
                     AND (owner IS NULL OR lease_expires_at < {now}) RETURNING epoch"
                ),
                [
                    self.owner.clone().into(),
                    ttl_ms.into(),
                    key.task.clone().into(),
                    key.shard.into(),
                ],
            ))
            .one(&self.db.conn)
            .await?;
            if let Some(Epoch { epoch }) = row {
                claimed.push(Lease {
                    task: key.task,
                    shard: key.shard,
                    epoch,
                });
            }
        }
        Ok(claimed)
    }

    /// Extends a lease; `false` once it was lost.
    pub async fn renew(&self, lease: &Lease, ttl_ms: i64) -> Result<bool> {
        let now = now_ms_sql(self.db.backend());
        let n = self
            .db
            .conn
            .execute_raw(self.db.stmt(
                &format!(
                    "UPDATE task_leases SET lease_expires_at = {now} + $1 \
                     WHERE task = $2 AND shard = $3 AND owner = $4 AND epoch = $5"
                ),
                [
                    ttl_ms.into(),
                    lease.task.clone().into(),
                    lease.shard.into(),
                    self.owner.clone().into(),
                    lease.epoch.into(),
                ],
            ))
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Releases a lease, recording how the run went and when the task is next due.
    pub async fn release(&self, lease: &Lease, outcome: &str, duration_ms: i64) -> Result<bool> {
        let now = now_ms_sql(self.db.backend());
        let n = self
            .db
            .conn
            .execute_raw(self.db.stmt(
                &format!(
                    "UPDATE task_leases SET owner = NULL, lease_expires_at = NULL, \
                     last_run_at = {now}, next_run_at = {now} + interval_ms, last_outcome = $1, \
                     last_duration_ms = $2 WHERE task = $3 AND shard = $4 AND owner = $5 AND epoch = $6"
                ),
                [
                    outcome.chars().take(1000).collect::<String>().into(),
                    duration_ms.into(),
                    lease.task.clone().into(),
                    lease.shard.into(),
                    self.owner.clone().into(),
                    lease.epoch.into(),
                ],
            ))
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Every lease row, by task and shard.
    pub async fn list(&self) -> Result<Vec<LeaseRow>> {
        Ok(LeaseRow::find_by_statement(self.db.stmt(
            "SELECT task, shard, owner, lease_expires_at, epoch, paused, interval_ms, next_run_at, \
             last_run_at, last_outcome, last_duration_ms, takeovers FROM task_leases ORDER BY task, shard",
            [],
        ))
        .all(&self.db.conn)
        .await?)
    }

    /// Makes every shard of `task` due now.
    pub async fn run_now(&self, task: &str) -> Result<()> {
        let now = now_ms_sql(self.db.backend());
        self.update_task(task, &format!("next_run_at = {now}"))
            .await
    }

    /// Pauses or resumes `task`.
    pub async fn set_paused(&self, task: &str, paused: bool) -> Result<()> {
        self.update_task(
            task,
            if paused {
                "paused = TRUE"
            } else {
                "paused = FALSE"
            },
        )
        .await
    }

    async fn update_task(&self, task: &str, set: &str) -> Result<()> {
        let n = self
            .db
            .conn
            .execute_raw(self.db.stmt(
                &format!("UPDATE task_leases SET {set} WHERE task = $1"),
                [task.into()],
            ))
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("task", task));
        }
        Ok(())
    }
}
