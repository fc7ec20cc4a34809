//! Action runs: validate conditions and parameters, plan the cascade leaves first, move the
//! entity and its edges, and walk the steps — a step starts only when every step that depends
//! on it has succeeded (DESIGN "Deprovisioning", rules 2–5 and 9).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use ebb_common::time::{EpochMs, rfc3339};
use ebb_common::{Error, Result};
use hmac::{Hmac, Mac};
use sea_orm::{ConnectionTrait, DatabaseBackend, FromQueryResult, Value};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};
use sha2::Sha256;

use crate::catalog::{self, ActionDef, Condition, KindDef, TriggerDef};
use crate::entities::{self, ENTITY_COLUMNS, EntityRow, RELATIONSHIP_COLUMNS, RelationshipRow};
use crate::outbox::{self, NewEvent};
use crate::runs::{self, NewRun};
use crate::schedule;
use crate::sql::{exec, query_all, query_one};

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

/// One entity of a plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanNode {
    pub order: i32,
    pub entity_id: String,
    pub kind: String,
    pub name: String,
    /// Entities whose steps must succeed first.
    pub waits_for: Vec<String>,
}

/// The stored plan of an action run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Plan {
    pub nodes: Vec<PlanNode>,
    pub relationships: Vec<String>,
}

/// An entity as a plan shows it.
#[derive(Debug, Clone, FromQueryResult)]
struct Member {
    id: String,
    kind: String,
    name: String,
}

/// Columns of [`ActionRunRow`].
pub const ACTION_RUN_COLUMNS: &str = "id, organization_id, entity_id, action, parameters, plan, status, actor, error, \
    scheduled_action_id, created_at, finished_at";

/// An action run.
#[derive(Debug, Clone, FromQueryResult)]
pub struct ActionRunRow {
    pub id: String,
    pub organization_id: String,
    pub entity_id: String,
    pub action: String,
    pub parameters: String,
    pub plan: String,
    pub status: String,
    pub actor: String,
    pub error: String,
    pub scheduled_action_id: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

impl ActionRunRow {
    /// The stored plan.
    pub fn plan(&self) -> Plan {
        serde_json::from_str(&self.plan).unwrap_or_default()
    }

