//! The runner protocol's leases: claim the oldest queued run with a lease token, extend it by
//! heartbeat; every call after the claim is fenced by the token.

use ebb_common::time::EpochMs;
use ebb_common::{Error, Result};
use sea_orm::{ConnectionTrait, DatabaseBackend};
use serde_json::json;

use crate::events::{NewEvent, outbox};
use crate::runs::RunStatus;
use crate::runs::{RUN_COLUMNS, RunRow, get_run};
use crate::store::{exec, query_one};

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
    outbox::write(
        conn,
        vec![NewEvent::new(
            &run.organization_id,
            "run.claimed",
            "run",
            &run.id,
            &format!("runner:{runner_id}"),
            json!({
                "workspace_id": run.workspace_id, "attempt": run.attempt,
            }),
        )],
        now,
    )
    .await?;
    Ok(Some((run, token)))
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
