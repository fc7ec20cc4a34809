//! Walking an action run's steps: a step starts only when every step that depends on it has
//! succeeded (or was kept); a step ends by its destroy run, its webhook callback or its
//! timeout (DP-3, DP-5, DP-8). A step of an upstream checks, when it becomes ready, that
//! nobody else still runs on it, and is kept otherwise (DP-10).

use std::collections::{BTreeSet, VecDeque};

use ebb_common::Result;
use ebb_common::time::EpochMs;
use sea_orm::{ConnectionTrait, FromQueryResult};
use serde_json::{Value as Json, json};

use crate::core::Lifecycle;
use crate::deprovision::action_runs::ActionRunStatus;
use crate::deprovision::action_runs::StepStatus;
use crate::deprovision::action_runs::{
    ActionRunRow, STEP_COLUMNS, StepRow, get_action_run, load_action, set_step, steps,
};
use crate::deprovision::catalog::{ActionDef, TriggerDef};
use crate::deprovision::relationships::EdgeState;
use crate::deprovision::upstreams::{self, Gate};
use crate::deprovision::{catalog, entities, relationships};
use crate::events::{NewEvent, outbox};
use crate::runs::NewRun;
use crate::store::{exec, placeholders, query_all, query_one};
use crate::{runs, workspaces};
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

/// What an action run does next, decided from its steps alone.
#[derive(Debug, PartialEq)]
pub enum Next<'a> {
    /// A step failed: the run fails (DP-5).
    Fail(&'a StepRow),
    /// Every step succeeded or was kept: the run succeeds (DP-4).
    Succeed,
    /// These pending steps have every step they wait for done: start them (DP-3).
    Start(Vec<&'a StepRow>),
    /// Steps are still running.
    Wait,
}

/// Whether a step is over as far as the steps waiting for it are concerned.
fn done(status: StepStatus) -> bool {
    matches!(status, StepStatus::Succeeded | StepStatus::Kept)
}

/// The next move of an action run with steps `all`. Fails closed: a step whose dependencies
/// cannot be read never starts.
pub fn next_steps(all: &[StepRow]) -> Next<'_> {
    if let Some(failed) = all.iter().find(|s| s.status == StepStatus::Failed) {
        return Next::Fail(failed);
    }
    if all.iter().all(|s| done(s.status)) {
        return Next::Succeed;
    }
    let done: BTreeSet<&str> = all
        .iter()
        .filter(|s| done(s.status))
        .map(|s| s.id.as_str())
        .collect();
    let ready: Vec<&StepRow> = all
        .iter()
        .filter(|s| {
            s.status == StepStatus::Pending
                && s.waits_for()
                    .is_ok_and(|w| w.iter().all(|w| done.contains(w.as_str())))
        })
        .collect();
    if ready.is_empty() {
        Next::Wait
    } else {
        Next::Start(ready)
    }
}