    /// The stored parameters.
    pub fn parameters(&self) -> Map<String, Json> {
        serde_json::from_str(&self.parameters).unwrap_or_default()
    }
}

/// Columns of [`StepRow`].
pub const STEP_COLUMNS: &str = "id, action_run_id, step_order, entity_id, waits_for, trigger_type, status, run_id, \
    attempt, error, started_at, finished_at, deadline_at";

/// A step of an action run.
#[derive(Debug, Clone, FromQueryResult)]
pub struct StepRow {
    pub id: String,
    pub action_run_id: String,
    pub step_order: i32,
    pub entity_id: String,
    pub waits_for: String,
    pub trigger_type: String,
    pub status: String,
    pub run_id: Option<String>,
    pub attempt: i32,
    pub error: String,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub deadline_at: Option<i64>,
}

impl StepRow {
    /// Step ids that must succeed before this one starts.
    pub fn waits_for(&self) -> Vec<String> {
        serde_json::from_str(&self.waits_for).unwrap_or_default()
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

fn check_conditions(action: &ActionDef, entity: &EntityRow) -> Result<()> {
    let attributes = entity.attributes();
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

fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Computes the plan from `root` over edges of the cascaded types that are not yet removed:
/// the entity and everything reachable, ordered leaves first; a cycle is refused with its path.
pub async fn plan(
    conn: &impl ConnectionTrait,
    root: &EntityRow,
    action: &ActionDef,
) -> Result<(Plan, Vec<RelationshipRow>)> {
    let started = std::time::Instant::now();
    let types: Vec<String> = action
        .cascade_rules
        .iter()
        .map(|r| r.relationship_type.clone())
        .collect();
    // Only what a plan shows of each entity: its kind and name.
    let mut entities: BTreeMap<String, Member> = BTreeMap::from([(
        root.id.clone(),
        Member {
            id: root.id.clone(),
            kind: root.kind.clone(),
            name: root.name.clone(),
        },
    )]);
    let mut edges: Vec<RelationshipRow> = Vec::new();
    if !types.is_empty() {
        // Everything reachable over live edges of the cascaded types, in the database: one
        // recursive walk (UNION stops at a cycle), then the edges and entities it reached.
        let type_list = placeholders(2, types.len());
        let reach = format!(
            "WITH RECURSIVE reach (id) AS (SELECT CAST($1 AS TEXT) UNION \
             SELECT r.to_entity_id FROM relationships r JOIN reach ON r.from_entity_id = reach.id \
             WHERE r.type IN ({type_list}) AND r.state <> 'removed')"
        );
        let mut values: Vec<Value> = vec![root.id.clone().into()];
        values.extend(types.iter().map(|t| Value::from(t.clone())));
        edges = query_all(
            conn,
            &format!(
                "{reach} SELECT {RELATIONSHIP_COLUMNS} FROM relationships \
                 WHERE from_entity_id IN (SELECT id FROM reach) AND type IN ({type_list}) \
                 AND state <> 'removed'"
            ),
            values.clone(),
        )
        .await?;
        let reached: Vec<Member> = query_all(
            conn,
            &format!(
                "{reach} SELECT id, kind, name FROM entities WHERE id IN (SELECT id FROM reach)"
            ),
            values,
        )
        .await?;
        entities.extend(reached.into_iter().map(|e| (e.id.clone(), e)));
    }
    // Edges M -> N: M depends on N, so N's step waits for M's.
    let mut waits: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut outgoing: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in &edges {
        waits
            .entry(e.to_entity_id.as_str())
            .or_default()
            .push(e.from_entity_id.as_str());
        outgoing
            .entry(e.from_entity_id.as_str())
            .or_default()
            .push(e.to_entity_id.as_str());
    }
    if let Some(cycle) = find_cycle(&root.id, &outgoing) {
        let names: Vec<String> = cycle
            .iter()
            .map(|id| {
                entities
                    .get(*id)
                    .map(|e| format!("{} {}", e.kind, e.name))
                    .unwrap_or_else(|| (*id).to_owned())
            })
            .collect();
        return Err(Error::precondition(format!(
            "the relationships form a cycle: {}",
            names.join(" -> ")
        )));
    }
    // Kahn's algorithm: an entity comes after every entity that depends on it.
    let mut indegree: HashMap<&str, usize> = entities.keys().map(|k| (k.as_str(), 0)).collect();
    for e in &edges {
        *indegree.entry(e.to_entity_id.as_str()).or_default() += 1;
    }
    let mut ready: VecDeque<&str> = {
        let mut r: Vec<&str> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(k, _)| *k)
            .collect();
        r.sort_by_key(|id| (*id != root.id.as_str(), *id));
        r.into()
    };
    let mut nodes = Vec::new();
    while let Some(id) = ready.pop_front() {
        let e = &entities[id];
        let mut waits_for: Vec<String> = waits
            .get(id)
            .map(|v| v.iter().map(|s| (*s).to_owned()).collect())
            .unwrap_or_default();
        waits_for.sort();
        waits_for.dedup();
        nodes.push(PlanNode {
            order: nodes.len() as i32,
            entity_id: id.to_owned(),
            kind: e.kind.clone(),
            name: e.name.clone(),
            waits_for,
        });
        let mut unlocked = Vec::new();
        for to in outgoing.get(id).cloned().unwrap_or_default() {
            if let Some(d) = indegree.get_mut(to) {
                *d -= 1;
                if *d == 0 {
                    unlocked.push(to);
                }
            }
        }
        unlocked.sort_unstable();
        ready.extend(unlocked);
    }
    tracing::debug!(
        entities = entities.len(),
        edges = edges.len(),
        ms = started.elapsed().as_millis() as u64,
        "plan computed"
    );
    let plan = Plan {
        nodes,
        relationships: edges.iter().map(|e| e.id.clone()).collect(),
    };
    Ok((plan, edges))
}

fn find_cycle<'a>(
    root: &'a str,
    outgoing: &HashMap<&'a str, Vec<&'a str>>,
) -> Option<Vec<&'a str>> {
    // Iterative depth-first search keeping the current path.
    let mut state: HashMap<&str, u8> = HashMap::new(); // 1 = on path, 2 = done
    let mut path: Vec<&str> = vec![root];
    let mut iters: Vec<usize> = vec![0];
    state.insert(root, 1);
    while let Some(&node) = path.last() {
        let i = iters.last_mut().expect("iterator per node");
        let next = outgoing.get(node).and_then(|v| v.get(*i)).copied();
        *i += 1;
        match next {
            Some(n) => match state.get(n) {
                Some(1) => {
                    let start = path.iter().position(|p| *p == n).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(n);
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    state.insert(n, 1);
                    path.push(n);
                    iters.push(0);
                }
            },
            None => {
                state.insert(node, 2);
                path.pop();
                iters.pop();
            }
        }
    }
    None
}

/// What a trigger answers.
pub struct Triggered {
    pub run: Option<ActionRunRow>,
    pub plan: Plan,
    pub queued_runs: bool,
}

async fn load_action(
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

/// Triggers `action` on an entity (rules 2 and 3).
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
    let lock = match conn.get_database_backend() {
        DatabaseBackend::Postgres => " FOR UPDATE",
        _ => "",
    };
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
    if dry_run {
        return Ok(Triggered {
            run: None,
            plan,
            queued_runs: false,
        });
    }
    let id = uuid::Uuid::now_v7().to_string();
    let n = exec(
        conn,
        "INSERT INTO action_runs (id, organization_id, entity_id, action, parameters, plan, status, actor, scheduled_action_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, $8, $9) ON CONFLICT DO NOTHING",
        [
            id.clone().into(),
            entity.organization_id.clone().into(),
            entity.id.clone().into(),
            action.into(),
            Json::Object(parameters.clone()).to_string().into(),
            serde_json::to_string(&plan).unwrap_or_default().into(),
            actor.into(),
            scheduled_action_id.map(str::to_owned).into(),
            now.into(),
        ],
    )
    .await?;
    if n == 0 {
        return Err(Error::precondition(format!(
            "{} {} already has a running action",
            entity.kind, entity.name
        )));
    }
    let step_ids: HashMap<&str, String> = plan
        .nodes
        .iter()
        .map(|n| (n.entity_id.as_str(), uuid::Uuid::now_v7().to_string()))
        .collect();
    for node in &plan.nodes {
        let waits: Vec<&String> = node
            .waits_for
            .iter()
            .filter_map(|e| step_ids.get(e.as_str()))
            .collect();
        exec(
            conn,
            "INSERT INTO action_steps (id, action_run_id, step_order, entity_id, waits_for, trigger_type, status) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending')",
            [
                step_ids[node.entity_id.as_str()].clone().into(),
                id.clone().into(),
                node.order.into(),
                node.entity_id.clone().into(),
                json!(waits).to_string().into(),
                def.trigger.name().into(),
            ],
        )
        .await?;
    }
    outbox::write(
        conn,
        vec![NewEvent::new(&entity.organization_id, "action_run.started", "action_run", &id, actor, json!({
            "action": action, "entity_id": entity.id, "entity_kind": entity.kind, "entity_name": entity.name,
            "parameters": parameters, "steps": plan.nodes.len(), "scheduled_action_id": scheduled_action_id,
        }))],
        now,
    )
    .await?;
    entities::transition_entity(conn, &entity, &def.on_trigger, &id, actor, now).await?;
    for edge in &edges {
        entities::transition_relationship(conn, edge, "removing", &id, actor, now).await?;
    }
    let queued_runs = advance(conn, engine, &id, actor, now).await?;
    Ok(Triggered {
        run: Some(get_action_run(conn, &id).await?),
        plan,
        queued_runs,
    })
}

/// Starts every step whose dependents all succeeded, and finishes the run when all steps did
/// (or one failed). Returns whether destroy runs were queued.
pub async fn advance(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    run_id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<bool> {
    let mut queued = false;
    loop {
        let run = get_action_run(conn, run_id).await?;
        if run.status != "running" {
            return Ok(queued);
        }
        let all = steps(conn, run_id).await?;
        if let Some(failed) = all.iter().find(|s| s.status == "failed") {
            finish(
                conn,
                &run,
                false,
                &format!(
                    "step for entity {} failed: {}",
                    failed.entity_id, failed.error
                ),
                actor,
                now,
            )
            .await?;
            return Ok(queued);
        }
        if all.iter().all(|s| s.status == "succeeded") {
            finish(conn, &run, true, "", actor, now).await?;
            return Ok(queued);
        }
        let done: BTreeSet<&str> = all
            .iter()
            .filter(|s| s.status == "succeeded")
            .map(|s| s.id.as_str())
            .collect();
        let ready: Vec<&StepRow> = all
            .iter()
            .filter(|s| {
                s.status == "pending" && s.waits_for().iter().all(|w| done.contains(w.as_str()))
            })
            .collect();
        if ready.is_empty() {
            return Ok(queued);
        }
        // The trigger is the action's; read it once for every step started in this round.
        let trigger = load_action(
            conn,
            &entities::get_entity(conn, &run.entity_id).await?,
            &run.action,
        )
        .await?
        .1
        .trigger;
        let mut finished_any = false;
        for step in ready {
            match start_step(conn, engine, &run, &trigger, step, actor, now).await? {
                Started::Running { queued_run } => queued |= queued_run,
                Started::Finished => finished_any = true,
            }
        }
        if !finished_any {
            return Ok(queued);
        }
    }
}

enum Started {
    Running { queued_run: bool },
    Finished,
}

async fn set_step(
    conn: &impl ConnectionTrait,
    step_id: &str,
    status: &str,
    error: &str,
    now: EpochMs,
) -> Result<()> {
    let finished = matches!(status, "succeeded" | "failed" | "canceled").then_some(now);
    exec(
        conn,
        "UPDATE action_steps SET status = $1, error = $2, finished_at = $3 WHERE id = $4",
        [status.into(), error.into(), finished.into(), step_id.into()],
    )
    .await?;
    Ok(())
}

async fn start_step(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    run: &ActionRunRow,
    trigger: &TriggerDef,
    step: &StepRow,
    actor: &str,
    now: EpochMs,
) -> Result<Started> {
    let entity = entities::get_entity(conn, &step.entity_id).await?;
    let deadline = now.saturating_add(engine.step_timeout_ms);
    exec(
        conn,
        "UPDATE action_steps SET status = 'running', started_at = $1, deadline_at = $2, attempt = attempt + 1, error = '', \
         finished_at = NULL, run_id = NULL WHERE id = $3",
        [now.into(), deadline.into(), step.id.clone().into()],
    )
    .await?;
    match (trigger, &entity.workspace_id) {
        (TriggerDef::Noop, _) => {
            set_step(conn, &step.id, "succeeded", "", now).await?;
            Ok(Started::Finished)
        }
        (TriggerDef::DestroyRun, None) => {
            // Nothing materializes this entity: there is nothing to destroy.
            set_step(conn, &step.id, "succeeded", "", now).await?;
            Ok(Started::Finished)
        }
        (TriggerDef::DestroyRun, Some(workspace_id)) => {
            let ws = crate::workspaces::get_workspace(conn, workspace_id).await?;
            let new = NewRun {
                workspace_id,
                is_destroy: true,
                auto_apply: true,
                source: "deprovision",
                fire_due_at: None,
                message: &format!("{} {}", run.action, entity.name),
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
                    exec(
                        conn,
                        "UPDATE action_steps SET run_id = $1 WHERE id = $2",
                        [run_id.clone().into(), step.id.clone().into()],
                    )
                    .await?;
                    outbox::write(
                        conn,
                        vec![NewEvent::new(&run.organization_id, "run.queued", "run", &run_id, actor, json!({
                            "workspace_id": workspace_id, "is_destroy": true, "source": "deprovision", "action_run_id": run.id,
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
                        "failed",
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

async fn finish(
    conn: &impl ConnectionTrait,
    run: &ActionRunRow,
    succeeded: bool,
    error: &str,
    actor: &str,
    now: EpochMs,
) -> Result<()> {
    let status = if succeeded { "succeeded" } else { "failed" };
    exec(
        conn,
        "UPDATE action_runs SET status = $1, error = $2, finished_at = $3 WHERE id = $4 AND status = 'running'",
        [status.into(), error.into(), now.into(), run.id.clone().into()],
    )
    .await?;
    let root = entities::get_entity(conn, &run.entity_id).await?;
    let (_, def) = load_action(conn, &root, &run.action).await?;
    let plan = run.plan();
    if succeeded {
        entities::transition_entity(conn, &root, &def.on_success, &run.id, actor, now).await?;
        for node in plan.nodes.iter().filter(|n| n.entity_id != root.id) {
            let e = entities::get_entity(conn, &node.entity_id).await?;
            if let Ok(kind) = catalog::kind(conn, &e.kind).await
                && kind.states.contains(&def.on_success)
            {
                entities::transition_entity(conn, &e, &def.on_success, &run.id, actor, now).await?;
            }
        }
        let grace = run
            .parameters()
            .get("gracePeriodSeconds")
            .and_then(Json::as_i64)
            .unwrap_or(0);
        for rel_id in &plan.relationships {
            let rel = entities::get_relationship(conn, rel_id).await?;
            if rel.state != "removing" {
                continue;
            }
            if grace > 0 {
                entities::schedule_deletion(conn, &rel, grace, actor, now).await?;
            } else {
                entities::transition_relationship(conn, &rel, "removed", &run.id, actor, now)
                    .await?;
            }
        }
    } else {
        // Rule 5: back to onFailure; edges stay `removing` for investigation.
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
            }),
        )],
        now,
    )
    .await
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
        status: String,
    }
    let step: Option<StepOf> = query_one(
        conn,
        "SELECT id, action_run_id, status FROM action_steps WHERE run_id = $1",
        [run.run_id.into()],
    )
    .await?;
    let Some(step) = step else { return Ok(false) };
    if step.status != "running" {
        return Ok(false);
    }
    let (status, error) = if run.succeeded {
        ("succeeded", String::new())
    } else {
        (
            "failed",
            format!("destroy run {} ended {}", run.run_id, run.status),
        )
    };
    set_step(conn, &step.id, status, &error, now).await?;
    advance(conn, engine, &step.action_run_id, run.actor, now).await
}

/// Resumes a failed action run at its failed steps (rule 5); finished steps stay finished.
pub async fn retry(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<(ActionRunRow, bool)> {
    let run = get_action_run(conn, id).await?;
    if run.status != "failed" {
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
/// to stop, and the entity reverts to its onFailure state.
pub async fn cancel(
    conn: &impl ConnectionTrait,
    policy: &runs::Policy,
    id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<ActionRunRow> {
    let run = get_action_run(conn, id).await?;
    if run.status != "running" {
        return Err(Error::precondition(format!(
            "action run {id} is already {}",
            run.status
        )));
    }
    exec(
        conn,
        "UPDATE action_runs SET status = 'canceled', error = 'canceled', finished_at = $1 WHERE id = $2",
        [now.into(), id.into()],
    )
    .await?;
    for step in steps(conn, id).await? {
        if step.status == "running" || step.status == "pending" {
            set_step(
                conn,
                &step.id,
                "canceled",
                "canceled with the action run",
                now,
            )
            .await?;
            if let Some(run_id) = &step.run_id {
                let r = runs::get_run(conn, run_id).await?;
                if r.is_active() {
                    runs::cancel_run(conn, run_id, actor, now, policy).await?;
                }
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
    get_action_run(conn, id).await
}

type HmacSha256 = Hmac<Sha256>;

/// The callback token of one attempt of one step: `EXPIRY.HEX(HMAC-SHA256(step ‖ attempt ‖
/// expiry))`, so it is bound to that step and that time.
pub fn callback_token(secret: &[u8], step_id: &str, attempt: i32, expires_at: EpochMs) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(format!("{step_id}:{attempt}:{expires_at}").as_bytes());
    format!("{expires_at}.{}", hex::encode(mac.finalize().into_bytes()))
}

fn verify_token(
    secret: &[u8],
    step_id: &str,
    attempt: i32,
    token: &str,
    now: EpochMs,
) -> Result<()> {
    let bad = || Error::PermissionDenied("the callback token is not valid for this step".into());
    let (expiry, mac_hex) = token.split_once('.').ok_or_else(bad)?;
    let expires_at: EpochMs = expiry.parse().map_err(|_| bad())?;
    let given = hex::decode(mac_hex).map_err(|_| bad())?;
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(format!("{step_id}:{attempt}:{expires_at}").as_bytes());
    mac.verify_slice(&given).map_err(|_| bad())?;
    if expires_at < now {
        return Err(Error::precondition(format!(
            "the callback token expired at {}",
            rfc3339(expires_at)
        )));
    }
    Ok(())
}

/// The callback of a webhook step.
pub async fn complete_step(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    step_id: &str,
    token: &str,
    succeeded: bool,
    message: &str,
    now: EpochMs,
) -> Result<(ActionRunRow, bool)> {
    let step: StepRow = query_one(
        conn,
        &format!("SELECT {STEP_COLUMNS} FROM action_steps WHERE id = $1"),
        [step_id.into()],
    )
    .await?
    .ok_or_else(|| Error::not_found("action step", step_id))?;
    verify_token(&engine.callback_secret, step_id, step.attempt, token, now)?;
    if step.trigger_type != "webhook" || step.status != "running" {
        return Err(Error::precondition(format!(
            "step {step_id} is {} and does not wait for a callback",
            step.status
        )));
    }
    let (status, error) = if succeeded {
        ("succeeded", String::new())
    } else {
        (
            "failed",
            format!("the external system reported failure: {message}"),
        )
    };
    set_step(conn, step_id, status, &error, now).await?;
    let queued = advance(conn, engine, &step.action_run_id, "webhook", now).await?;
    Ok((get_action_run(conn, &step.action_run_id).await?, queued))
}

/// Fails running steps past their deadline (rule 8).
pub async fn time_out_steps(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    policy: &runs::Policy,
    limit: u64,
    now: EpochMs,
) -> Result<u32> {
    let skip = match conn.get_database_backend() {
        DatabaseBackend::Postgres => " FOR UPDATE SKIP LOCKED",
        _ => "",
    };
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
            "failed",
            &format!("timed out after {minutes} minutes"),
            now,
        )
        .await?;
        if let Some(run_id) = &step.run_id {
            let r = runs::get_run(conn, run_id).await?;
            if r.is_active() {
                runs::cancel_run(conn, run_id, "scheduler", now, policy).await?;
            }
        }
        advance(conn, engine, &step.action_run_id, "scheduler", now).await?;
    }
    Ok(late.len() as u32)
}

// --- scheduled actions (rule 9) --------------------------------------------------------------

/// Columns of [`ScheduledRow`].
pub const SCHEDULED_COLUMNS: &str = "id, organization_id, entity_id, action, parameters, scheduled_at, status, action_run_id, error, \
    next_reminder_at, shard_key, created_at";

/// A scheduled action.
#[derive(Debug, Clone, FromQueryResult)]
pub struct ScheduledRow {
    pub id: String,
    pub organization_id: String,
    pub entity_id: String,
    pub action: String,
    pub parameters: String,
    pub scheduled_at: i64,
    pub status: String,
    pub action_run_id: Option<String>,
    pub error: String,
    pub next_reminder_at: Option<i64>,
    pub shard_key: i32,
    pub created_at: i64,
}

/// A scheduled action by id.
pub async fn get_scheduled(conn: &impl ConnectionTrait, id: &str) -> Result<ScheduledRow> {
    query_one(
        conn,
        &format!("SELECT {SCHEDULED_COLUMNS} FROM scheduled_actions WHERE id = $1"),
        [id.into()],
    )
    .await?
    .ok_or_else(|| Error::not_found("scheduled action", id))
}

/// Schedules an action; its parameters are checked now, its conditions when it fires.
pub async fn schedule_action(
    conn: &impl ConnectionTrait,
    entity_id: &str,
    action: &str,
    parameters: &Map<String, Json>,
    at: EpochMs,
    actor: &str,
    now: EpochMs,
) -> Result<ScheduledRow> {
    if at <= now {
        return Err(Error::invalid("scheduled_time", "must be in the future"));
    }
    let entity = entities::get_entity(conn, entity_id).await?;
    let (_, def) = load_action(conn, &entity, action).await?;
    let parameters = check_parameters(&def, parameters)?;
    let org = crate::workspaces::get_org(conn, &entity.organization_id).await?;
    let id = uuid::Uuid::now_v7().to_string();
    let shard_key = (uuid::Uuid::new_v4().as_u128() % (1 << 30)) as i32;
    exec(
        conn,
        "INSERT INTO scheduled_actions (id, organization_id, entity_id, action, parameters, scheduled_at, status, \
         next_reminder_at, shard_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9)",
        [
            id.clone().into(),
            entity.organization_id.clone().into(),
            entity_id.into(),
            action.into(),
            Json::Object(parameters.clone()).to_string().into(),
            at.into(),
            schedule::next_reminder_at(Some(at), &org.lead_times(), now).into(),
            shard_key.into(),
            now.into(),
        ],
    )
    .await?;
    outbox::write(
        conn,
        vec![NewEvent::new(&entity.organization_id, "scheduled_action.created", "scheduled_action", &id, actor, json!({
            "action": action, "entity_id": entity_id, "scheduled_at": rfc3339(at), "parameters": parameters,
        }))],
        now,
    )
    .await?;
    get_scheduled(conn, &id).await
}

/// Cancels a pending scheduled action.
pub async fn cancel_scheduled(
    conn: &impl ConnectionTrait,
    id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<ScheduledRow> {
    let row = get_scheduled(conn, id).await?;
    let n = exec(
        conn,
        "UPDATE scheduled_actions SET status = 'canceled', next_reminder_at = NULL WHERE id = $1 AND status = 'pending'",
        [id.into()],
    )
    .await?;
    if n == 0 {
        return Err(Error::precondition(format!(
            "scheduled action {id} is already {}",
            row.status
        )));
    }
    outbox::write(
        conn,
        vec![NewEvent::new(
            &row.organization_id,
            "scheduled_action.canceled",
            "scheduled_action",
            id,
            actor,
            json!({}),
        )],
        now,
    )
    .await?;
    get_scheduled(conn, id).await
}

/// Due scheduled actions of one shard, after `after` (due time, id).
pub async fn find_due_scheduled(
    conn: &impl ConnectionTrait,
    shard: i32,
    shard_count: i32,
    limit: u64,
    after: Option<(EpochMs, String)>,
    now: EpochMs,
) -> Result<Vec<(String, EpochMs)>> {
    #[derive(FromQueryResult)]
    struct Due {
        id: String,
        scheduled_at: i64,
    }
    let (a_due, a_id) = after.unwrap_or((i64::MIN, String::new()));
    let rows: Vec<Due> = query_all(
        conn,
        &format!(
            "SELECT id, scheduled_at FROM scheduled_actions WHERE status = 'pending' AND scheduled_at <= $1 \
             AND shard_key % $2 = $3 AND (scheduled_at > $4 OR (scheduled_at = $4 AND id > $5)) \
             ORDER BY scheduled_at, id LIMIT {limit}"
        ),
        [now.into(), shard_count.into(), shard.into(), a_due.into(), a_id.into()],
    )
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.scheduled_at)).collect())
}

/// What became of a scheduled action's fire key.
pub enum FireDecision {
    Fired { action_run_id: String },
    Stale(String),
    Failed(String),
}

/// Fires one scheduled action through the same trigger as an operator's, once: the action
/// run's unique `scheduled_action_id` is its fire key.
pub async fn fire_scheduled(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    id: &str,
    due: EpochMs,
    now: EpochMs,
) -> Result<(FireDecision, bool)> {
    let lock = match conn.get_database_backend() {
        DatabaseBackend::Postgres => " FOR UPDATE",
        _ => "",
    };
    let Some(row) = query_one::<ScheduledRow>(
        conn,
        &format!("SELECT {SCHEDULED_COLUMNS} FROM scheduled_actions WHERE id = $1{lock}"),
        [id.into()],
    )
    .await?
    else {
        return Ok((
            FireDecision::Stale("no such scheduled action".into()),
            false,
        ));
    };
    if row.status != "pending" || row.scheduled_at != due {
        return Ok((
            FireDecision::Stale(format!("the scheduled action is {}", row.status)),
            false,
        ));
    }
    let parameters: Map<String, Json> = serde_json::from_str(&row.parameters).unwrap_or_default();
    match trigger(
        conn,
        engine,
        &row.entity_id,
        &row.action,
        &parameters,
        false,
        Some(id),
        "scheduler",
        now,
    )
    .await
    {
        Ok(t) => {
            let run_id = t.run.map(|r| r.id).unwrap_or_default();
            exec(
                conn,
                "UPDATE scheduled_actions SET status = 'fired', action_run_id = $1, next_reminder_at = NULL WHERE id = $2",
                [run_id.clone().into(), id.into()],
            )
            .await?;
            Ok((
                FireDecision::Fired {
                    action_run_id: run_id,
                },
                t.queued_runs,
            ))
        }
        Err(
            e @ (Error::FailedPrecondition(_) | Error::InvalidArgument(_) | Error::NotFound { .. }),
        ) => {
            let reason = e.to_string();
            exec(
                conn,
                "UPDATE scheduled_actions SET status = 'failed', error = $1, next_reminder_at = NULL WHERE id = $2",
                [reason.clone().into(), id.into()],
            )
            .await?;
            outbox::write(
                conn,
                vec![NewEvent::new(
                    &row.organization_id,
                    "scheduled_action.failed",
                    "scheduled_action",
                    id,
                    "scheduler",
                    json!({
                        "action": row.action, "entity_id": row.entity_id, "reason": reason,
                    }),
                )],
                now,
            )
            .await?;
            Ok((FireDecision::Failed(reason), false))
        }
        Err(other) => Err(other),
    }
}

/// Sends the due reminders of scheduled actions in one shard, each lead time once.
pub async fn send_scheduled_reminders(
    conn: &impl ConnectionTrait,
    shard: i32,
    shard_count: i32,
    limit: u64,
    now: EpochMs,
) -> Result<u32> {
    let skip = match conn.get_database_backend() {
        DatabaseBackend::Postgres => " FOR UPDATE SKIP LOCKED",
        _ => "",
    };
    let due: Vec<ScheduledRow> = query_all(
        conn,
        &format!(
            "SELECT {SCHEDULED_COLUMNS} FROM scheduled_actions WHERE next_reminder_at <= $1 AND status = 'pending' \
             AND shard_key % $2 = $3 ORDER BY next_reminder_at LIMIT {limit}{skip}"
        ),
        [now.into(), shard_count.into(), shard.into()],
    )
    .await?;
    let mut sent = 0;
    let mut events = Vec::new();
    for row in due {
        let leads = crate::workspaces::get_org(conn, &row.organization_id)
            .await?
            .lead_times();
        if let Some(lead) = schedule::due_lead_time(row.scheduled_at, &leads, now) {
            let mut first = true;
            for l in std::iter::once(lead).chain(schedule::superseded(lead, &leads)) {
                let inserted = exec(
                    conn,
                    "INSERT INTO scheduled_action_reminders (scheduled_action_id, lead_ms, sent_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    [row.id.clone().into(), l.into(), now.into()],
                )
                .await?;
                if first && inserted == 1 {
                    sent += 1;
                    events.push(NewEvent::new(&row.organization_id, "scheduled_action.reminder", "scheduled_action", &row.id, "scheduler", json!({
                        "action": row.action, "entity_id": row.entity_id, "scheduled_at": rfc3339(row.scheduled_at),
                        "lead_time_ms": lead, "lead_time": ebb_common::time::human(lead),
                    })));
                }
                first = false;
            }
        }
        let next = leads
            .iter()
            .map(|l| row.scheduled_at - l)
            .filter(|t| *t > now)
            .min();
        exec(
            conn,
            "UPDATE scheduled_actions SET next_reminder_at = $1 WHERE id = $2",
            [next.into(), row.id.clone().into()],
        )
        .await?;
    }
    outbox::write(conn, events, now).await?;
    Ok(sent)
}
