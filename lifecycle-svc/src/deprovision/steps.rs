//! Walking an action run's steps: a step starts only when every step it waits for has
//! succeeded (or was kept); a step ends by its destroy run, its webhook callback or its
//! timeout (DP-3, DP-5, DP-8). A step of an upstream checks, when it becomes ready, that
//! nobody else still runs on it, and is kept otherwise (DP-10).
//!
//! Everything here is set-based: the steps that become ready together start together, a few
//! statements for all of them, and a step's end moves only the counters of its neighbours
//! ([`progress`]).

use std::collections::{HashMap, VecDeque};

use ebb_common::Result;
use ebb_common::time::EpochMs;
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::json;

use crate::core::Lifecycle;
use crate::deprovision::action_runs::{
    ActionRunRow, ActionRunStatus, STEP_COLUMNS, StepRow, StepStatus, get_action_run, load_action,
    pending_steps, set_step,
};
use crate::deprovision::catalog::{ActionDef, TriggerDef};
use crate::deprovision::ending::finish;
use crate::deprovision::progress;
use crate::deprovision::{entities, upstreams};
use crate::events::{NewEvent, outbox};
use crate::runs;
use crate::runs::{QueuedDestroy, RunSource};
use crate::store::{CHUNK, by_ids, exec, placeholders, query_all, query_one};
use crate::workspaces::{WORKSPACE_COLUMNS, WORKSPACE_FROM, WorkspaceRow};
use ebb_common::sql;

/// The settings action runs need.
#[derive(Debug, Clone)]
pub struct Engine {
    /// Keys callback tokens of webhook steps.
    pub callback_secret: Vec<u8>,
    /// How long a step may run.
    pub step_timeout_ms: i64,
    /// How long a callback token stays valid.
    pub callback_ttl_ms: i64,
}

impl Engine {
    /// The settings `core` is configured with.
    pub fn of(core: &Lifecycle) -> Self {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            callback_secret: core.callback_secret.as_ref().clone(),
            step_timeout_ms: ms(core.config.action_step_timeout),
            callback_ttl_ms: ms(core.config.callback_token_ttl),
        }
    }
}

