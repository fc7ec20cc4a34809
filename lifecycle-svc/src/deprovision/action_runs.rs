//! Action runs and their steps as stored: reading them, the action a run carries out, and the
//! checks of its conditions and parameters (DP-1, DP-2).

use ebb_common::time::EpochMs;
use ebb_common::{Error, Result};
use sea_orm::sea_query::{Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, FromQueryResult};
use serde_json::{Map, Value as Json, json};

use crate::deprovision::catalog;
use crate::deprovision::catalog::{ActionDef, Condition, KindDef};
use crate::deprovision::entities::EntityRow;
use crate::store::{by_ids, db_enum, decode_json, exec, keyset, query_all, query_one, select_all};

db_enum! {
    /// Where an action run stands.
    pub enum ActionRunStatus {
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Canceled = "canceled",
    }
}

db_enum! {
    /// Where one step of an action run stands.
    pub enum StepStatus {
        Pending = "pending",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Canceled = "canceled",
        /// Not torn down: an upstream other entities still run on (DP-10). Terminal, and done
        /// as far as the steps after it are concerned.
        Kept = "kept",
    }
}

/// Columns of [`ActionRunRow`]: all but the plan, which a cascade's every step would
/// otherwise read whole ([`crate::deprovision::plan::stored_plan`] reads it).
pub const ACTION_RUN_COLUMNS: &str = "id, organization_id, entity_id, action, parameters, status, actor, error, \
    scheduled_action_id, created_at, finished_at, approval_window_ms, open_first_steps";

/// An action run.
#[derive(Debug, Clone, FromQueryResult)]
pub struct ActionRunRow {
    pub id: String,
    pub organization_id: String,
    pub entity_id: String,
    pub action: String,
    pub parameters: String,
    pub status: ActionRunStatus,
    pub actor: String,
    pub error: String,
    pub scheduled_action_id: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// Set when its destroy runs wait for approval, each at most this long.
    pub approval_window_ms: Option<i64>,
    /// Its steps that wait for nothing and have not settled (see `progress`): 0 once every
    /// step is done.
    pub open_first_steps: i32,
}

impl ActionRunRow {
    /// The stored parameters.
    pub fn parameters(&self) -> Result<Map<String, Json>> {
        decode_json("action_runs", "parameters", &self.id, &self.parameters)
    }
}

/// An action run by id.
pub async fn get_action_run(conn: &impl ConnectionTrait, id: &str) -> Result<ActionRunRow> {
    query_one(
        conn,
        &format!("SELECT {ACTION_RUN_COLUMNS} FROM action_runs WHERE id = $1"),
        [id.into()],
    )
    .await?
    .ok_or_else(|| Error::not_found("action run", id))
}

/// Columns of [`StepRow`].
pub const STEP_COLUMNS: &str = "id, action_run_id, step_order, entity_id, waits_for, trigger_type, status, run_id, \
    attempt, error, started_at, finished_at, deadline_at";

/// A step of an action run.
#[derive(Debug, Clone, PartialEq, FromQueryResult)]
pub struct StepRow {
    pub id: String,
    pub action_run_id: String,
    pub step_order: i32,
    pub entity_id: String,
    pub waits_for: String,
    pub trigger_type: String,
    pub status: StepStatus,
    pub run_id: Option<String>,
    pub attempt: i32,
    pub error: String,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub deadline_at: Option<i64>,
}

impl StepRow {
    /// Step ids that must succeed before this one starts.
    pub fn waits_for(&self) -> Result<Vec<String>> {
        decode_json("action_steps", "waits_for", &self.id, &self.waits_for)
    }
}

/// Those of steps `ids` still pending, read by their keys alone (a status in the statement
/// would have it planned over every pending step).
pub(crate) async fn pending_steps(
    conn: &impl ConnectionTrait,
    ids: &[String],
) -> Result<Vec<StepRow>> {
    let select = format!("SELECT {STEP_COLUMNS} FROM action_steps");
    let steps: Vec<StepRow> = by_ids(conn, &select, "id", ids).await?;
    Ok(steps
        .into_iter()
        .filter(|s| s.status == StepStatus::Pending)
        .collect())
}

