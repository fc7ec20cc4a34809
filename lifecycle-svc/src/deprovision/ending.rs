//! How an action run ends: on success every entity it tore down takes the action's
//! `onSuccess` state and its edges are removed (or wait out the grace period); on failure the
//! root goes back to `onFailure` and the edges stay `removing` for investigation (DP-4, DP-5).
//! Either way the runs waiting on its upstreams are released. Set-based: one statement per
//! batch of entities or edges, whatever the size of the cascade.

use std::collections::HashMap;

use ebb_common::Result;
use ebb_common::time::EpochMs;
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::{Value as Json, json};

use crate::deprovision::action_runs::{ActionRunRow, load_action};
use crate::deprovision::catalog;
use crate::deprovision::entities::{ENTITY_COLUMNS, EntityRow};
use crate::deprovision::plan::{Plan, stored_plan};
use crate::deprovision::relationships::EdgeState;
use crate::deprovision::upstreams;
use crate::deprovision::{entities, relationships};
use crate::events::{NewEvent, outbox};
use crate::store::{CHUNK, exec, placeholders, query_all};

/// Locks the upstreams of `run`'s plan, then lists the other running action runs with a
/// pending step on one of them: those waiting for this run to end. Taking the locks first
/// means a gate deciding concurrently has committed before this run looks, or decides after
/// it, seeing this run ended.
pub(crate) async fn runs_waiting_on(
    conn: &impl ConnectionTrait,
    run: &ActionRunRow,
    plan: &Plan,
) -> Result<Vec<String>> {
    let mut upstream_ids: Vec<String> = plan
        .nodes
        .iter()
        .map(|n| &n.entity_id)
        .chain(plan.kept.iter().map(|k| &k.entity_id))
        .filter(|id| **id != run.entity_id)
        .cloned()
        .collect();
    upstream_ids.sort();
    upstream_ids.dedup();
    #[derive(FromQueryResult)]
    struct Waiting {
        action_run_id: String,
    }
    let mut waiting: Vec<String> = Vec::new();
    for chunk in upstream_ids.chunks(CHUNK) {
        upstreams::lock(conn, chunk).await?;
        let mut values: Vec<Value> = vec![run.id.clone().into()];
        values.extend(chunk.iter().map(|id| Value::from(id.clone())));
        let found: Vec<Waiting> = query_all(
            conn,
            &format!(
                "SELECT DISTINCT s.action_run_id FROM action_steps s \
                 JOIN action_runs a ON a.id = s.action_run_id \
                 WHERE a.status = 'running' AND s.status = 'pending' AND s.action_run_id <> $1 \
                 AND s.entity_id IN ({})",
                placeholders(2, chunk.len())
            ),
            values,
        )
        .await?;
        waiting.extend(found.into_iter().map(|w| w.action_run_id));
    }
    waiting.sort();
    waiting.dedup();
    Ok(waiting)
}

/// Ends a run; returns the other runs waiting on its upstreams, to advance next.
pub(crate) async fn finish(
    conn: &impl ConnectionTrait,
    run: &ActionRunRow,
    succeeded: bool,
    error: &str,
    actor: &str,
    now: EpochMs,
) -> Result<Vec<String>> {
    let plan = stored_plan(conn, &run.id).await?;
    let released = runs_waiting_on(conn, run, &plan).await?;
    let status = if succeeded { "succeeded" } else { "failed" };
    exec(
        conn,
        "UPDATE action_runs SET status = $1, error = $2, finished_at = $3 WHERE id = $4 AND status = 'running'",
        [status.into(), error.into(), now.into(), run.id.clone().into()],
    )
    .await?;
    let root = entities::get_entity(conn, &run.entity_id).await?;
    let (_, def) = load_action(conn, &root, &run.action).await?;
    if succeeded {
        entities::transition_entity(conn, &root, &def.on_success, &run.id, actor, now).await?;
        // Only what this run tore down: a step kept at the gate leaves its entity as it was.
        let torn_down: Vec<EntityRow> = query_all(
            conn,
            &format!(
                "SELECT {} FROM entities e JOIN action_steps s ON s.entity_id = e.id \
                 WHERE s.action_run_id = $1 AND s.status = 'succeeded' AND e.id <> $2 ORDER BY e.id",
                ENTITY_COLUMNS
                    .split(", ")
                    .map(|c| format!("e.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            [run.id.clone().into(), root.id.clone().into()],
        )
        .await?;
        // Each kind's states, read once.
        let mut takes_state: HashMap<String, bool> = HashMap::new();
        let mut moving = Vec::with_capacity(torn_down.len());
        for e in torn_down {
            let takes = match takes_state.get(&e.kind) {
                Some(t) => *t,
                None => {
                    let t = catalog::kind(conn, &e.kind)
                        .await
                        .is_ok_and(|k| k.states.contains(&def.on_success));
                    takes_state.insert(e.kind.clone(), t);
                    t
                }
            };
            if takes {
                moving.push(e);
            }
        }
        entities::transition_entities(conn, &moving, &def.on_success, &run.id, actor, now).await?;
        let grace = run
            .parameters()?
            .get("gracePeriodSeconds")
            .and_then(Json::as_i64)
            .unwrap_or(0);
        let removing: Vec<_> = relationships::get_relationships(conn, &plan.relationships)
            .await?
            .into_iter()
            .filter(|r| r.state == EdgeState::Removing)
            .collect();
        if grace > 0 {
            relationships::schedule_deletions(conn, &removing, grace, actor, now).await?;
        } else {
            relationships::transition_relationships(
                conn,
                &removing,
                EdgeState::Removed,
                &run.id,
                actor,
                now,
            )
            .await?;
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
