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
//!
//! A step whose destroy run ended ([`Settle::NowOrQueued`]) counts down the steps it waited for
//! only if no other transaction holds their rows: siblings ending at once would otherwise wait
//! there for each other's commits, one at a time. The one that finds a row taken queues its
//! settling instead (`action_step_settles`, one row per step, kept by the database to once),
//! and [`settle_queued`] applies queued settlings in batches, one statement per level.

use std::collections::HashMap;

use ebb_common::Result;
use ebb_common::time::EpochMs;
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::json;

use crate::deprovision::action_runs::StepStatus;
use crate::deprovision::plan::Plan;
use crate::store::{CHUNK, by_ids, exec, placeholders, query_all, query_one, skip_locked};

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
    action_run_id: String,
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
             RETURNING action_steps.id, action_steps.action_run_id, action_steps.{column} AS count, \
             action_steps.status, action_steps.waits_for",
            placeholders(1, chunk.len())
        );
        let values = chunk.iter().map(|id| Value::from(id.clone()));
        counted.extend(query_all::<Counted>(conn, &sql, values).await?);
    }
    Ok(counted)
}

/// When a done step's settling moves the counters of the steps it waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// In the same transaction: steps started and ended together, the run's own turn.
    Now,
    /// In the same transaction unless another one holds a step it would count down; then
    /// queued for [`settle_queued`]. For a step that ended on its own, whose siblings may be
    /// ending in other transactions at the same time.
    NowOrQueued,
}