/// Starts every ready step of a run, and finishes the run when all its steps are done (or one
/// failed). A run that finishes releases the runs waiting on its upstreams, which advance in
/// turn. Returns whether destroy runs were queued.
pub async fn advance(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    run_id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<bool> {
    advance_from(conn, engine, run_id, None, actor, now).await
}

/// [`advance`], with only the steps `ready` considered for a start in the first run (the
/// others' ready steps already had their turn).
async fn advance_from(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    run_id: &str,
    ready: Option<Vec<String>>,
    actor: &str,
    now: EpochMs,
) -> Result<bool> {
    let mut queued = false;
    let mut runs = VecDeque::from([(run_id.to_owned(), ready)]);
    // Each run finishes once, so the runs it releases are finite.
    while let Some((id, ready)) = runs.pop_front() {
        let (queued_here, released) = advance_one(conn, engine, &id, ready, actor, now).await?;
        queued |= queued_here;
        runs.extend(released.into_iter().map(|r| (r, None)));
    }
    Ok(queued)
}

/// The first failed step of a run, if any.
async fn failed_step(conn: &impl ConnectionTrait, run_id: &str) -> Result<Option<StepRow>> {
    query_one(
        conn,
        &format!(
            "SELECT {STEP_COLUMNS} FROM action_steps WHERE action_run_id = $1 AND status = 'failed' \
             ORDER BY step_order LIMIT 1"
        ),
        [run_id.into()],
    )
    .await
}

/// Pending steps of a run whose every wait is done: all of them, or those among `ids` (which
/// this transaction counted down to ready, so only their status is read again).
async fn ready_steps(
    conn: &impl ConnectionTrait,
    run_id: &str,
    ids: Option<&[String]>,
) -> Result<Vec<StepRow>> {
    let Some(ids) = ids else {
        return query_all(
            conn,
            &format!(
                "SELECT {STEP_COLUMNS} FROM action_steps WHERE action_run_id = $1 AND status = 'pending' \
                 AND waiting = 0 ORDER BY step_order"
            ),
            [run_id.into()],
        )
        .await;
    };
    let mut steps = pending_steps(conn, ids).await?;
    steps.sort_by_key(|s| s.step_order);
    Ok(steps)
}

/// Advances one run; returns whether destroy runs were queued and, if it finished, the other
/// runs waiting on its upstreams.
async fn advance_one(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    run_id: &str,
    only: Option<Vec<String>>,
    actor: &str,
    now: EpochMs,
) -> Result<(bool, Vec<String>)> {
    let run = get_action_run(conn, run_id).await?;
    if run.status != ActionRunStatus::Running {
        return Ok((false, Vec::new()));
    }
    if let Some(failed) = failed_step(conn, run_id).await? {
        let error = format!(
            "step for entity {} failed: {}",
            failed.entity_id, failed.error
        );
        return Ok((false, finish(conn, &run, false, &error, actor, now).await?));
    }
    if run.open_first_steps == 0 {
        return Ok((false, finish(conn, &run, true, "", actor, now).await?));
    }
    let mut ready = ready_steps(conn, run_id, only.as_deref()).await?;
    if ready.is_empty() {
        return Ok((false, Vec::new()));
    }
    // The action is read once for every step started.
    let def = load_action(
        conn,
        &entities::get_entity(conn, &run.entity_id).await?,
        &run.action,
    )
    .await?
    .1;
    let mut queued = false;
    while !ready.is_empty() {
        let started = start(conn, engine, &run, &def, ready, actor, now).await?;
        queued |= started.queued;
        if let Some((entity_id, error)) = started.failed {
            let error = format!("step for entity {entity_id} failed: {error}");
            return Ok((queued, finish(conn, &run, false, &error, actor, now).await?));
        }
        let mut next = Vec::new();
        for (ids, status) in [
            (started.kept, StepStatus::Kept),
            (started.done, StepStatus::Succeeded),
        ] {
            if ids.is_empty() {
                continue;
            }
            let done =
                progress::mark_done(conn, run_id, &ids, status, progress::Settle::Now, now).await?;
            if done.run_done {
                return Ok((queued, finish(conn, &run, true, "", actor, now).await?));
            }
            next.extend(done.ready);
        }
        ready = if next.is_empty() {
            Vec::new()
        } else {
            ready_steps(conn, run_id, Some(&next)).await?
        };
    }
    Ok((queued, Vec::new()))
}

/// What starting a batch of ready steps came to.
#[derive(Debug, Default)]
struct Started {
    /// Destroy runs were queued.
    queued: bool,
    /// Ended at once: nothing to destroy, or a no-op.
    done: Vec<String>,
    /// Kept at the gate (DP-10).
    kept: Vec<String>,
    /// A step that could not start: its entity and why.
    failed: Option<(String, String)>,
}

/// Starts ready steps of `run`: the gate decides the upstreams', then every step that may
/// start starts in one statement per batch, and its trigger follows — a destroy run for each
/// workspace, in one insert per batch.
async fn start(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    run: &ActionRunRow,
    def: &ActionDef,
    ready: Vec<StepRow>,
    actor: &str,
    now: EpochMs,
) -> Result<Started> {
    let mut started = Started::default();
    let (mut open, upstream): (Vec<StepRow>, Vec<StepRow>) = ready
        .into_iter()
        .partition(|s| s.entity_id == run.entity_id);
    if !upstream.is_empty() {
        let gates = upstreams::gate(conn, run, def, &upstream, actor, now).await?;
        open.extend(gates.open);
        started.kept = gates.kept;
    }
    let deadline = now.saturating_add(engine.step_timeout_ms);
    let mut steps: Vec<StepRow> = Vec::with_capacity(open.len());
    for chunk in open.chunks(CHUNK) {
        let mut values: Vec<Value> = vec![now.into(), deadline.into()];
        values.extend(chunk.iter().map(|s| Value::from(s.id.clone())));
        // A step another transaction started first is not returned.
        steps.extend(
            query_all::<StepRow>(
                conn,
                &format!(
                    "UPDATE action_steps SET status = 'running', started_at = $1, deadline_at = $2, \
                     attempt = attempt + 1, error = '', finished_at = NULL, run_id = NULL, dispatched_at = NULL \
                     WHERE id IN ({}) AND status = 'pending' RETURNING {STEP_COLUMNS}",
                    placeholders(3, chunk.len())
                ),
                values,
            )
            .await?,
        );
    }
    match &def.trigger {
        TriggerDef::Noop => started.done = steps.into_iter().map(|s| s.id).collect(),
        // The dispatcher POSTs them after commit; each waits for its callback.
        TriggerDef::Webhook { .. } => {}
        TriggerDef::DestroyRun => {
            destroy_runs(conn, engine, run, steps, &mut started, actor, now).await?
        }
    }
    Ok(started)
}

/// Queues a destroy run for the workspace of each started step; a step whose entity has no
/// workspace, or whose workspace an earlier cascade already destroyed, ends at once.
async fn destroy_runs(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    run: &ActionRunRow,
    steps: Vec<StepRow>,
    started: &mut Started,
    actor: &str,
    now: EpochMs,
) -> Result<()> {
    if steps.is_empty() {
        return Ok(());
    }
    let entity_ids: Vec<String> = steps.iter().map(|s| s.entity_id.clone()).collect();
    let entities: HashMap<String, entities::EntityRow> = entities::get_entities(conn, &entity_ids)
        .await?
        .into_iter()
        .map(|e| (e.id.clone(), e))
        .collect();
    let workspace_ids: Vec<String> = entities
        .values()
        .filter_map(|e| e.workspace_id.clone())
        .collect();
    let select = format!("SELECT {WORKSPACE_COLUMNS} FROM {WORKSPACE_FROM}");
    let workspaces: HashMap<String, WorkspaceRow> =
        by_ids::<WorkspaceRow>(conn, &select, "w.id", &workspace_ids)
            .await?
            .into_iter()
            .map(|w| (w.id.clone(), w))
            .collect();
    let applied: Vec<(String, Option<EpochMs>)> = workspaces
        .values()
        .filter(|w| !w.applied_since_destroy)
        .map(|w| (w.id.clone(), w.last_state_change_at))
        .collect();
    let gone = runs::destroyed_since(conn, &applied).await?;
    let approval_deadline = run.approval_window_ms.map(|w| now.saturating_add(w));
    let mut queue: Vec<(StepRow, QueuedDestroy)> = Vec::new();
    for step in steps {
        let entity = entities.get(&step.entity_id);
        let Some(ws) = entity
            .and_then(|e| e.workspace_id.as_ref())
            .and_then(|w| workspaces.get(w))
        else {
            // Nothing materializes this entity: there is nothing to destroy.
            started.done.push(step.id);
            continue;
        };
        if gone.contains(&ws.id) {
            // An earlier cascade destroyed it and nothing was applied since: a new trigger
            // (after that cascade failed elsewhere) must not destroy it again (DP-10).
            started.done.push(step.id);
            continue;
        }
        let name = entity.map_or("", |e| e.name.as_str());
        queue.push((
            step.clone(),
            QueuedDestroy {
                run_id: uuid::Uuid::now_v7().to_string(),
                organization_id: ws.organization_id.clone(),
                workspace_id: ws.id.clone(),
                working_directory: ws.working_directory.clone(),
                source: RunSource::Deprovision,
                message: format!("{} {name}", run.action),
                fire_due_at: None,
                action_step_id: Some(step.id.clone()),
                approval_deadline,
            },
        ));
    }
    let new: Vec<QueuedDestroy> = queue.iter().map(|(_, q)| q.clone()).collect();
    let inserted = runs::insert_destroy_runs(conn, &new, now).await?;
    // A run that waits for approval has its step wait as long, and then its usual time.
    let deadline = now
        .saturating_add(run.approval_window_ms.unwrap_or(0))
        .saturating_add(engine.step_timeout_ms);
    let mut linked: Vec<(&str, &str)> = Vec::new();
    let mut events = Vec::new();
    for (step, q) in &queue {
        if !inserted.contains(&q.run_id) {
            let error = format!(
                "workspace {} already has an active destroy run",
                q.workspace_id
            );
            set_step(conn, &step.id, StepStatus::Failed, &error, now).await?;
            if started.failed.is_none() {
                started.failed = Some((step.entity_id.clone(), error));
            }
            continue;
        }
        linked.push((step.id.as_str(), q.run_id.as_str()));
        events.push(NewEvent::new(&run.organization_id, "run.queued", "run", &q.run_id, actor, json!({
            "workspace_id": q.workspace_id, "is_destroy": true, "source": "deprovision", "action_run_id": run.id,
            "step_id": step.id, "approval_deadline": approval_deadline.map(ebb_common::time::rfc3339),
        })));
    }
    started.queued |= !linked.is_empty();
    for chunk in linked.chunks(CHUNK) {
        let mut values: Vec<Value> = vec![deadline.into()];
        let rows: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, _)| format!("(${}, ${})", 2 * i + 2, 2 * i + 3))
            .collect();
        for (step, run_id) in chunk {
            values.extend([Value::from(*step), Value::from(*run_id)]);
        }
        exec(
            conn,
            &format!(
                "WITH v (step_id, run_id) AS (VALUES {}) UPDATE action_steps SET run_id = v.run_id, deadline_at = $1 \
                 FROM v WHERE action_steps.id = v.step_id",
                rows.join(", ")
            ),
            values,
        )
        .await?;
    }
    outbox::write(conn, events, now).await
}

