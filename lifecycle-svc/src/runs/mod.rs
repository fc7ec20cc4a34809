//! The run queue: runs as stored, inserting them under the database's unique indexes (one
//! active destroy run per workspace, one run per fire key), reading and listing them.

pub(crate) mod lease;

use std::collections::BTreeSet;

use ebb_common::time::EpochMs;
use ebb_common::{Error, Result};
use sea_orm::sea_query::{Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::json;

use crate::events::{NewEvent, outbox};
use crate::store::{
    IdRow, db_enum, exec, json_param, json_rows, keyset, query_all, query_one, select_all,
};

db_enum! {
    /// Where a run is in its life.
    pub enum RunStatus {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Errored = "errored",
        Canceled = "canceled",
    }
}

db_enum! {
    /// Who or what queued a run.
    pub enum RunSource {
        Manual = "manual",
        AutoDestroy = "auto_destroy",
        Deprovision = "deprovision",
    }
}

/// Columns of [`RunRow`], in order.
pub const RUN_COLUMNS: &str = "id, organization_id, workspace_id, is_destroy, auto_apply, \
    source, status, fire_due_at, attempt, runner_id, lease_token, lease_expires_at, \
    cancel_requested, exit_code, output_tail, message, working_directory, created_at, \
    claimed_at, finished_at, approval, approval_deadline, approval_by, approval_reason, \
    approval_at";

/// A run.
#[derive(Debug, Clone, FromQueryResult)]
pub struct RunRow {
    pub id: String,
    pub organization_id: String,
    pub workspace_id: String,
    pub is_destroy: bool,
    pub auto_apply: bool,
    pub source: RunSource,
    pub status: RunStatus,
    pub fire_due_at: Option<i64>,
    pub attempt: i32,
    pub runner_id: String,
    pub lease_token: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub cancel_requested: bool,
    pub exit_code: i32,
    pub output_tail: String,
    pub message: String,
    pub working_directory: String,
    pub created_at: EpochMs,
    pub claimed_at: Option<EpochMs>,
    pub finished_at: Option<EpochMs>,
    /// `pending`, `approved`, `rejected` or `expired`; `None` when no approval is needed.
    pub approval: Option<String>,
    pub approval_deadline: Option<EpochMs>,
    pub approval_by: Option<String>,
    pub approval_reason: Option<String>,
    pub approval_at: Option<EpochMs>,
}

impl RunRow {
    /// Queued or running.
    pub fn is_active(&self) -> bool {
        matches!(self.status, RunStatus::Queued | RunStatus::Running)
    }

    /// Queued, waiting for an approval no one gave yet.
    pub fn awaits_approval(&self) -> bool {
        self.status == RunStatus::Queued && self.approval.as_deref() == Some("pending")
    }
}

/// A run by id.
pub async fn get_run(conn: &impl ConnectionTrait, id: &str) -> Result<RunRow> {
    query_one(
        conn,
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"),
        [id.into()],
    )
    .await?
    .ok_or_else(|| Error::not_found("run", id))
}

/// A new run's attributes.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub workspace_id: &'a str,
    pub is_destroy: bool,
    pub auto_apply: bool,
    pub source: &'static str,
    pub fire_due_at: Option<EpochMs>,
    pub message: &'a str,
    /// Set when the run waits for approval until then (a cascade's, over the organization's
    /// threshold).
    pub approval_deadline: Option<EpochMs>,
}

/// Inserts a queued run. A second active destroy run, or a second run for a fire key, is
/// refused by the database's unique indexes: `Ok(None)` then.
pub async fn insert_run(
    conn: &impl ConnectionTrait,
    organization_id: &str,
    working_directory: &str,
    new: &NewRun<'_>,
    now: EpochMs,
) -> Result<Option<String>> {
    let id = uuid::Uuid::now_v7().to_string();
    let n = exec(
        conn,
        "INSERT INTO runs (id, organization_id, workspace_id, is_destroy, auto_apply, source, \
         status, fire_due_at, message, working_directory, created_at, approval, approval_deadline) \
         VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING",
        [
            id.clone().into(),
            organization_id.into(),
            new.workspace_id.into(),
            new.is_destroy.into(),
            new.auto_apply.into(),
            new.source.into(),
            new.fire_due_at.into(),
            new.message.into(),
            working_directory.into(),
            now.into(),
            new.approval_deadline.map(|_| "pending".to_owned()).into(),
            new.approval_deadline.into(),
        ],
    )
    .await?;
    Ok((n == 1).then_some(id))
}

/// One destroy run to queue in a batch: its id, where it runs, and what queued it — an
/// auto-destroy fire key (`fire_due_at`) or a deprovisioning step (`action_step_id`).
#[derive(Debug, Clone)]
pub struct QueuedDestroy {
    pub run_id: String,
    pub organization_id: String,
    pub workspace_id: String,
    pub working_directory: String,
    pub source: RunSource,
    pub message: String,
    pub fire_due_at: Option<EpochMs>,
    pub action_step_id: Option<String>,
    /// Set when the run waits for approval until then.
    pub approval_deadline: Option<EpochMs>,
}

