//! Runs and the runner protocol: claim with a lease, heartbeat, complete — every call after the
//! claim fenced by the lease token — and what a finished run means for its workspace.

use ebb_common::time::{EpochMs, rfc3339};
use ebb_common::{Error, Result};
use sea_orm::{ConnectionTrait, DatabaseBackend, Value};
use serde_json::json;

use crate::outbox::{self, NewEvent};
use crate::rows::{RUN_COLUMNS, RunRow};
use crate::schedule;
use crate::sql::{exec, query_all, query_one};
use crate::workspaces;

/// What finishing a run needs to know beyond the run itself.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Base delay before retrying a failed auto-destroy.
    pub retry_backoff_ms: i64,
    /// Settings of deprovisioning action runs, whose steps destroy runs carry out.
    pub engine: crate::actions::Engine,
}

/// How a run ended, for the action step it carries out.
#[derive(Debug, Clone, Copy)]
pub struct RunOutcomeView<'a> {
    pub run_id: &'a str,
    pub succeeded: bool,
    pub status: &'a str,
    pub actor: &'a str,
}

/// Longest output tail kept per run.
pub const MAX_OUTPUT_TAIL: usize = 16 * 1024;

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
         status, fire_due_at, message, working_directory, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $10) ON CONFLICT DO NOTHING",
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
        ],
    )
    .await?;
    Ok((n == 1).then_some(id))
}

/// Queues a manual run.
pub async fn create_manual_run(
    conn: &impl ConnectionTrait,
    workspace_id: &str,
    is_destroy: bool,
    auto_apply: bool,
    message: &str,
    actor: &str,
    now: EpochMs,
) -> Result<RunRow> {
    let ws = workspaces::lock_workspace_row(conn, workspace_id).await?;
    if ws.state == "archived" {
        return Err(Error::precondition(format!(
            "workspace {workspace_id} is archived; restore it first"
        )));
    }
    if ws.locked {
        return Err(Error::precondition(format!(
            "workspace {workspace_id} is locked: {}",
            ws.lock_reason
        )));
    }
    let new = NewRun {
        workspace_id,
        is_destroy,
        auto_apply,
        source: "manual",
        fire_due_at: None,
        message,
    };
    let Some(id) = insert_run(conn, &ws.organization_id, &ws.working_directory, &new, now).await?
    else {
        return Err(Error::precondition(format!(
            "workspace {workspace_id} already has an active destroy run"
        )));
    };
    outbox::write(
        conn,
        vec![NewEvent::new(
            &ws.organization_id,
            "run.queued",
            "run",
            &id,
            actor,
            json!({
                "workspace_id": workspace_id, "is_destroy": is_destroy, "source": "manual",
            }),
        )],
        now,
    )
    .await?;
    get_run(conn, &id).await
}

/// Filters of a run list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub organization_id: String,
    pub workspace_id: Option<String>,
    pub status: Option<&'static str>,
    pub source: Option<&'static str>,
}

/// One page of runs, newest first, before `before` (created_at, id).
pub async fn list_runs(
    conn: &impl ConnectionTrait,
    filter: &RunFilter,
    before: Option<(i64, String)>,
    limit: u64,
) -> Result<Vec<RunRow>> {
    let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE organization_id = $1");
    let mut values: Vec<Value> = vec![filter.organization_id.clone().into()];
    let mut push = |sql: &mut String, clause: &str, v: Value| {
        values.push(v);
        sql.push_str(&clause.replace("$?", &format!("${}", values.len())));
    };
    if let Some(w) = &filter.workspace_id {
        push(&mut sql, " AND workspace_id = $?", w.clone().into());
    }
    if let Some(s) = filter.status {
        push(&mut sql, " AND status = $?", s.into());
    }
    if let Some(s) = filter.source {
        push(&mut sql, " AND source = $?", s.into());
    }
    if let Some((created, id)) = before {
        push(&mut sql, " AND (created_at < $?", created.into());
        push(&mut sql, " OR (created_at = $?", created.into());
        push(&mut sql, " AND id < $?))", id.into());
    }
    sql.push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT {limit}"));
    query_all(conn, &sql, values).await
}

