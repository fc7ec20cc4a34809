//! The runner protocol's leases: claim the oldest queued run with a lease token, extend it by
//! heartbeat; every call after the claim is fenced by the token.

use std::collections::HashMap;

use ebb_common::sql;
use ebb_common::time::EpochMs;
use ebb_common::{Error, Result};
use sea_orm::{ConnectionTrait, DatabaseBackend, FromQueryResult, Value};
use serde_json::json;

use crate::events::{NewEvent, outbox};
use crate::runs::RunStatus;
use crate::runs::{RUN_COLUMNS, RunRow, get_run};
use crate::store::{exec, query_all, query_one};

/// Longest output tail kept per run.
pub const MAX_OUTPUT_TAIL: usize = 16 * 1024;

/// Claims the oldest queued run of an organization for `runner_id`, or `None`.
pub async fn claim_run(
    conn: &impl ConnectionTrait,
    organization_id: &str,
    runner_id: &str,
    lease_ms: i64,
    now: EpochMs,
) -> Result<Option<(RunRow, String)>> {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let pick = match conn.get_database_backend() {
        DatabaseBackend::Postgres => {
            "SELECT id FROM runs WHERE organization_id = $5 AND status = 'queued' \
             AND (approval IS NULL OR approval = 'approved') \
             ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED"
        }
        _ => {
            "SELECT id FROM runs WHERE organization_id = $5 AND status = 'queued' \
             AND (approval IS NULL OR approval = 'approved') \
             ORDER BY created_at, id LIMIT 1"
        }
    };
    let row: Option<RunRow> = query_one(
        conn,
        &format!(
            "UPDATE runs SET status = 'running', runner_id = $1, lease_token = $2, \
             lease_expires_at = $3, attempt = attempt + 1, claimed_at = $4, \
             cancel_requested = FALSE WHERE id = ({pick}) RETURNING {RUN_COLUMNS}"
        ),
        [
            runner_id.into(),
            token.clone().into(),
            (now + lease_ms).into(),
            now.into(),
            organization_id.into(),
        ],
    )
    .await?;
    let Some(run) = row else { return Ok(None) };
    outbox::write(conn, vec![claimed(&run, runner_id)], now).await?;
    Ok(Some((run, token)))
}

/// The event of `run`'s claim by `runner_id`.
fn claimed(run: &RunRow, runner_id: &str) -> NewEvent {
    NewEvent::new(
        &run.organization_id,
        "run.claimed",
        "run",
        &run.id,
        &format!("runner:{runner_id}"),
        json!({
            "workspace_id": run.workspace_id, "attempt": run.attempt,
        }),
    )
}

/// Claims up to `max` of the oldest queued runs of an organization for `runner_id`, each with
/// a lease token of its own, oldest first: two statements however many runs. On PostgreSQL
/// runs another claim holds are passed over, not waited for.
pub async fn claim_runs(
    conn: &impl ConnectionTrait,
    organization_id: &str,
    runner_id: &str,
    max: u32,
    lease_ms: i64,
    now: EpochMs,
) -> Result<Vec<(RunRow, String)>> {
    #[derive(FromQueryResult)]
    struct Picked {
        id: String,
    }
    let lock = sql::for_update()
        .skip_locked()
        .sql(conn.get_database_backend());
    let picked: Vec<Picked> = query_all(
        conn,
        &format!(
            "SELECT id FROM runs WHERE organization_id = $1 AND status = 'queued' \
             AND (approval IS NULL OR approval = 'approved') \
             ORDER BY created_at, id LIMIT {max}{lock}"
        ),
        [organization_id.into()],
    )
    .await?;
    if picked.is_empty() {
        return Ok(Vec::new());
    }
    let mut values: Vec<Value> = vec![runner_id.into(), (now + lease_ms).into(), now.into()];
    let mut rows = Vec::with_capacity(picked.len());
    let mut tokens: HashMap<String, String> = HashMap::with_capacity(picked.len());
    for p in &picked {
        let token = uuid::Uuid::new_v4().simple().to_string();
        rows.push(format!("(${}, ${})", values.len() + 1, values.len() + 2));
        values.extend([p.id.clone().into(), token.clone().into()]);
        tokens.insert(p.id.clone(), token);
    }
    // The picked rows are this transaction's (locked above on PostgreSQL; SQLite's one writer
    // is this transaction), so they are still queued: the update finds them by id alone. A
    // condition on `status` here would let the planner read every queued run through the
    // queue's partial index to join these few.
    let mut claimed_runs: Vec<RunRow> = query_all(
        conn,
        &format!(
            "WITH v (run_id, token) AS (VALUES {}) UPDATE runs SET status = 'running', runner_id = $1, \
             lease_token = v.token, lease_expires_at = $2, attempt = attempt + 1, claimed_at = $3, \
             cancel_requested = FALSE FROM v WHERE runs.id = v.run_id RETURNING {RUN_COLUMNS}",
            rows.join(", "),
        ),
        values,
    )
    .await?;
    claimed_runs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    outbox::write(
        conn,
        claimed_runs.iter().map(|r| claimed(r, runner_id)).collect(),
        now,
    )
    .await?;
    Ok(claimed_runs
        .into_iter()
        .map(|run| {
            let token = tokens.remove(&run.id).unwrap_or_default();
            (run, token)
        })
        .collect())
}

pub(crate) async fn fenced(conn: &impl ConnectionTrait, id: &str, token: &str) -> Result<RunRow> {
    let run = get_run(conn, id).await?;
    if run.status != RunStatus::Running || run.lease_token.as_deref() != Some(token) {
        return Err(Error::precondition(format!(
            "run {id} is not leased with this token (it is {}): the lease was lost",
            run.status
        )));
    }
    Ok(run)
}

/// Extends a run's lease; fails once the lease was lost.
pub async fn heartbeat(
    conn: &impl ConnectionTrait,
    id: &str,
    token: &str,
    lease_ms: i64,
    now: EpochMs,
) -> Result<RunRow> {
    fenced(conn, id, token).await?;
    exec(
        conn,
        "UPDATE runs SET lease_expires_at = $1 WHERE id = $2 AND lease_token = $3 AND status = 'running'",
        [(now + lease_ms).into(), id.into(), token.into()],
    )
    .await?;
    get_run(conn, id).await
}