/// Moves a step to `status` with `error` (why it ended, if it did); a step that ends gets its
/// finish time.
pub(crate) async fn set_step(
    conn: &impl ConnectionTrait,
    step_id: &str,
    status: StepStatus,
    error: &str,
    now: EpochMs,
) -> Result<()> {
    let finished = matches!(
        status,
        StepStatus::Succeeded | StepStatus::Failed | StepStatus::Canceled | StepStatus::Kept
    )
    .then_some(now);
    exec(
        conn,
        "UPDATE action_steps SET status = $1, error = $2, finished_at = $3 WHERE id = $4",
        [status.into(), error.into(), finished.into(), step_id.into()],
    )
    .await?;
    Ok(())
}

/// The steps of an action run, in order.
pub async fn steps(conn: &impl ConnectionTrait, run_id: &str) -> Result<Vec<StepRow>> {
    query_all(
        conn,
        &format!(
            "SELECT {STEP_COLUMNS} FROM action_steps WHERE action_run_id = $1 ORDER BY step_order"
        ),
        [run_id.into()],
    )
    .await
}

pub(crate) async fn load_action(
    conn: &impl ConnectionTrait,
    entity: &EntityRow,
    action: &str,
) -> Result<(KindDef, ActionDef)> {
    let kind = catalog::kind(conn, &entity.kind).await?;
    let def = kind.action(action).cloned().ok_or_else(|| {
        Error::invalid(
            "action",
            format!("kind {} declares no action `{action}`", entity.kind),
        )
    })?;
    Ok((kind, def))
}

/// Validates parameters against the action's definitions and fills defaults.
pub fn check_parameters(
    action: &ActionDef,
    given: &Map<String, Json>,
) -> Result<Map<String, Json>> {
    let mut v = ebb_common::error::Violations::new();
    for name in given.keys() {
        if !action.parameters.iter().any(|p| &p.name == name) {
            v.add(
                format!("parameters.{name}"),
                format!("action {} takes no parameter `{name}`", action.name),
            );
        }
    }
    let mut out = Map::new();
    for p in &action.parameters {
        match given.get(&p.name).or(p.default.as_ref()) {
            Some(value) => {
                if let Err(e) = catalog::check_param(p, value) {
                    v.add(format!("parameters.{}", p.name), e);
                }
                let value = match (p.ty, value.as_f64()) {
                    (catalog::ParamType::Integer, Some(f)) if value.as_i64().is_none() => {
                        json!(f as i64)
                    }
                    _ => value.clone(),
                };
                out.insert(p.name.clone(), value);
            }
            None if p.required => v.add(format!("parameters.{}", p.name), "is required"),
            None => {}
        }
    }
    v.finish()?;
    Ok(out)
}

pub(crate) fn check_conditions(action: &ActionDef, entity: &EntityRow) -> Result<()> {
    let attributes = entity.attributes()?;
    for text in &action.conditions {
        let condition = Condition::parse(text).map_err(Error::Internal)?;
        if !condition.holds(&entity.state, &attributes) {
            return Err(Error::precondition(format!(
                "condition `{text}` does not hold for {} {}: its state is {}",
                entity.kind, entity.name, entity.state
            )));
        }
    }
    Ok(())
}

/// Filters of an action-run list.
#[derive(Debug, Clone, Default)]
pub struct ActionRunFilter {
    pub organization_id: String,
    pub entity_id: Option<String>,
    pub status: Option<ActionRunStatus>,
}

/// One page of action runs, newest first, before `before` (created_at, id).
pub async fn list(
    conn: &impl ConnectionTrait,
    filter: &ActionRunFilter,
    before: Option<(i64, String)>,
    limit: u64,
) -> Result<Vec<ActionRunRow>> {
    let mut q = Query::select();
    q.expr(Expr::cust(ACTION_RUN_COLUMNS))
        .from("action_runs")
        .and_where(Expr::col("organization_id").eq(filter.organization_id.as_str()));
    if let Some(e) = &filter.entity_id {
        q.and_where(Expr::col("entity_id").eq(e.as_str()));
    }
    if let Some(s) = filter.status {
        q.and_where(Expr::col("status").eq(s.as_str()));
    }
    if let Some(position) = before {
        q.cond_where(keyset("created_at", "id", position, Order::Desc));
    }
    q.order_by("created_at", Order::Desc)
        .order_by("id", Order::Desc)
        .limit(limit);
    select_all(conn, &q).await
}