/// Cancels a queued run at once; a running run is asked to stop (its runner sees it on the
/// next heartbeat and completes it).
pub async fn cancel_run(
    conn: &impl ConnectionTrait,
    id: &str,
    actor: &str,
    now: EpochMs,
    policy: &Policy,
) -> Result<RunRow> {
    let run = get_run(conn, id).await?;
    match run.status.as_str() {
        "queued" => {
            exec(
                conn,
                "UPDATE runs SET status = 'canceled', finished_at = $1 WHERE id = $2 AND status = 'queued'",
                [now.into(), id.into()],
            )
            .await?;
            let run = get_run(conn, id).await?;
            finish_consequences(conn, &run, None, actor, now, policy).await?;
            outbox::write(
                conn,
                vec![NewEvent::new(
                    &run.organization_id,
                    "run.canceled",
                    "run",
                    id,
                    actor,
                    json!({
                        "workspace_id": run.workspace_id,
                    }),
                )],
                now,
            )
            .await?;
        }
        "running" => {
            exec(
                conn,
                "UPDATE runs SET cancel_requested = TRUE WHERE id = $1",
                [id.into()],
            )
            .await?;
        }
        other => {
            return Err(Error::precondition(format!("run {id} is already {other}")));
        }
    }
    get_run(conn, id).await
}

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
             ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED"
        }
        _ => {
            "SELECT id FROM runs WHERE organization_id = $5 AND status = 'queued' \
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

async fn fenced(conn: &impl ConnectionTrait, id: &str, token: &str) -> Result<RunRow> {
    let run = get_run(conn, id).await?;
    if run.status != "running" || run.lease_token.as_deref() != Some(token) {
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

/// How a runner says a run ended.
#[derive(Debug, Clone)]
pub struct Completion {
    pub succeeded: bool,
    pub exit_code: i32,
    pub output_tail: String,
    pub state_version_serial: Option<i64>,
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
    let run = fenced(conn, id, token).await?;
    let actor = format!("runner:{}", run.runner_id);
    let status = if run.cancel_requested && !completion.succeeded {
        "canceled"
    } else if completion.succeeded {
        "succeeded"
    } else {
        "failed"
    };
    let mut tail = completion.output_tail;
    if tail.len() > MAX_OUTPUT_TAIL {
        let mut cut = tail.len() - MAX_OUTPUT_TAIL;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = tail[cut..].to_owned();
    }
    let n = exec(
        conn,
        "UPDATE runs SET status = $1, exit_code = $2, output_tail = $3, finished_at = $4, \
         lease_token = NULL, lease_expires_at = NULL WHERE id = $5 AND lease_token = $6 \
         AND status = 'running'",
        [
            status.into(),
            completion.exit_code.into(),
            tail.into(),
            now.into(),
            id.into(),
            token.into(),
        ],
    )
    .await?;
    if n == 0 {
        return Err(Error::precondition(format!("run {id}: the lease was lost")));
    }
    if let (Some(serial), true) = (completion.state_version_serial, completion.succeeded) {
        workspaces::record_state_version(
            conn,
            &run.workspace_id,
            serial,
            Some(id),
            run.is_destroy,
            &actor,
            now,
        )
        .await?;
    }
    let run = get_run(conn, id).await?;
    finish_consequences(conn, &run, Some(completion.succeeded), &actor, now, policy).await?;
    let event = if status == "canceled" {
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
            id,
            &actor,
            json!({
                "workspace_id": run.workspace_id,
                "status": status,
                "exit_code": completion.exit_code,
                "is_destroy": run.is_destroy,
                "source": run.source,
            }),
        )],
        now,
    )
    .await?;
    Ok(run)
}

/// What a finished destroy run means for its workspace (rules 7, 8 and 9). `succeeded` is
/// `None` for a run that was canceled or errored without an outcome.
pub async fn finish_consequences(
    conn: &impl ConnectionTrait,
    run: &RunRow,
    succeeded: Option<bool>,
    actor: &str,
    now: EpochMs,
    policy: &Policy,
) -> Result<()> {
    if run.source == "deprovision" {
        let view = RunOutcomeView {
            run_id: &run.id,
            succeeded: succeeded == Some(true),
            status: &run.status,
            actor,
        };
        crate::actions::on_run_finished(conn, &policy.engine, &view, now).await?;
    }
    if !run.is_destroy {
        return Ok(());
    }
    let mut ws = workspaces::lock_workspace_row(conn, &run.workspace_id).await?;
    let org = workspaces::get_org(conn, &ws.organization_id).await?;
    let mut events = Vec::new();
    let auto = run.source == "auto_destroy";
    match (succeeded, auto) {
        (Some(true), true) => {
            // Rule 7: archive (never delete), clear the one-shot, keep the inactivity setting
            // (it schedules again only after a new applied state version).
            ws.state = "archived".into();
            ws.auto_destroy_at = None;
            ws.applied_since_destroy = false;
            ws.auto_destroy_status = "succeeded".into();
            ws.auto_destroy_failures = 0;
            ws.auto_destroy_retry_at = None;
            events.push(NewEvent::new(&ws.organization_id, "workspace.auto_destroy.succeeded", "workspace", &ws.id, actor, json!({
                "run_id": run.id, "workspace_name": ws.name, "due_at": run.fire_due_at.map(rfc3339),
            })));
            events.push(NewEvent::new(
                &ws.organization_id,
                "workspace.archived",
                "workspace",
                &ws.id,
                actor,
                json!({"run_id": run.id}),
            ));
        }
        (Some(true), false) => {
            // Rule 9: a manual destroy before the scheduled time cancels the one-shot; and
            // inactivity waits for the next applied state version.
            ws.applied_since_destroy = false;
            if ws.auto_destroy_at.is_some_and(|at| at > now) {
                ws.auto_destroy_at = None;
                events.push(NewEvent::new(&ws.organization_id, "workspace.auto_destroy.cleared", "workspace", &ws.id, actor, json!({
                    "reason": "manual destroy succeeded before the scheduled time", "run_id": run.id,
                })));
            }
        }
        (outcome, true) => {
            // Rule 8: retry while this run is still the workspace's latest, up to the limit.
            let latest = latest_run_id(conn, &ws.id).await?;
            let is_latest = latest.as_deref() == Some(run.id.as_str());
            let failures = ws.auto_destroy_failures + 1;
            ws.auto_destroy_failures = failures;
            let will_retry = outcome.is_some() && is_latest && failures <= org.destroy_retry_limit;
            if will_retry {
                let at = now + schedule::retry_backoff_ms(policy.retry_backoff_ms, failures);
                ws.auto_destroy_retry_at = Some(at);
                ws.auto_destroy_status = "retrying".into();
            } else {
                ws.auto_destroy_retry_at = None;
                ws.auto_destroy_status = if outcome.is_some() { "failed" } else { "idle" }.into();
            }
            events.push(NewEvent::new(
                &ws.organization_id,
                "workspace.auto_destroy.failed",
                "workspace",
                &ws.id,
                actor,
                json!({
                    "run_id": run.id,
                    "workspace_name": ws.name,
                    "status": run.status,
                    "failures": failures,
                    "will_retry": will_retry,
                    "retry_at": ws.auto_destroy_retry_at.map(rfc3339),
                    "is_latest_run": is_latest,
                }),
            ));
        }
        (_, false) => {}
    }
    workspaces::save(conn, &mut ws, &org, now).await?;
    outbox::write(conn, events, now).await
}

async fn latest_run_id(conn: &impl ConnectionTrait, workspace_id: &str) -> Result<Option<String>> {
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