/// Marks pending or running steps `ids` of run `run_id` done (`Succeeded` clears their error;
/// `Kept` keeps the note its gate wrote) and moves the counters: the steps waiting for them
/// count down, and what settles counts down its waits in turn, up to the run — now, or what is
/// left of it queued for [`settle_queued`] (which then finds the run done).
pub(crate) async fn mark_done(
    conn: &impl ConnectionTrait,
    run_id: &str,
    ids: &[String],
    status: StepStatus,
    settle: Settle,
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
        let mut values: Vec<Value> = vec![status.into(), now.into(), run_id.into()];
        values.extend(chunk.iter().map(|id| Value::from(id.clone())));
        marked.extend(
            query_all::<Counted>(
                conn,
                &format!(
                    "UPDATE action_steps SET status = $1, finished_at = $2{clear} \
                     WHERE id IN ({}) AND action_run_id = $3 AND status IN ('pending', 'running') \
                     RETURNING id, action_run_id, open_dependents AS count, status, waits_for",
                    placeholders(4, chunk.len())
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
    // A done step nobody waits for (any more) settles.
    let settled: Vec<Counted> = marked.into_iter().filter(|s| s.count == 0).collect();
    let run_done = !propagate(conn, settled, settle, now).await?.is_empty();
    Ok(Done { ready, run_done })
}

/// Queues the settling of `settled`.
async fn queue(conn: &impl ConnectionTrait, settled: &[Counted], now: EpochMs) -> Result<()> {
    for chunk in settled.chunks(CHUNK) {
        let mut values: Vec<Value> = vec![now.into()];
        let mut rows = Vec::with_capacity(chunk.len());
        for s in chunk {
            rows.push(format!(
                "(${}, ${}, $1)",
                values.len() + 1,
                values.len() + 2
            ));
            values.extend([s.id.clone().into(), s.action_run_id.clone().into()]);
        }
        exec(
            conn,
            &format!(
                "INSERT INTO action_step_settles (step_id, action_run_id, queued_at) VALUES {}",
                rows.join(", ")
            ),
            values,
        )
        .await?;
    }
    Ok(())
}

/// Settles `settled` and what follows, level by level: each counts down the steps it waited
/// for, and those done with nothing left waiting for them settle in turn. A settled first step
/// counts its run down. With [`Settle::NowOrQueued`], a level whose steps to count down are
/// not all free is queued instead, with what would follow it. Returns the runs whose every
/// step is now done.
async fn propagate(
    conn: &impl ConnectionTrait,
    mut settled: Vec<Counted>,
    settle: Settle,
    now: EpochMs,
) -> Result<Vec<String>> {
    let mut firsts: HashMap<String, i32> = HashMap::new();
    while !settled.is_empty() {
        if settle == Settle::NowOrQueued && !free_to_count_down(conn, &settled).await? {
            queue(conn, &settled, now).await?;
            break;
        }
        for s in settled.iter().filter(|s| s.first()) {
            *firsts.entry(s.action_run_id.clone()).or_default() += 1;
        }
        let ids: Vec<String> = settled.into_iter().map(|s| s.id).collect();
        settled = count_down(conn, Counter::OpenDependents, &ids)
            .await?
            .into_iter()
            .filter(|s| s.count == 0 && s.done())
            .collect();
    }
    #[derive(FromQueryResult)]
    struct Open {
        open_first_steps: i32,
    }
    let mut done = Vec::new();
    let mut firsts: Vec<(String, i32)> = firsts.into_iter().collect();
    // One order for every transaction, so two never wait for each other's runs.
    firsts.sort();
    for (run_id, n) in firsts {
        let open: Option<Open> = query_one(
            conn,
            "UPDATE action_runs SET open_first_steps = open_first_steps - $1 WHERE id = $2 \
             RETURNING open_first_steps",
            [n.into(), run_id.clone().into()],
        )
        .await?;
        if open.is_some_and(|o| o.open_first_steps == 0) {
            done.push(run_id);
        }
    }
    Ok(done)
}

/// Applies up to `limit` queued settlings (taking none another transaction is applying) at
/// `now`; returns how many it took and the runs whose every step is now done.
pub(crate) async fn settle_queued(
    conn: &impl ConnectionTrait,
    limit: u64,
    now: EpochMs,
) -> Result<(usize, Vec<String>)> {
    #[derive(FromQueryResult)]
    struct Taken {
        step_id: String,
    }
    let skip = skip_locked(conn, "q");
    let taken: Vec<Taken> = query_all(
        conn,
        &format!(
            "DELETE FROM action_step_settles WHERE step_id IN (SELECT q.step_id \
             FROM action_step_settles q ORDER BY q.queued_at, q.step_id LIMIT {limit}{skip}) \
             RETURNING step_id"
        ),
        [],
    )
    .await?;
    let ids: Vec<String> = taken.into_iter().map(|t| t.step_id).collect();
    let settled: Vec<Counted> = by_ids(
        conn,
        "SELECT id, action_run_id, open_dependents AS count, status, waits_for FROM action_steps",
        "id",
        &ids,
    )
    .await?;
    Ok((ids.len(), propagate(conn, settled, Settle::Now, now).await?))
}

/// Whether a step's end on `backend` may queue its settling: only on PostgreSQL, where another
/// transaction can hold an upstream step's row. On SQLite the one writer holds them all, so a
/// step's end always settles at once and nothing is ever queued.
pub(crate) fn may_queue(backend: sea_orm::DatabaseBackend) -> bool {
    backend == sea_orm::DatabaseBackend::Postgres
}

/// Whether this transaction holds, or could take at once, the row of every step that `settled`
/// waited for: taken here when free (PostgreSQL's `SKIP LOCKED`).
async fn free_to_count_down(conn: &impl ConnectionTrait, settled: &[Counted]) -> Result<bool> {
    if !may_queue(conn.get_database_backend()) {
        return Ok(true);
    }
    #[derive(FromQueryResult)]
    struct HeldElsewhere {
        n: i64,
    }
    for chunk in settled.chunks(CHUNK) {
        let taken_elsewhere = query_one::<HeldElsewhere>(
            conn,
            &format!(
                "SELECT count(*) FILTER (WHERE s.id IS NULL) AS n FROM (SELECT DISTINCT \
                 waits_for_step_id FROM action_step_waits WHERE step_id IN ({})) w \
                 LEFT JOIN LATERAL (SELECT id FROM action_steps \
                 WHERE action_steps.id = w.waits_for_step_id FOR UPDATE SKIP LOCKED) s ON true",
                placeholders(1, chunk.len())
            ),
            chunk.iter().map(|s| Value::from(s.id.clone())),
        )
        .await?
        .map_or(0, |t| t.n);
        if taken_elsewhere > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether settlings are queued, read without a transaction.
pub(crate) async fn any_queued(conn: &impl ConnectionTrait) -> Result<bool> {
    #[derive(FromQueryResult)]
    struct One {
        #[allow(dead_code)]
        one: i32,
    }
    Ok(
        query_one::<One>(conn, "SELECT 1 AS one FROM action_step_settles LIMIT 1", [])
            .await?
            .is_some(),
    )
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
            async move {
                mark_done(db, "run", &[id], status, Settle::Now, 1)
                    .await
                    .expect("done")
            }
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

    /// A settling queued by a step whose upstream's row was taken is applied later, once, and
    /// finds the run done; the database refuses a second settling of one step.
    #[tokio::test]
    async fn a_queued_settling_is_applied_once_and_ends_the_run() {
        let db = database().await;
        let plan = Plan {
            nodes: vec![node(0, "l", &[]), node(1, "root", &["l"])],
            ..Plan::default()
        };
        let ids = insert_steps(&db, "run", &plan, "noop")
            .await
            .expect("steps");
        mark_done(
            &db,
            "run",
            &[ids["l"].clone()],
            StepStatus::Succeeded,
            Settle::Now,
            1,
        )
        .await
        .expect("l done");
        assert!(!any_queued(&db).await.expect("queued"));
        // The root ends while another transaction holds `l`: its settling waits in the queue.
        db.execute_unprepared(&format!(
            "UPDATE action_steps SET status = 'succeeded' WHERE id = '{}'",
            ids["root"]
        ))
        .await
        .expect("root done");
        let root: Vec<Counted> = query_all(
            &db,
            "SELECT id, action_run_id, open_dependents AS count, status, waits_for \
             FROM action_steps WHERE id = $1",
            [ids["root"].clone().into()],
        )
        .await
        .expect("root");
        queue(&db, &root, 2).await.expect("queue");
        let again = queue(&db, &root, 3).await.expect_err("a second settling");
        assert!(
            again.to_string().to_lowercase().contains("unique"),
            "{again}"
        );
        assert_eq!(
            number(&db, "SELECT open_first_steps FROM action_runs").await,
            1,
            "nothing settled yet"
        );
        assert!(any_queued(&db).await.expect("queued"));

        let (taken, done) = settle_queued(&db, 10, 4).await.expect("settle");
        assert_eq!((taken, done), (1, vec!["run".to_owned()]));
        assert_eq!(
            number(&db, "SELECT open_first_steps FROM action_runs").await,
            0
        );
        assert!(!any_queued(&db).await.expect("queued"));
        let (taken, done) = settle_queued(&db, 10, 4).await.expect("nothing left");
        assert_eq!((taken, done.len()), (0, 0));
    }
}
