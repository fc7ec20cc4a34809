//! Firing an action: validate, plan, move the entity and its edges and start the first steps;
//! retry a failed run from its failed step; cancel a running one (DP-2 – DP-5).

use ebb_common::time::EpochMs;
use ebb_common::{Error, Result};
use sea_orm::ConnectionTrait;
use serde_json::{Map, Value as Json, json};

use crate::actor;
use crate::deprovision::action_runs::ActionRunStatus;
use crate::deprovision::action_runs::StepStatus;
use crate::deprovision::action_runs::{
    ActionRunRow, check_conditions, check_parameters, get_action_run, load_action, set_step, steps,
};
use crate::deprovision::ending::runs_waiting_on;
use crate::deprovision::entities::{ENTITY_COLUMNS, EntityRow};
use crate::deprovision::plan::{Plan, plan, stored_plan};
use crate::deprovision::progress;
use crate::deprovision::relationships::EdgeState;
use crate::deprovision::steps::{Engine, advance};
use crate::deprovision::upstreams::kept_event;
use crate::deprovision::{entities, relationships};
use crate::events::{NewEvent, outbox};
use crate::runs;
use crate::store::{exec, query_one};
use crate::tenancy::orgs::{self, OrgRow};
use ebb_common::sql;

/// What a trigger answers.
pub struct Triggered {
    pub run: Option<ActionRunRow>,
    pub plan: Plan,
    pub queued_runs: bool,
    /// The entity's organization, whose settings bound the trigger (blast radius, approval).
    pub org: OrgRow,
}

/// The blast-radius guard of a cascade (AD-13): a plan tearing down more entities than the
/// organization's `confirm_threshold` needs `confirm_count` equal to their number.
pub fn check_blast_radius(plan: &Plan, threshold: i32, confirm_count: i32) -> Result<()> {
    let count = plan.nodes.len();
    let threshold = usize::try_from(threshold).unwrap_or(0);
    if count <= threshold || usize::try_from(confirm_count).ok() == Some(count) {
        return Ok(());
    }
    Err(Error::precondition_reason(
        "CONFIRM_COUNT_REQUIRED",
        format!(
            "this cascade would tear down {count} entities, more than the organization's \
             confirm_threshold of {threshold}; look at its plan with a dry run and repeat the \
             request with confirm_count = {count}"
        ),
        [
            ("count", count.to_string()),
            ("confirm_threshold", threshold.to_string()),
        ],
    ))
}

/// Triggers `action` on an entity (DP-2, DP-3).
#[allow(clippy::too_many_arguments)]
pub async fn trigger(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    entity_id: &str,
    action: &str,
    parameters: &Map<String, Json>,
    dry_run: bool,
    scheduled_action_id: Option<&str>,
    actor: &str,
    now: EpochMs,
) -> Result<Triggered> {
    let lock = sql::for_update().sql(conn.get_database_backend());
    let entity: EntityRow = query_one(
        conn,
        &format!("SELECT {ENTITY_COLUMNS} FROM entities WHERE id = $1{lock}"),
        [entity_id.into()],
    )
    .await?
    .ok_or_else(|| Error::not_found("entity", entity_id))?;
    let (_, def) = load_action(conn, &entity, action).await?;
    let parameters = check_parameters(&def, parameters)?;
    check_conditions(&def, &entity)?;
    let (plan, edges) = plan(conn, &entity, &def).await?;
    let org = orgs::get_org(conn, &entity.organization_id).await?;
    if dry_run {
        return Ok(Triggered {
            run: None,
            plan,
            queued_runs: false,
            org,
        });
    }
    let id = uuid::Uuid::now_v7().to_string();
    let approval_window = org.cascade_approval_window(plan.nodes.len());
    let n = exec(
        conn,
        "INSERT INTO action_runs (id, organization_id, entity_id, action, parameters, plan, status, actor, scheduled_action_id, created_at, \
         approval_window_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, $8, $9, $10) ON CONFLICT DO NOTHING",
        [
            id.clone().into(),
            entity.organization_id.clone().into(),
            entity.id.clone().into(),
            action.into(),
            Json::Object(parameters.clone()).to_string().into(),
            serde_json::to_string(&plan).unwrap_or_default().into(),
            actor::name_or(actor).into(),
            scheduled_action_id.map(str::to_owned).into(),
            now.into(),
            approval_window.into(),
        ],
    )
    .await?;
    if n == 0 {
        return Err(Error::precondition(format!(
            "{} {} already has a running action",
            entity.kind, entity.name
        )));
    }
    progress::insert_steps(conn, &id, &plan, def.trigger.name()).await?;
    let mut events = vec![NewEvent::new(
        &entity.organization_id,
        "action_run.started",
        "action_run",
        &id,
        actor,
        json!({
            "action": action, "entity_id": entity.id, "entity_kind": entity.kind, "entity_name": entity.name,
            "parameters": parameters, "steps": plan.nodes.len(), "scheduled_action_id": scheduled_action_id,
            "owner": entity.owner(), "approval_required": approval_window.is_some(),
            "kept": plan.kept.iter().map(|k| json!({"entity_id": k.entity_id, "used_by": k.used_by})).collect::<Vec<_>>(),
        }),
    )];
    let run = get_action_run(conn, &id).await?;
    events.extend(plan.kept.iter().map(|k| {
        kept_event(
            &run,
            &k.entity_id,
            &k.kind,
            &k.name,
            &k.used_by,
            "plan",
            actor,
        )
    }));
    outbox::write(conn, events, now).await?;
    entities::transition_entity(conn, &entity, &def.on_trigger, &id, actor, now).await?;
    relationships::transition_relationships(conn, &edges, EdgeState::Removing, &id, actor, now)
        .await?;
    let queued_runs = advance(conn, engine, &id, actor, now).await?;
    Ok(Triggered {
        run: Some(get_action_run(conn, &id).await?),
        plan,
        queued_runs,
        org,
    })
}