/// Starts every step whose dependents are all done, and finishes the run when all steps are
/// (or one failed). A run that finishes releases the runs waiting on its upstreams, which
/// advance in turn. Returns whether destroy runs were queued.
pub async fn advance(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    run_id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<bool> {
    let mut queued = false;
    let mut runs = VecDeque::from([run_id.to_owned()]);
    // Each run finishes once, so the runs it releases are finite.
    while let Some(id) = runs.pop_front() {
        let (queued_here, released) = advance_one(conn, engine, &id, actor, now).await?;
        queued |= queued_here;
        runs.extend(released);
    }
    Ok(queued)
}

/// Advances one run; returns whether destroy runs were queued and, if it finished, the other
/// runs waiting on its upstreams.
async fn advance_one(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    run_id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<(bool, Vec<String>)> {
    let mut queued = false;
    loop {
        let run = get_action_run(conn, run_id).await?;
        if run.status != ActionRunStatus::Running {
            return Ok((queued, Vec::new()));
        }
        let all = steps(conn, run_id).await?;
        let ready = match next_steps(&all) {
            Next::Fail(failed) => {
                let error = format!(
                    "step for entity {} failed: {}",
                    failed.entity_id, failed.error
                );
                let released = finish(conn, &run, false, &error, actor, now).await?;
                return Ok((queued, released));
            }
            Next::Succeed => {
                let released = finish(conn, &run, true, "", actor, now).await?;
                return Ok((queued, released));
            }
            Next::Wait => return Ok((queued, Vec::new())),
            Next::Start(ready) => ready,
        };
        // The action is read once for every step started in this round.
        let def = load_action(
            conn,
            &entities::get_entity(conn, &run.entity_id).await?,
            &run.action,
        )
        .await?
        .1;
        let mut finished_any = false;
        for step in ready {
            match start_step(conn, engine, &run, &def, step, actor, now).await? {
                Started::Running { queued_run } => queued |= queued_run,
                Started::Finished => finished_any = true,
                Started::Waiting => {}
            }
        }
        if !finished_any {
            return Ok((queued, Vec::new()));
        }
    }
}

enum Started {
    Running {
        queued_run: bool,
    },
    Finished,
    /// Still pending: its upstream waits for other runs, or another transaction took it.
    Waiting,
}

async fn start_step(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    run: &ActionRunRow,
    def: &ActionDef,
    step: &StepRow,
    actor: &str,
    now: EpochMs,
) -> Result<Started> {
    if step.entity_id != run.entity_id {
        match upstreams::gate(conn, run, def, step, actor, now).await? {
            Gate::Open => {}
            Gate::Wait => return Ok(Started::Waiting),
            Gate::Kept => return Ok(Started::Finished),
        }
    }
    let trigger = &def.trigger;
    let entity = entities::get_entity(conn, &step.entity_id).await?;
    let deadline = now.saturating_add(engine.step_timeout_ms);
    let n = exec(
        conn,
        "UPDATE action_steps SET status = 'running', started_at = $1, deadline_at = $2, attempt = attempt + 1, error = '', \
         finished_at = NULL, run_id = NULL WHERE id = $3 AND status = 'pending'",
        [now.into(), deadline.into(), step.id.clone().into()],
    )
    .await?;
    if n == 0 {
        // Another transaction started it first.
        return Ok(Started::Waiting);
    }
    match (trigger, &entity.workspace_id) {
        (TriggerDef::Noop, _) => {
            set_step(conn, &step.id, StepStatus::Succeeded, "", now).await?;
            Ok(Started::Finished)
        }
        (TriggerDef::DestroyRun, None) => {
            // Nothing materializes this entity: there is nothing to destroy.
            set_step(conn, &step.id, StepStatus::Succeeded, "", now).await?;
            Ok(Started::Finished)
        }
        (TriggerDef::DestroyRun, Some(workspace_id)) => {
            let ws = workspaces::get_workspace(conn, workspace_id).await?;
            if !ws.applied_since_destroy
                && runs::destroyed_since(conn, workspace_id, ws.last_state_change_at).await?
            {
                // An earlier cascade destroyed it and nothing was applied since: a new trigger
                // (after that cascade failed elsewhere) must not destroy it again (DP-10).
                set_step(conn, &step.id, StepStatus::Succeeded, "", now).await?;
                return Ok(Started::Finished);
            }
            let new = NewRun {
                workspace_id,
                is_destroy: true,
                auto_apply: true,
                source: "deprovision",
                fire_due_at: None,
                message: &format!("{} {}", run.action, entity.name),
                approval_deadline: run.approval_window_ms.map(|w| now.saturating_add(w)),
            };
            match runs::insert_run(conn, &ws.organization_id, &ws.working_directory, &new, now)
                .await?
            {
                Some(run_id) => {
                    exec(
                        conn,
                        "UPDATE runs SET action_step_id = $1 WHERE id = $2",
                        [step.id.clone().into(), run_id.clone().into()],
                    )
                    .await?;
                    // A run that waits for approval has its step wait as long, and then its
                    // usual time.
                    let deadline = now
                        .saturating_add(run.approval_window_ms.unwrap_or(0))
                        .saturating_add(engine.step_timeout_ms);
                    exec(
                        conn,
                        "UPDATE action_steps SET run_id = $1, deadline_at = $3 WHERE id = $2",
                        [
                            run_id.clone().into(),
                            step.id.clone().into(),
                            deadline.into(),
                        ],
                    )
                    .await?;
                    outbox::write(
                        conn,
                        vec![NewEvent::new(&run.organization_id, "run.queued", "run", &run_id, actor, json!({
                            "workspace_id": workspace_id, "is_destroy": true, "source": "deprovision", "action_run_id": run.id, "step_id": step.id,
                            "approval_deadline": new.approval_deadline.map(ebb_common::time::rfc3339),
                        }))],
                        now,
                    )
                    .await?;
                    Ok(Started::Running { queued_run: true })
                }
                None => {
                    set_step(
                        conn,
                        &step.id,
                        StepStatus::Failed,
                        &format!("workspace {workspace_id} already has an active destroy run"),
                        now,
                    )
                    .await?;
                    Ok(Started::Finished)
                }
            }
        }
        (TriggerDef::Webhook { .. }, _) => {
            // The dispatcher POSTs it after commit; the step waits for the callback.
            exec(
                conn,
                "UPDATE action_steps SET dispatched_at = NULL WHERE id = $1",
                [step.id.clone().into()],
            )
            .await?;
            Ok(Started::Running { queued_run: false })
        }
    }
}

/// Locks the upstreams of `run`'s plan, then lists the other running action runs with a
/// pending step on one of them: those waiting for this run to end. Taking the locks first
/// means a gate deciding concurrently has committed before this run looks, or decides after
/// it, seeing this run ended.
pub(crate) async fn runs_waiting_on(
    conn: &impl ConnectionTrait,
    run: &ActionRunRow,
) -> Result<Vec<String>> {
    let plan = run.plan()?;
    let upstream_ids: Vec<String> = plan
        .nodes
        .iter()
        .map(|n| &n.entity_id)
        .chain(plan.kept.iter().map(|k| &k.entity_id))
        .filter(|id| **id != run.entity_id)
        .cloned()
        .collect();
    if upstream_ids.is_empty() {
        return Ok(Vec::new());
    }
    upstreams::lock(conn, &upstream_ids).await?;
    #[derive(FromQueryResult)]
    struct Waiting {
        action_run_id: String,
    }
    let mut values: Vec<sea_orm::Value> = vec![run.id.clone().into()];
    values.extend(
        upstream_ids
            .iter()
            .map(|id| sea_orm::Value::from(id.clone())),
    );
    let waiting: Vec<Waiting> = query_all(
        conn,
        &format!(
            "SELECT DISTINCT s.action_run_id FROM action_steps s \
             JOIN action_runs a ON a.id = s.action_run_id \
             WHERE a.status = 'running' AND s.status = 'pending' AND s.action_run_id <> $1 \
             AND s.entity_id IN ({}) ORDER BY s.action_run_id",
            placeholders(2, upstream_ids.len())
        ),
        values,
    )
    .await?;
    Ok(waiting.into_iter().map(|w| w.action_run_id).collect())
}

/// Ends a run; returns the other runs waiting on its upstreams, to advance next.
async fn finish(
    conn: &impl ConnectionTrait,
    run: &ActionRunRow,
    succeeded: bool,
    error: &str,
    actor: &str,
    now: EpochMs,
) -> Result<Vec<String>> {
    let released = runs_waiting_on(conn, run).await?;
    let status = if succeeded { "succeeded" } else { "failed" };
    exec(
        conn,
        "UPDATE action_runs SET status = $1, error = $2, finished_at = $3 WHERE id = $4 AND status = 'running'",
        [status.into(), error.into(), now.into(), run.id.clone().into()],
    )
    .await?;
    let root = entities::get_entity(conn, &run.entity_id).await?;
    let (_, def) = load_action(conn, &root, &run.action).await?;
    let plan = run.plan()?;
    if succeeded {
        entities::transition_entity(conn, &root, &def.on_success, &run.id, actor, now).await?;
        // Only what this run tore down: a step kept at the gate leaves its entity as it was.
        for step in steps(conn, &run.id).await? {
            if step.entity_id == root.id || step.status != StepStatus::Succeeded {
                continue;
            }
            let e = entities::get_entity(conn, &step.entity_id).await?;
            if let Ok(kind) = catalog::kind(conn, &e.kind).await
                && kind.states.contains(&def.on_success)
            {
                entities::transition_entity(conn, &e, &def.on_success, &run.id, actor, now).await?;
            }
        }
        let grace = run
            .parameters()?
            .get("gracePeriodSeconds")
            .and_then(Json::as_i64)
            .unwrap_or(0);
        for rel_id in &plan.relationships {
            let rel = relationships::get_relationship(conn, rel_id).await?;
            if rel.state != EdgeState::Removing {
                continue;
            }
            if grace > 0 {
                relationships::schedule_deletion(conn, &rel, grace, actor, now).await?;
            } else {
                relationships::transition_relationship(
                    conn,
                    &rel,
                    EdgeState::Removed,
                    &run.id,
                    actor,
                    now,
                )
                .await?;
            }
        }
    } else {
        // DP-5: back to onFailure; edges stay `removing` for investigation.
        entities::transition_entity(conn, &root, &def.on_failure, &run.id, actor, now).await?;
    }
    let event = if succeeded {
        "action_run.succeeded"
    } else {
        "action_run.failed"
    };
    outbox::write(
        conn,
        vec![NewEvent::new(
            &run.organization_id,
            event,
            "action_run",
            &run.id,
            actor,
            json!({
                "action": run.action, "entity_id": run.entity_id, "error": error,
                "owner": root.owner(),
            }),
        )],
        now,
    )
    .await?;
    Ok(released)
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
    let (status, error) = if run.succeeded {
        (StepStatus::Succeeded, String::new())
    } else {
        (
            StepStatus::Failed,
            format!("destroy run {} ended {}", run.run_id, run.status),
        )
    };
    set_step(conn, &step.id, status, &error, now).await?;
    advance(conn, engine, &step.action_run_id, run.actor, now).await
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

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &str, status: StepStatus, waits_for: &str) -> StepRow {
        StepRow {
            id: id.into(),
            action_run_id: "run".into(),
            step_order: 0,
            entity_id: format!("entity-{id}"),
            waits_for: waits_for.into(),
            trigger_type: "destroy_run".into(),
            status,
            run_id: None,
            attempt: 0,
            error: String::new(),
            started_at: None,
            finished_at: None,
            deadline_at: None,
        }
    }

    #[test]
    fn leaves_start_first_and_a_parent_waits_for_them() {
        let all = [
            step("leaf-a", StepStatus::Pending, "[]"),
            step("leaf-b", StepStatus::Pending, "[]"),
            step("root", StepStatus::Pending, r#"["leaf-a","leaf-b"]"#),
        ];
        let Next::Start(ready) = next_steps(&all) else {
            panic!("the leaves start")
        };
        let ids: Vec<&str> = ready.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["leaf-a", "leaf-b"]);

        let all = [
            step("leaf-a", StepStatus::Succeeded, "[]"),
            step("leaf-b", StepStatus::Running, "[]"),
            step("root", StepStatus::Pending, r#"["leaf-a","leaf-b"]"#),
        ];
        assert_eq!(next_steps(&all), Next::Wait);
    }

    #[test]
    fn an_unreadable_waits_for_never_starts_the_step() {
        let all = [
            step("leaf", StepStatus::Succeeded, "[]"),
            step("root", StepStatus::Pending, "[\"leaf\""),
        ];
        assert_eq!(next_steps(&all), Next::Wait);
    }

    #[test]
    fn a_kept_step_is_done_for_the_steps_after_it_and_for_the_run() {
        let all = [
            step("tenant", StepStatus::Succeeded, "[]"),
            step("account", StepStatus::Kept, r#"["tenant"]"#),
            step("org", StepStatus::Pending, r#"["account"]"#),
        ];
        let Next::Start(ready) = next_steps(&all) else {
            panic!("the step after a kept one becomes ready (and is checked in turn)")
        };
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].id, "org");
        let all = [
            step("tenant", StepStatus::Succeeded, "[]"),
            step("account", StepStatus::Kept, r#"["tenant"]"#),
        ];
        assert_eq!(next_steps(&all), Next::Succeed);
    }

    #[test]
    fn one_failure_fails_the_run_and_all_successes_succeed_it() {
        let all = [
            step("a", StepStatus::Failed, "[]"),
            step("b", StepStatus::Pending, r#"["a"]"#),
        ];
        assert!(matches!(next_steps(&all), Next::Fail(s) if s.id == "a"));
        let all = [step("a", StepStatus::Succeeded, "[]")];
        assert_eq!(next_steps(&all), Next::Succeed);
    }
}
