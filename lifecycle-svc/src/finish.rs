//! What a finished run means — the one place that decides it. A run ends by its runner's
//! completion, a cancel, or an expired lease; the outcome then goes to auto-destroy (AD-7 – AD-9)
//! or to the deprovisioning step the run carries out.

use std::collections::HashMap;

use ebb_common::time::EpochMs;
use ebb_common::{Error, Result};
use sea_orm::{ConnectionTrait, Value};
use serde_json::json;

use crate::actor::{self, Actor};
use crate::auto_destroy::outcome;
use crate::core::Lifecycle;
use crate::deprovision::steps;
use crate::deprovision::steps::Engine;
use crate::events::{NewEvent, outbox};
use crate::runs;
use crate::runs::RunSource;
use crate::runs::RunStatus;
use crate::runs::lease::{MAX_OUTPUT_TAIL, fenced};
use crate::runs::{RUN_COLUMNS, RunRow};
use crate::store::{exec, query_all};
use crate::workspaces::state_versions;
use ebb_common::sql;

/// The actor of the scheduler's work.
const ACTOR: &str = "scheduler";

/// What finishing a run needs to know beyond the run itself.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Base delay before retrying a failed auto-destroy.
    pub retry_backoff_ms: i64,
    /// Settings of deprovisioning action runs, whose steps destroy runs carry out.
    pub engine: steps::Engine,
}

impl Policy {
    /// The policy `core` is configured with.
    pub fn of(core: &Lifecycle) -> Self {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            retry_backoff_ms: ms(core.config.auto_destroy_retry_backoff),
            engine: Engine::of(core),
        }
    }
}

/// Cancels a queued run at once, with what that means for its workspace or step; a running
/// run is asked to stop (its runner sees it on the next heartbeat and completes it).
pub async fn cancel_run(
    conn: &impl ConnectionTrait,
    id: &str,
    actor: &str,
    now: EpochMs,
    policy: &Policy,
) -> Result<RunRow> {
    match runs::cancel(conn, id, now).await? {
        runs::Cancel::Canceled(run) => {
            finish_consequences(conn, &run, None, actor, now, policy).await?;
            outbox::write(conn, vec![runs::canceled_event(&run, actor)], now).await?;
            Ok(run)
        }
        runs::Cancel::StopRequested(run) => Ok(run),
    }
}

/// How a runner says a run ended.
#[derive(Debug, Clone)]
pub struct Completion {
    pub succeeded: bool,
    pub exit_code: i32,
    pub output_tail: String,
    pub state_version_serial: Option<i64>,
}

/// The last [`MAX_OUTPUT_TAIL`] bytes of `tail`, cut at a character boundary.
fn kept_tail(tail: &str) -> &str {
    let mut cut = tail.len().saturating_sub(MAX_OUTPUT_TAIL);
    while !tail.is_char_boundary(cut) {
        cut += 1;
    }
    &tail[cut..]
}

/// Completes a run under its lease and applies what it means for the workspace.
pub async fn complete_run(
    conn: &impl ConnectionTrait,
    id: &str,
    token: &str,
    completion: Completion,
    now: EpochMs,
    policy: &Policy,
) -> Result<RunRow> {
    let one = [RunCompletion {
        run_id: id.to_owned(),
        lease_token: token.to_owned(),
        completion,
    }];
    let mut ended = end_runs(conn, &one, now, policy, |_, e| e).await?;
    Ok(ended.remove(0))
}

/// One completion of a [`complete_runs`] call.
#[derive(Debug, Clone)]
pub struct RunCompletion {
    pub run_id: String,
    pub lease_token: String,
    pub completion: Completion,
}

/// Completes several runs, each under its own lease, all or none. A completion whose lease
/// was lost (or whose run does not exist) fails the whole call, naming it; the caller's
/// transaction is then rolled back. Run ids must be distinct.
pub async fn complete_runs(
    conn: &impl ConnectionTrait,
    completions: &[RunCompletion],
    now: EpochMs,
    policy: &Policy,
) -> Result<Vec<RunRow>> {
    end_runs(conn, completions, now, policy, |i, e| match e {
        Error::FailedPrecondition(p) => Error::precondition(format!(
            "completions[{i}]: {}; no run of this call was completed",
            p.message
        )),
        e => e,
    })
    .await
}