/// Inserts queued destroy runs in one statement; the ids of the rows that went in. A fire key that
/// already fired, or a workspace with an active destroy run, is refused by the unique indexes
/// and simply not returned.
pub async fn insert_destroy_runs(
    conn: &impl ConnectionTrait,
    runs: &[QueuedDestroy],
    now: EpochMs,
) -> Result<BTreeSet<String>> {
    #[derive(FromQueryResult)]
    struct Id {
        id: String,
    }
    #[derive(serde::Serialize)]
    struct Row<'a> {
        id: &'a str,
        organization_id: &'a str,
        workspace_id: &'a str,
        source: &'static str,
        fire_due_at: Option<EpochMs>,
        message: &'a str,
        working_directory: &'a str,
        approval: Option<&'static str>,
        approval_deadline: Option<EpochMs>,
        action_step_id: Option<&'a str>,
    }
    if runs.is_empty() {
        return Ok(BTreeSet::new());
    }
    let rows: Vec<Row> = runs
        .iter()
        .map(|run| Row {
            id: &run.run_id,
            organization_id: &run.organization_id,
            workspace_id: &run.workspace_id,
            source: run.source.as_str(),
            fire_due_at: run.fire_due_at,
            message: &run.message,
            working_directory: &run.working_directory,
            approval: run.approval_deadline.map(|_| "pending"),
            approval_deadline: run.approval_deadline,
            action_step_id: run.action_step_id.as_deref(),
        })
        .collect();
    let source = json_rows(
        conn.get_database_backend(),
        2,
        &[
            ("id", "TEXT"),
            ("organization_id", "TEXT"),
            ("workspace_id", "TEXT"),
            ("source", "TEXT"),
            ("fire_due_at", "BIGINT"),
            ("message", "TEXT"),
            ("working_directory", "TEXT"),
            ("approval", "TEXT"),
            ("approval_deadline", "BIGINT"),
            ("action_step_id", "TEXT"),
        ],
    );
    let inserted: Vec<Id> = query_all(
        conn,
        &format!(
            "INSERT INTO runs (id, organization_id, workspace_id, is_destroy, auto_apply, source, \
             status, fire_due_at, message, working_directory, created_at, approval, \
             approval_deadline, action_step_id) \
             SELECT v.id, v.organization_id, v.workspace_id, TRUE, TRUE, v.source, 'queued', \
             v.fire_due_at, v.message, v.working_directory, $1, v.approval, \
             v.approval_deadline, v.action_step_id FROM {source} WHERE TRUE \
             ON CONFLICT DO NOTHING RETURNING id"
        ),
        [now.into(), json_param(&rows)?],
    )
    .await?;
    Ok(inserted.into_iter().map(|r| r.id).collect())
}

/// Filters of a run list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub organization_id: String,
    pub workspace_id: Option<String>,
    pub status: Option<RunStatus>,
    /// With `status` queued: only runs awaiting approval (`true`) or only those that do not
    /// (`false`), as the API tells them apart.
    pub awaiting_approval: Option<bool>,
    pub source: Option<RunSource>,
}

/// One page of runs, newest first, before `before` (created_at, id).
pub async fn list_runs(
    conn: &impl ConnectionTrait,
    filter: &RunFilter,
    before: Option<(i64, String)>,
    limit: u64,
) -> Result<Vec<RunRow>> {
    let mut q = Query::select();
    q.expr(Expr::cust(RUN_COLUMNS))
        .from("runs")
        .and_where(Expr::col("organization_id").eq(filter.organization_id.as_str()));
    if let Some(w) = &filter.workspace_id {
        q.and_where(Expr::col("workspace_id").eq(w.as_str()));
    }
    if let Some(s) = filter.status {
        q.and_where(Expr::col("status").eq(s.as_str()));
    }
    match filter.awaiting_approval {
        Some(true) => {
            q.and_where(Expr::col("approval").eq("pending"));
        }
        Some(false) => {
            q.and_where(
                Expr::col("approval")
                    .is_null()
                    .or(Expr::col("approval").ne("pending")),
            );
        }
        None => {}
    }
    if let Some(s) = filter.source {
        q.and_where(Expr::col("source").eq(s.as_str()));
    }
    if let Some(position) = before {
        q.cond_where(keyset("created_at", "id", position, Order::Desc));
    }
    q.order_by("created_at", Order::Desc)
        .order_by("id", Order::Desc)
        .limit(limit);
    select_all(conn, &q).await
}

pub(crate) async fn latest_run_id(
    conn: &impl ConnectionTrait,
    workspace_id: &str,
) -> Result<Option<String>> {
    #[derive(sea_orm::FromQueryResult)]
    struct Id {
        id: String,
    }
    let row: Option<Id> = query_one(
        conn,
        "SELECT id FROM runs WHERE workspace_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
        [workspace_id.into()],
    )
    .await?;
    Ok(row.map(|r| r.id))
}

/// Whether the workspace has a queued or running run.
pub async fn has_active_run(conn: &impl ConnectionTrait, workspace_id: &str) -> Result<bool> {
    let row: Option<IdRow> = query_one(
        conn,
        "SELECT id FROM runs WHERE workspace_id = $1 AND status IN ('queued', 'running') LIMIT 1",
        [workspace_id.into()],
    )
    .await?;
    Ok(row.is_some())
}