/// A step ended: done, or failed with `error`; its run advances, its settling now or queued
/// (`settle`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn step_ended(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    action_run_id: &str,
    step_id: &str,
    failure: Option<String>,
    settle: progress::Settle,
    actor: &str,
    now: EpochMs,
) -> Result<bool> {
    match failure {
        Some(error) => {
            set_step(conn, step_id, StepStatus::Failed, &error, now).await?;
            advance(conn, engine, action_run_id, actor, now).await
        }
        None => {
            let done = progress::mark_done(
                conn,
                action_run_id,
                &[step_id.to_owned()],
                StepStatus::Succeeded,
                settle,
                now,
            )
            .await?;
            if done.run_done {
                // Every step is done: the run finishes now.
                return advance(conn, engine, action_run_id, actor, now).await;
            }
            if done.ready.is_empty() {
                return Ok(false);
            }
            advance_from(conn, engine, action_run_id, Some(done.ready), actor, now).await
        }
    }
}

/// A destroy run of a step finished: the step follows it and the action run advances.
pub async fn on_run_finished(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    run: &runs::RunOutcomeView<'_>,
    now: EpochMs,
) -> Result<bool> {
    #[derive(FromQueryResult)]
    struct StepOf {
        id: String,
        action_run_id: String,
        status: StepStatus,
    }
    let step: Option<StepOf> = query_one(
        conn,
        "SELECT id, action_run_id, status FROM action_steps WHERE run_id = $1",
        [run.run_id.into()],
    )
    .await?;
    let Some(step) = step else { return Ok(false) };
    if step.status != StepStatus::Running {
        return Ok(false);
    }
    let failure =
        (!run.succeeded).then(|| format!("destroy run {} ended {}", run.run_id, run.status));
    // Sibling steps' runs end at the same time: one that finds their common upstream's row
    // taken queues its settling instead of waiting there.
    step_ended(
        conn,
        engine,
        &step.action_run_id,
        &step.id,
        failure,
        progress::Settle::NowOrQueued,
        run.actor,
        now,
    )
    .await
}

/// Fails running steps past their deadline (DP-8).
pub async fn time_out_steps(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    limit: u64,
    now: EpochMs,
) -> Result<u32> {
    let skip = sql::for_update()
        .skip_locked()
        .sql(conn.get_database_backend());
    let late: Vec<StepRow> = query_all(
        conn,
        &format!("SELECT {STEP_COLUMNS} FROM action_steps WHERE status = 'running' AND deadline_at < $1 ORDER BY deadline_at LIMIT {limit}{skip}"),
        [now.into()],
    )
    .await?;
    for step in &late {
        let minutes = (engine.step_timeout_ms / 60_000).max(1);
        set_step(
            conn,
            &step.id,
            StepStatus::Failed,
            &format!("timed out after {minutes} minutes"),
            now,
        )
        .await?;
        if let Some(run_id) = &step.run_id {
            runs::cancel_for_step(conn, run_id, "scheduler", now).await?;
        }
        advance(conn, engine, &step.action_run_id, "scheduler", now).await?;
    }
    Ok(late.len() as u32)
}