/// Ends `completions`' runs in one statement, fenced each by its own lease, then applies each
/// run's consequences in the order given. The first completion that ended nothing fails the
/// call with why (`refusal` names it: its index and the reason).
async fn end_runs(
    conn: &impl ConnectionTrait,
    completions: &[RunCompletion],
    now: EpochMs,
    policy: &Policy,
    refusal: impl Fn(usize, Error) -> Error,
) -> Result<Vec<RunRow>> {
    let mut values: Vec<Value> = vec![now.into()];
    let mut rows = Vec::with_capacity(completions.len());
    // Sorted by id: one order in which every call locks the runs it ends.
    let mut ordered: Vec<&RunCompletion> = completions.iter().collect();
    ordered.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    for c in ordered {
        rows.push(format!("({})", sql::placeholders(values.len() + 1, 5)));
        values.extend([
            c.run_id.clone().into(),
            c.lease_token.clone().into(),
            c.completion.succeeded.into(),
            c.completion.exit_code.into(),
            kept_tail(&c.completion.output_tail).into(),
        ]);
    }
    // The lease fences the update itself: a run not leased with the token given is not
    // changed. A failure of a run that was asked to stop is its cancelation.
    let finished: Vec<RunRow> = query_all(
        conn,
        &format!(
            "WITH v (run_id, token, ok, code, tail) AS (VALUES {}) UPDATE runs SET \
             status = CASE WHEN v.ok THEN 'succeeded' WHEN cancel_requested THEN 'canceled' \
             ELSE 'failed' END, exit_code = v.code, output_tail = v.tail, finished_at = $1, \
             lease_token = NULL, lease_expires_at = NULL FROM v WHERE runs.id = v.run_id \
             AND runs.lease_token = v.token AND runs.status = 'running' RETURNING {RUN_COLUMNS}",
            rows.join(", "),
        ),
        values,
    )
    .await?;
    let mut by_id: HashMap<String, RunRow> =
        finished.into_iter().map(|r| (r.id.clone(), r)).collect();
    let mut ended = Vec::with_capacity(completions.len());
    for (i, c) in completions.iter().enumerate() {
        let Some(run) = by_id.remove(&c.run_id) else {
            return Err(refusal(i, why_not_ended(conn, c).await));
        };
        ended.push(run);
    }
    let mut answered = Vec::with_capacity(ended.len());
    for (run, c) in ended.into_iter().zip(completions) {
        answered.push(finished_by_runner(conn, run, &c.completion, now, policy).await?);
    }
    Ok(answered)
}

/// Why a completion ended nothing: no such run, or not (any more) leased with its token.
async fn why_not_ended(conn: &impl ConnectionTrait, c: &RunCompletion) -> Error {
    match fenced(conn, &c.run_id, &c.lease_token).await {
        Err(e) => e,
        // Leased with this token and running, yet not ended by the statement: only a
        // concurrent change explains it.
        Ok(_) => Error::Aborted(format!(
            "run {} changed while it was being completed",
            c.run_id
        )),
    }
}

/// The runner of `run`'s lease, with the token of the call that completes it: the actor of
/// everything its end causes (see `crate::actor`).
fn runner_of(run: &RunRow) -> Actor {
    let token_id = match actor::current() {
        Some(Actor::Token { token_id, .. }) => token_id,
        _ => String::new(),
    };
    Actor::Runner {
        runner_id: run.runner_id.clone(),
        run_id: run.id.clone(),
        token_id,
    }
}