/// What canceling a run did.
#[derive(Debug)]
pub enum Cancel {
    /// The run was queued and is canceled now.
    Canceled(RunRow),
    /// The run is running: its runner is asked to stop (it sees it on its next heartbeat and
    /// completes the run).
    StopRequested(RunRow),
}

/// Cancels a queued run at once; a running run is asked to stop. Writes no event: a run that
/// was canceled gets [`canceled_event`] once its consequences are written.
pub async fn cancel(conn: &impl ConnectionTrait, id: &str, now: EpochMs) -> Result<Cancel> {
    let run = get_run(conn, id).await?;
    match run.status.as_str() {
        "queued" => {
            exec(
                conn,
                "UPDATE runs SET status = 'canceled', finished_at = $1 WHERE id = $2 AND status = 'queued'",
                [now.into(), id.into()],
            )
            .await?;
            Ok(Cancel::Canceled(get_run(conn, id).await?))
        }
        "running" => {
            exec(
                conn,
                "UPDATE runs SET cancel_requested = TRUE WHERE id = $1",
                [id.into()],
            )
            .await?;
            Ok(Cancel::StopRequested(get_run(conn, id).await?))
        }
        other => Err(Error::precondition(format!("run {id} is already {other}"))),
    }
}

/// The `run.canceled` event of a run canceled while queued.
pub fn canceled_event(run: &RunRow, actor: &str) -> NewEvent {
    NewEvent::new(
        &run.organization_id,
        "run.canceled",
        "run",
        &run.id,
        actor,
        json!({"workspace_id": run.workspace_id}),
    )
}

/// Cancels a run on behalf of its deprovisioning step, which has already ended: the run has no
/// consequence of its own left to apply.
pub async fn cancel_for_step(
    conn: &impl ConnectionTrait,
    id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<()> {
    if !get_run(conn, id).await?.is_active() {
        return Ok(());
    }
    if let Cancel::Canceled(run) = cancel(conn, id, now).await? {
        outbox::write(conn, vec![canceled_event(&run, actor)], now).await?;
    }
    Ok(())
}

/// How a run ended, for the deprovisioning step it carries out.
#[derive(Debug, Clone, Copy)]
pub struct RunOutcomeView<'a> {
    pub run_id: &'a str,
    pub succeeded: bool,
    pub status: &'a str,
    pub actor: &'a str,
}

/// Which of `workspace_ids` have a queued or running run.
pub async fn with_active_run(
    conn: &impl ConnectionTrait,
    workspace_ids: &BTreeSet<&str>,
) -> Result<BTreeSet<String>> {
    #[derive(FromQueryResult)]
    struct Active {
        workspace_id: String,
    }
    if workspace_ids.is_empty() {
        return Ok(BTreeSet::new());
    }
    let mut q = Query::select();
    q.column("workspace_id")
        .from("runs")
        .and_where(Expr::col("workspace_id").is_in(workspace_ids.iter().copied()))
        .and_where(
            Expr::col("status").is_in([RunStatus::Queued.as_str(), RunStatus::Running.as_str()]),
        );
    let rows: Vec<Active> = select_all(conn, &q).await?;
    Ok(rows.into_iter().map(|a| a.workspace_id).collect())
}

/// Those of `workspaces` (each with its last applied state, if any) a deprovisioning destroy
/// already succeeded on since then: their infrastructure is gone, so a cascade has nothing
/// left to destroy there. One statement per batch.
pub async fn destroyed_since(
    conn: &impl ConnectionTrait,
    workspaces: &[(String, Option<EpochMs>)],
) -> Result<BTreeSet<String>> {
    #[derive(FromQueryResult)]
    struct Gone {
        workspace_id: String,
    }
    let mut gone = BTreeSet::new();
    for chunk in workspaces.chunks(500) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| format!("(${}, CAST(${} AS BIGINT))", 2 * i + 1, 2 * i + 2))
            .collect();
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 2);
        for (id, applied_at) in chunk {
            values.extend([
                Value::from(id.clone()),
                applied_at.unwrap_or(i64::MIN).into(),
            ]);
        }
        let found: Vec<Gone> = query_all(
            conn,
            &format!(
                "WITH v (workspace_id, since) AS (VALUES {}) SELECT DISTINCT r.workspace_id FROM runs r \
                 JOIN v ON r.workspace_id = v.workspace_id WHERE r.is_destroy AND r.source = 'deprovision' \
                 AND r.status = 'succeeded' AND r.finished_at >= v.since",
                rows.join(", ")
            ),
            values,
        )
        .await?;
        gone.extend(found.into_iter().map(|g| g.workspace_id));
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_stored_strings() {
        for s in [
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Errored,
            RunStatus::Canceled,
        ] {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(RunStatus::parse("Queued"), None);
        assert_eq!(
            RunSource::parse("auto_destroy"),
            Some(RunSource::AutoDestroy)
        );
        assert_eq!(RunSource::parse(""), None);
    }
}
