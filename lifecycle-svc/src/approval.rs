//! Approval before destroy (the schedules issue, item 3): in an organization with
//! `require_approval`, an auto-destroy run is queued awaiting approval. An admin or operator
//! approves it (it goes to the runners) or rejects it (it is canceled and the workspace is not
//! destroyed), with a reason; one left past its deadline is canceled, never approved by itself.
//! The database refuses to let a runner take an unapproved run and to reopen a decision
//! (migration m0012).

use ebb_common::time::{EpochMs, rfc3339};
use ebb_common::{Error, Result};
use sea_orm::{ConnectionTrait, FromQueryResult};
use serde_json::json;

use crate::events::{NewEvent, outbox};
use crate::finish::{self, Policy};
use crate::runs::{RUN_COLUMNS, RunRow, RunSource};
use crate::store::{exec, for_update, query_all, query_one};

/// The run `id`, locked, if it awaits approval; otherwise why not.
async fn pending(conn: &impl ConnectionTrait, id: &str, now: EpochMs) -> Result<RunRow> {
    let run: Option<RunRow> = query_one(
        conn,
        &format!(
            "SELECT {RUN_COLUMNS} FROM runs r WHERE r.id = $1{}",
            for_update(conn, "r")
        ),
        [id.into()],
    )
    .await?;
    let run = run.ok_or_else(|| Error::not_found("run", id))?;
    match run.approval.as_deref() {
        None => Err(Error::precondition(format!(
            "run {id} needs no approval: its organization does not require it for this run"
        ))),
        Some("pending") if run.awaits_approval() => {
            if run.approval_deadline.is_some_and(|d| d <= now) {
                Err(Error::precondition(format!(
                    "run {id} is past its approval deadline ({}); it is canceled, not approved",
                    run.approval_deadline.map(rfc3339).unwrap_or_default()
                )))
            } else {
                Ok(run)
            }
        }
        Some("pending") => Err(Error::precondition(format!(
            "run {id} is {} and can no longer be approved or rejected",
            run.status.as_str()
        ))),
        Some(decided) => Err(Error::precondition(format!(
            "run {id} was {decided} already; an approval decision is final"
        ))),
    }
}

async fn decide(
    conn: &impl ConnectionTrait,
    id: &str,
    decision: &str,
    actor: &str,
    reason: &str,
    now: EpochMs,
) -> Result<()> {
    let n = exec(
        conn,
        "UPDATE runs SET approval = $1, approval_by = $2, approval_reason = $3, approval_at = $4 \
         WHERE id = $5 AND approval = 'pending'",
        [
            decision.into(),
            actor.into(),
            reason.into(),
            now.into(),
            id.into(),
        ],
    )
    .await?;
    if n == 0 {
        return Err(Error::Aborted(format!(
            "run {id} was decided by a concurrent call; retry to see the decision"
        )));
    }
    Ok(())
}

/// Approves a run awaiting approval: runners may claim it now.
pub async fn approve(
    conn: &impl ConnectionTrait,
    id: &str,
    actor: &str,
    reason: &str,
    now: EpochMs,
) -> Result<RunRow> {
    let run = pending(conn, id, now).await?;
    let who = crate::actor::name_or(actor);
    decide(conn, id, "approved", &who, reason, now).await?;
    let event = if run.source == RunSource::AutoDestroy {
        NewEvent::new(
            &run.organization_id,
            "workspace.auto_destroy.approved",
            "workspace",
            &run.workspace_id,
            actor,
            json!({"run_id": run.id, "reason": reason, "due_at": run.fire_due_at.map(rfc3339)}),
        )
    } else {
        // A cascade's destroy run.
        NewEvent::new(
            &run.organization_id,
            "run.approved",
            "run",
            &run.id,
            actor,
            json!({"workspace_id": run.workspace_id, "reason": reason}),
        )
    };
    outbox::write(conn, vec![event], now).await?;
    crate::runs::get_run(conn, id).await
}

/// Rejects a run awaiting approval: it is canceled and the workspace is not destroyed.
pub async fn reject(
    conn: &impl ConnectionTrait,
    id: &str,
    actor: &str,
    reason: &str,
    now: EpochMs,
    policy: &Policy,
) -> Result<RunRow> {
    let run = pending(conn, id, now).await?;
    let who = crate::actor::name_or(actor);
    decide(conn, id, "rejected", &who, reason, now).await?;
    skip(conn, &run, "rejected", reason, actor, now, policy).await
}

/// Cancels the run and records the skipped destroy.
async fn skip(
    conn: &impl ConnectionTrait,
    run: &RunRow,
    why: &str,
    reason: &str,
    actor: &str,
    now: EpochMs,
    policy: &Policy,
) -> Result<RunRow> {
    let canceled = finish::cancel_run(conn, &run.id, actor, now, policy).await?;
    let event = if run.source == RunSource::AutoDestroy {
        NewEvent::new(
            &run.organization_id,
            "workspace.auto_destroy.skipped",
            "workspace",
            &run.workspace_id,
            actor,
            json!({
                "run_id": run.id, "reason": why, "approval_reason": reason,
                "due_at": run.fire_due_at.map(rfc3339),
            }),
        )
    } else {
        // A cascade's destroy run: its step fails and the cascade stops (fail safe).
        NewEvent::new(
            &run.organization_id,
            "run.not_approved",
            "run",
            &run.id,
            actor,
            json!({
                "workspace_id": run.workspace_id, "reason": why, "approval_reason": reason,
            }),
        )
    };
    outbox::write(conn, vec![event], now).await?;
    Ok(canceled)
}

/// Cancels the runs of one shard left unapproved past their deadline (fail safe: never
/// approved by themselves); how many.
pub async fn expire_due(
    conn: &impl ConnectionTrait,
    shard: i32,
    shard_count: i32,
    now: EpochMs,
    policy: &Policy,
) -> Result<u32> {
    #[derive(FromQueryResult)]
    struct Id {
        id: String,
    }
    let due: Vec<Id> = query_all(
        conn,
        "SELECT r.id FROM runs r JOIN workspaces w ON w.id = r.workspace_id \
         WHERE r.approval = 'pending' AND r.status = 'queued' AND r.approval_deadline <= $1 \
         AND w.shard_key % $2 = $3 ORDER BY r.approval_deadline LIMIT 100",
        [now.into(), shard_count.into(), shard.into()],
    )
    .await?;
    let mut expired = 0;
    for Id { id } in due {
        let n = exec(
            conn,
            "UPDATE runs SET approval = 'expired', approval_at = $1 \
             WHERE id = $2 AND approval = 'pending' AND status = 'queued'",
            [now.into(), id.clone().into()],
        )
        .await?;
        if n == 0 {
            continue;
        }
        let run = crate::runs::get_run(conn, &id).await?;
        skip(
            conn,
            &run,
            "approval_expired",
            "no approval before the deadline",
            "scheduler",
            now,
            policy,
        )
        .await?;
        expired += 1;
    }
    Ok(expired)
}