/// What a run its runner just ended means: the state version it applied, its workspace or
/// step, and its event, all in the name of the runner of the lease (see `crate::actor`).
async fn finished_by_runner(
    conn: &impl ConnectionTrait,
    run: RunRow,
    completion: &Completion,
    now: EpochMs,
    policy: &Policy,
) -> Result<RunRow> {
    let runner = runner_of(&run);
    let (succeeded, exit_code, serial) = (
        completion.succeeded,
        completion.exit_code,
        completion.state_version_serial,
    );
    actor::acting(runner, async move {
        let actor = format!("runner:{}", run.runner_id);
        if let (Some(serial), true) = (serial, succeeded) {
            state_versions::record_state_version(
                conn,
                &run.workspace_id,
                serial,
                Some(&run.id),
                run.is_destroy,
                &actor,
                now,
            )
            .await?;
        }
        finish_consequences(conn, &run, Some(succeeded), &actor, now, policy).await?;
        let event = if run.status == RunStatus::Canceled {
            "run.canceled"
        } else {
            "run.completed"
        };
        outbox::write(
            conn,
            vec![NewEvent::new(
                &run.organization_id,
                event,
                "run",
                &run.id,
                &actor,
                json!({
                    "workspace_id": run.workspace_id,
                    "status": run.status,
                    "exit_code": exit_code,
                    "is_destroy": run.is_destroy,
                    "source": run.source,
                }),
            )],
            now,
        )
        .await?;
        Ok(run)
    })
    .await
}

/// Requeues runs whose runner lease expired, or errors them after `max_attempts` claims.
pub async fn rescue_expired_run_leases(
    conn: &impl ConnectionTrait,
    limit: u64,
    max_attempts: i32,
    now: EpochMs,
    policy: &Policy,
) -> Result<(u32, u32)> {
    let skip_locked = sql::for_update()
        .skip_locked()
        .sql(conn.get_database_backend());
    let expired: Vec<RunRow> = query_all(
        conn,
        &format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE status = 'running' AND lease_expires_at < $1 \
             ORDER BY lease_expires_at LIMIT {limit}{skip_locked}"
        ),
        [now.into()],
    )
    .await?;
    let (mut requeued, mut errored) = (0, 0);
    let mut events = Vec::new();
    for run in expired {
        if run.attempt >= max_attempts {
            exec(
                conn,
                "UPDATE runs SET status = 'errored', finished_at = $1, lease_token = NULL, \
                 lease_expires_at = NULL, message = $2 WHERE id = $3 AND status = 'running'",
                [
                    now.into(),
                    format!("runner lease expired {} times", run.attempt).into(),
                    run.id.clone().into(),
                ],
            )
            .await?;
            let run = runs::get_run(conn, &run.id).await?;
            finish_consequences(conn, &run, Some(false), ACTOR, now, policy).await?;
            events.push(NewEvent::new(&run.organization_id, "run.errored", "run", &run.id, ACTOR, json!({
                "workspace_id": run.workspace_id, "attempts": run.attempt, "reason": "runner lease expired",
            })));
            errored += 1;
        } else {
            exec(
                conn,
                "UPDATE runs SET status = 'queued', runner_id = '', lease_token = NULL, \
                 lease_expires_at = NULL WHERE id = $1 AND status = 'running'",
                [run.id.clone().into()],
            )
            .await?;
            events.push(NewEvent::new(&run.organization_id, "run.queued", "run", &run.id, ACTOR, json!({
                "workspace_id": run.workspace_id, "attempt": run.attempt, "reason": "runner lease expired; requeued",
            })));
            requeued += 1;
        }
    }
    outbox::write(conn, events, now).await?;
    Ok((requeued, errored))
}

/// What a finished destroy run means for its workspace (AD-7, AD-8, AD-9). `succeeded` is
/// `None` for a run that was canceled or errored without an outcome.
pub async fn finish_consequences(
    conn: &impl ConnectionTrait,
    run: &RunRow,
    succeeded: Option<bool>,
    actor: &str,
    now: EpochMs,
    policy: &Policy,
) -> Result<()> {
    if run.source == RunSource::Deprovision {
        let view = runs::RunOutcomeView {
            run_id: &run.id,
            succeeded: succeeded == Some(true),
            status: run.status.as_str(),
            actor,
        };
        steps::on_run_finished(conn, &policy.engine, &view, now).await?;
    }
    if run.is_destroy {
        outcome::destroy_run_finished(conn, run, succeeded, actor, now, policy.retry_backoff_ms)
            .await?;
    }
    Ok(())
}