/// Resumes a failed action run at its failed steps (DP-5); finished steps stay finished.
pub async fn retry(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<(ActionRunRow, bool)> {
    let run = get_action_run(conn, id).await?;
    if run.status != ActionRunStatus::Failed {
        return Err(Error::precondition(format!(
            "action run {id} is {}; only a failed run can be retried",
            run.status
        )));
    }
    let n = exec(
        conn,
        "UPDATE action_runs SET status = 'running', error = '', finished_at = NULL WHERE id = $1 AND status = 'failed' \
         AND NOT EXISTS (SELECT 1 FROM action_runs o WHERE o.entity_id = action_runs.entity_id AND o.status = 'running')",
        [id.into()],
    )
    .await?;
    if n == 0 {
        return Err(Error::precondition(format!(
            "the entity of action run {id} has another running action"
        )));
    }
    exec(
        conn,
        "UPDATE action_steps SET status = 'pending', error = '', finished_at = NULL WHERE action_run_id = $1 AND status IN ('failed', 'canceled')",
        [id.into()],
    )
    .await?;
    let root = entities::get_entity(conn, &run.entity_id).await?;
    let (_, def) = load_action(conn, &root, &run.action).await?;
    entities::transition_entity(conn, &root, &def.on_trigger, id, actor, now).await?;
    outbox::write(
        conn,
        vec![NewEvent::new(
            &run.organization_id,
            "action_run.retried",
            "action_run",
            id,
            actor,
            json!({"action": run.action}),
        )],
        now,
    )
    .await?;
    let queued = advance(conn, engine, id, actor, now).await?;
    Ok((get_action_run(conn, id).await?, queued))
}

/// Cancels a running action run: pending steps are canceled, running destroy runs are asked
/// to stop, and the entity reverts to its onFailure state. Runs waiting on its upstreams
/// advance: what it was tearing down is in use again.
pub async fn cancel(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<(ActionRunRow, bool)> {
    let run = get_action_run(conn, id).await?;
    if run.status != ActionRunStatus::Running {
        return Err(Error::precondition(format!(
            "action run {id} is already {}",
            run.status
        )));
    }
    let released = runs_waiting_on(conn, &run, &stored_plan(conn, id).await?).await?;
    exec(
        conn,
        "UPDATE action_runs SET status = 'canceled', error = 'canceled', finished_at = $1 WHERE id = $2",
        [now.into(), id.into()],
    )
    .await?;
    for step in steps(conn, id).await? {
        if matches!(step.status, StepStatus::Running | StepStatus::Pending) {
            set_step(
                conn,
                &step.id,
                StepStatus::Canceled,
                "canceled with the action run",
                now,
            )
            .await?;
            if let Some(run_id) = &step.run_id {
                runs::cancel_for_step(conn, run_id, actor, now).await?;
            }
        }
    }
    let root = entities::get_entity(conn, &run.entity_id).await?;
    let (_, def) = load_action(conn, &root, &run.action).await?;
    entities::transition_entity(conn, &root, &def.on_failure, id, actor, now).await?;
    outbox::write(
        conn,
        vec![NewEvent::new(
            &run.organization_id,
            "action_run.canceled",
            "action_run",
            id,
            actor,
            json!({"action": run.action}),
        )],
        now,
    )
    .await?;
    let mut queued = false;
    for waiting in released {
        queued |= advance(conn, engine, &waiting, actor, now).await?;
    }
    Ok((get_action_run(conn, id).await?, queued))
}
