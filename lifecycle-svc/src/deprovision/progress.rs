//! How far an action run has come, kept by counters in the database (m0015) so that a step's
//! end touches only its neighbours, never the whole run: `waiting` counts the steps a step
//! waits for that are not done (succeeded or kept) — 0 is ready; `open_dependents` counts the
//! steps waiting for it that have not settled — a step settles when it is done and everything
//! waiting for it has settled; a run's `open_first_steps` counts its steps that wait for
//! nothing and have not settled — 0 is a run whose every step is done.
//!
//! Each counter is moved by one statement per batch of steps. Concurrent ends of sibling steps
//! meet on the row they both count down and take turns there, so the last one sees the count
//! reach 0: no end is lost between two transactions that each saw the other still running.

use std::collections::HashMap;

use ebb_common::Result;
use ebb_common::time::EpochMs;
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::json;

use crate::deprovision::action_runs::StepStatus;
use crate::deprovision::plan::Plan;
use crate::store::{CHUNK, exec, placeholders, query_all, query_one};

/// Inserts the steps of action run `run_id` for `plan`, with which waits for which and the
/// counters that follow. Returns the step id of each entity.
pub(crate) async fn insert_steps(
    conn: &impl ConnectionTrait,
    run_id: &str,
    plan: &Plan,
    trigger_type: &str,
) -> Result<HashMap<String, String>> {
    let step_ids: HashMap<String, String> = plan
        .nodes
        .iter()
        .map(|n| (n.entity_id.clone(), uuid::Uuid::now_v7().to_string()))
        .collect();
    let mut dependents: HashMap<&str, i32> = HashMap::new();
    let mut waits: Vec<(&str, &str)> = Vec::new();
    for node in &plan.nodes {
        for w in node.waits_for.iter().filter_map(|e| step_ids.get(e)) {
            *dependents.entry(w.as_str()).or_default() += 1;
            waits.push((step_ids[&node.entity_id].as_str(), w.as_str()));
        }
    }
    for chunk in plan.nodes.chunks(CHUNK) {
        let mut sql = String::from(
            "INSERT INTO action_steps (id, action_run_id, step_order, entity_id, waits_for, trigger_type, status, \
             waiting, open_dependents) VALUES ",
        );
        let mut values: Vec<Value> = vec![run_id.into(), trigger_type.into()];
        for (i, node) in chunk.iter().enumerate() {
            let id = &step_ids[&node.entity_id];
            let waits_for: Vec<&String> = node
                .waits_for
                .iter()
                .filter_map(|e| step_ids.get(e))
                .collect();
            let b = values.len();
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, $1, ${}, ${}, ${}, $2, 'pending', ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6
            ));
            values.extend([
                id.clone().into(),
                node.order.into(),
                node.entity_id.clone().into(),
                json!(waits_for).to_string().into(),
                (waits_for.len() as i32).into(),
                dependents.get(id.as_str()).copied().unwrap_or(0).into(),
            ]);
        }
        exec(conn, &sql, values).await?;
    }
    for chunk in waits.chunks(CHUNK) {
        let mut sql =
            String::from("INSERT INTO action_step_waits (step_id, waits_for_step_id) VALUES ");
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 2);
        for (i, (step, waits_for)) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("(${}, ${})", 2 * i + 1, 2 * i + 2));
            values.extend([(*step).into(), (*waits_for).into()]);
        }
        exec(conn, &sql, values).await?;
    }
    let first = plan.nodes.iter().filter(|n| n.waits_for.is_empty()).count() as i32;
    exec(
        conn,
        "UPDATE action_runs SET open_first_steps = $1 WHERE id = $2",
        [first.into(), run_id.into()],
    )
    .await?;
    Ok(step_ids)
}

/// What marking steps done led to.
#[derive(Debug, Default)]
pub(crate) struct Done {
    /// Steps whose every wait is now done: to start.
    pub ready: Vec<String>,
    /// Every step of the run is done.
    pub run_done: bool,
}

#[derive(FromQueryResult)]
struct Counted {
    id: String,
    count: i32,
    status: StepStatus,
    waits_for: String,
}

impl Counted {
    fn first(&self) -> bool {
        self.waits_for == "[]"
    }

    fn done(&self) -> bool {
        matches!(self.status, StepStatus::Succeeded | StepStatus::Kept)
    }
}

/// The two counters a step's end moves, each along one direction of `action_step_waits`.
#[derive(Clone, Copy)]
enum Counter {
    /// Of the steps waiting for the ended ones.
    Waiting,
    /// Of the steps the settled ones waited for.
    OpenDependents,
}

/// Counts down `counter` of the neighbours of steps `ids` by how many of them each has, one
/// statement per chunk; returns each neighbour with its new count.
async fn count_down(
    conn: &impl ConnectionTrait,
    counter: Counter,
    ids: &[String],
) -> Result<Vec<Counted>> {
    let (column, neighbour, by) = match counter {
        Counter::Waiting => ("waiting", "step_id", "waits_for_step_id"),
        Counter::OpenDependents => ("open_dependents", "waits_for_step_id", "step_id"),
    };
    let mut counted = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "UPDATE action_steps SET {column} = {column} - d.n FROM (SELECT {neighbour} AS id, count(*) AS n \
             FROM action_step_waits WHERE {by} IN ({}) GROUP BY {neighbour}) d WHERE action_steps.id = d.id \
             RETURNING action_steps.id, action_steps.{column} AS count, action_steps.status, action_steps.waits_for",
            placeholders(1, chunk.len())
        );
        let values = chunk.iter().map(|id| Value::from(id.clone()));
        counted.extend(query_all::<Counted>(conn, &sql, values).await?);
    }
    Ok(counted)
}

/// Marks pending or running steps `ids` of run `run_id` done (`Succeeded` clears their error;
/// `Kept` keeps the note its gate wrote) and moves the counters: the steps waiting for them
/// count down, what settles counts down its waits in turn, up to the run.
pub(crate) async fn mark_done(
    conn: &impl ConnectionTrait,
    run_id: &str,
    ids: &[String],
    status: StepStatus,
    now: EpochMs,
) -> Result<Done> {
    debug_assert!(matches!(status, StepStatus::Succeeded | StepStatus::Kept));
    let clear = if status == StepStatus::Succeeded {
        ", error = ''"
    } else {
        ""
    };
    let mut marked: Vec<Counted> = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        let mut values: Vec<Value> = vec![status.into(), now.into()];
        values.extend(chunk.iter().map(|id| Value::from(id.clone())));
        marked.extend(
            query_all::<Counted>(
                conn,
                &format!(
                    "UPDATE action_steps SET status = $1, finished_at = $2{clear} \
                     WHERE id IN ({}) AND status IN ('pending', 'running') \
                     RETURNING id, open_dependents AS count, status, waits_for",
                    placeholders(3, chunk.len())
                ),
                values,
            )
            .await?,
        );
    }
    let done: Vec<String> = marked.iter().map(|s| s.id.clone()).collect();
    // The steps waiting for these count them down; at 0 they are ready.
    let ready = count_down(conn, Counter::Waiting, &done)
        .await?
        .into_iter()
        .filter(|s| s.count == 0 && s.status == StepStatus::Pending)
        .map(|s| s.id)
        .collect();
    // Settling runs up: a done step nobody waits for (any more) settles, and counts down each
    // step it waited for.
    let mut firsts = 0;
    let mut settled: Vec<Counted> = marked.into_iter().filter(|s| s.count == 0).collect();
    while !settled.is_empty() {
        firsts += settled.iter().filter(|s| s.first()).count() as i32;
        let ids: Vec<String> = settled.into_iter().map(|s| s.id).collect();
        settled = count_down(conn, Counter::OpenDependents, &ids)
            .await?
            .into_iter()
            .filter(|s| s.count == 0 && s.done())
            .collect();
    }
    let mut run_done = false;
    if firsts > 0 {
        #[derive(FromQueryResult)]
        struct Open {
            open_first_steps: i32,
        }
        let open: Option<Open> = query_one(
            conn,
            "UPDATE action_runs SET open_first_steps = open_first_steps - $1 WHERE id = $2 \
             RETURNING open_first_steps",
            [firsts.into(), run_id.into()],
        )
        .await?;
        run_done = open.is_some_and(|o| o.open_first_steps == 0);
    }
    Ok(Done { ready, run_done })
}

#[cfg(test)]
mod tests {
    use sea_orm::DatabaseConnection;

    use super::*;
    use crate::deprovision::plan::PlanNode;
    use crate::testing::{self, number};

    async fn database() -> DatabaseConnection {
        let db = testing::database(None).await;
        db.execute_unprepared(&format!(
            "{} INSERT INTO action_runs (id, organization_id, entity_id, action, parameters, plan, status, actor, created_at) \
             VALUES ('run', 'org', 'root', 'A', '{{}}', '{{}}', 'running', 'test', 0);",
            testing::org_and_entities(&["root", "x", "y", "l", "m"])
        ))
        .await
        .expect("rows");
        db
    }

    fn node(order: i32, entity: &str, waits_for: &[&str]) -> PlanNode {
        PlanNode {
            order,
            entity_id: entity.into(),
            kind: "tenant".into(),
            name: entity.into(),
            waits_for: waits_for.iter().map(|w| (*w).to_owned()).collect(),
            shared_with: Vec::new(),
        }
    }

    /// A diamond with two first steps: `root` waits for `x` and `y`, `x` for `l` and `m`, `y`
    /// for `l`. Each end moves only its neighbours' counters; a step is ready once its every
    /// wait is done, and the run is done with its last step, once.
    #[tokio::test]
    async fn each_end_counts_down_its_neighbours_and_the_last_ends_the_run() {
        let db = database().await;
        let plan = Plan {
            nodes: vec![
                node(0, "l", &[]),
                node(1, "m", &[]),
                node(2, "x", &["l", "m"]),
                node(3, "y", &["l"]),
                node(4, "root", &["x", "y"]),
            ],
            ..Plan::default()
        };
        let ids = insert_steps(&db, "run", &plan, "noop")
            .await
            .expect("steps");
        let step = |e: &str| ids[e].clone();
        assert_eq!(
            number(&db, "SELECT count(*) FROM action_step_waits").await,
            5
        );
        assert_eq!(
            number(&db, "SELECT open_first_steps FROM action_runs").await,
            2
        );
        let done = |e: &str, status| {
            let db = &db;
            let id = step(e);
            async move { mark_done(db, "run", &[id], status, 1).await.expect("done") }
        };

        let d = done("l", StepStatus::Succeeded).await;
        assert_eq!(d.ready, [step("y")], "x still waits for m");
        assert!(!d.run_done);
        let d = done("m", StepStatus::Kept).await;
        assert_eq!(d.ready, [step("x")], "a kept step counts as done");
        let d = done("x", StepStatus::Succeeded).await;
        assert!(d.ready.is_empty(), "root still waits for y");
        // Marking a done step again moves nothing.
        let again = done("x", StepStatus::Succeeded).await;
        assert!(again.ready.is_empty() && !again.run_done);
        let d = done("y", StepStatus::Succeeded).await;
        assert_eq!(d.ready, [step("root")]);
        assert!(!d.run_done);
        let d = done("root", StepStatus::Succeeded).await;
        assert!(d.ready.is_empty());
        assert!(d.run_done, "the last step ends the run");
        assert_eq!(
            number(
                &db,
                "SELECT sum(waiting) + sum(open_dependents) FROM action_steps"
            )
            .await,
            0
        );
        assert_eq!(
            number(&db, "SELECT open_first_steps FROM action_runs").await,
            0
        );
    }
}
