use std::collections::{BTreeMap, HashMap};

use ebb_common::db::stmt;
use sea_orm::{ConnectionTrait, Statement, Value};
use sea_orm_migration::prelude::*;

/// Cascades advance by counters the database keeps instead of reading every step of the run at
/// each completion: which step waits for which (`action_step_waits`), how many of a step's
/// waits are not done yet (`waiting`: 0 is ready), how many steps waiting for it have not
/// settled (`open_dependents`; a step settles when it is done and every step waiting for it
/// has settled), and how many first steps of a run have not settled (`open_first_steps`: 0 is
/// a run whose every step is done). Running and failed runs (a failed run can be retried) are
/// filled in from their steps.
pub struct M0015StepCounters;

impl MigrationName for M0015StepCounters {
    fn name(&self) -> &str {
        "m0015_step_counters"
    }
}

const SQL: &str = r#"
ALTER TABLE action_steps ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0 CHECK (waiting >= 0);
ALTER TABLE action_steps ADD COLUMN open_dependents INTEGER NOT NULL DEFAULT 0
    CHECK (open_dependents >= 0);
ALTER TABLE action_runs ADD COLUMN open_first_steps INTEGER NOT NULL DEFAULT 0
    CHECK (open_first_steps >= 0);
CREATE TABLE action_step_waits (
    step_id TEXT NOT NULL REFERENCES action_steps (id),
    waits_for_step_id TEXT NOT NULL REFERENCES action_steps (id),
    PRIMARY KEY (step_id, waits_for_step_id),
    CHECK (step_id <> waits_for_step_id)
);
CREATE INDEX action_step_waits_for ON action_step_waits (waits_for_step_id, step_id);
-- The steps of a run ready to start.
CREATE INDEX action_steps_ready ON action_steps (action_run_id, step_order)
    WHERE status = 'pending' AND waiting = 0;
-- The runs waiting on an entity (a shared upstream) that a run ending releases. Not partial on
-- the status: a step's start (`id IN (…) AND status = 'pending'`) would otherwise be planned as
-- a bitmap over every pending step.
CREATE INDEX action_steps_entity ON action_steps (entity_id, status);
-- A failed step fails its run: found without reading the run's other steps.
CREATE INDEX action_steps_failed ON action_steps (action_run_id, step_order)
    WHERE status = 'failed';
"#;

/// A step as the backfill reads it.
struct Step {
    id: String,
    run: String,
    waits_for: Vec<String>,
    done: bool,
}

fn done(status: &str) -> bool {
    matches!(status, "succeeded" | "kept")
}

/// Whether `id` has settled: done, and every step waiting for it settled.
fn settled(
    id: &str,
    steps: &HashMap<String, Step>,
    dependents: &HashMap<&str, Vec<&str>>,
    memo: &mut HashMap<String, bool>,
) -> bool {
    if let Some(s) = memo.get(id) {
        return *s;
    }
    let s = steps.get(id).is_some_and(|s| s.done)
        && dependents
            .get(id)
            .is_none_or(|d| d.iter().all(|d| settled(d, steps, dependents, memo)));
    memo.insert(id.to_owned(), s);
    s
}

#[async_trait::async_trait]
impl MigrationTrait for M0015StepCounters {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(SQL).await?;
        let backend = db.get_database_backend();
        let rows = db
            .query_all_raw(Statement::from_string(
                backend,
                "SELECT s.id, s.action_run_id, s.waits_for, s.status FROM action_steps s \
                 JOIN action_runs a ON a.id = s.action_run_id WHERE a.status IN ('running', 'failed')",
            ))
            .await?;
        let mut steps: HashMap<String, Step> = HashMap::new();
        for row in rows {
            let id: String = row.try_get("", "id")?;
            let waits: String = row.try_get("", "waits_for")?;
            let status: String = row.try_get("", "status")?;
            // Fails closed: a step whose waits do not decode would count as ready and could
            // start a destroy before what it waits for; the upgrade stops and names it.
            let waits_for: Vec<String> = serde_json::from_str(&waits).map_err(|e| {
                DbErr::Custom(format!(
                    "action step {id}: waits_for {waits:?} is not a JSON list of step ids ({e}); \
                     repair the row and run the migration again"
                ))
            })?;
            steps.insert(
                id.clone(),
                Step {
                    id,
                    run: row.try_get("", "action_run_id")?,
                    waits_for,
                    done: done(&status),
                },
            );
        }
        let mut dependents: HashMap<&str, Vec<&str>> = HashMap::new();
        for s in steps.values() {
            for w in &s.waits_for {
                dependents
                    .entry(w.as_str())
                    .or_default()
                    .push(s.id.as_str());
            }
        }
        let mut memo = HashMap::new();
        let mut open_first: BTreeMap<&str, i64> = BTreeMap::new();
        for s in steps.values() {
            let waiting = s
                .waits_for
                .iter()
                .filter(|w| !steps.get(w.as_str()).is_some_and(|w| w.done))
                .count() as i64;
            let open = dependents.get(s.id.as_str()).map_or(0, |d| {
                d.iter()
                    .filter(|d| !settled(d, &steps, &dependents, &mut memo))
                    .count()
            }) as i64;
            db.execute_raw(stmt(
                backend,
                "UPDATE action_steps SET waiting = $1, open_dependents = $2 WHERE id = $3",
                [waiting.into(), open.into(), s.id.clone().into()],
            ))
            .await?;
            for w in s
                .waits_for
                .iter()
                .filter(|w| steps.contains_key(w.as_str()))
            {
                db.execute_raw(stmt(
                    backend,
                    "INSERT INTO action_step_waits (step_id, waits_for_step_id) VALUES ($1, $2)",
                    [Value::from(s.id.clone()), Value::from(w.clone())],
                ))
                .await?;
            }
            let entry = open_first.entry(s.run.as_str()).or_default();
            if s.waits_for.is_empty() && !settled(&s.id, &steps, &dependents, &mut memo) {
                *entry += 1;
            }
        }
        for (run, open) in open_first {
            db.execute_raw(stmt(
                backend,
                "UPDATE action_runs SET open_first_steps = $1 WHERE id = $2",
                [open.into(), run.into()],
            ))
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::ConnectionTrait;
    use sea_orm_migration::MigratorTrait;

    use crate::testing::{self, number};

    /// A run in flight when the migration runs gets the counters its steps stand at: it
    /// carries on where it was, and a finished run is left alone.
    #[tokio::test]
    async fn a_running_run_is_backfilled_from_its_steps() {
        let db = testing::database(Some(14)).await;
        // root first; x and y after root; l after x and y. root and x are done.
        db.execute_unprepared(&format!(
            "{} INSERT INTO action_runs (id, organization_id, entity_id, action, parameters, plan, status, actor, created_at) \
             VALUES ('run', 'org', 'root', 'A', '{{}}', '{{}}', 'running', 'test', 0), \
             ('done', 'org', 'old', 'A', '{{}}', '{{}}', 'succeeded', 'test', 0); \
             INSERT INTO action_steps (id, action_run_id, step_order, entity_id, waits_for, trigger_type, status) VALUES \
             ('s-root', 'run', 0, 'root', '[]', 'noop', 'succeeded'), \
             ('s-x', 'run', 1, 'x', '[\"s-root\"]', 'noop', 'succeeded'), \
             ('s-y', 'run', 2, 'y', '[\"s-root\"]', 'noop', 'pending'), \
             ('s-l', 'run', 3, 'l', '[\"s-x\", \"s-y\"]', 'noop', 'pending'), \
             ('s-old', 'done', 0, 'old', '[]', 'noop', 'succeeded');",
            testing::org_and_entities(&["root", "x", "y", "l", "old"])
        ))
        .await
        .expect("rows of the old schema");
        crate::migrations::Migrator::up(&db, None)
            .await
            .expect("migrate");

        let counters = async |id: &str| {
            (
                number(
                    &db,
                    &format!("SELECT waiting FROM action_steps WHERE id = '{id}'"),
                )
                .await,
                number(
                    &db,
                    &format!("SELECT open_dependents FROM action_steps WHERE id = '{id}'"),
                )
                .await,
            )
        };
        assert_eq!(counters("s-root").await, (0, 2), "x and y have not settled");
        assert_eq!(counters("s-x").await, (0, 1), "l is not done");
        assert_eq!(counters("s-y").await, (0, 1));
        assert_eq!(counters("s-l").await, (1, 0), "l still waits for y");
        assert_eq!(counters("s-old").await, (0, 0));
        assert_eq!(
            number(&db, "SELECT count(*) FROM action_step_waits").await,
            4
        );
        assert_eq!(
            number(
                &db,
                "SELECT open_first_steps FROM action_runs WHERE id = 'run'"
            )
            .await,
            1
        );
        assert_eq!(
            number(
                &db,
                "SELECT open_first_steps FROM action_runs WHERE id = 'done'"
            )
            .await,
            0
        );
    }

    /// A running step whose waits do not decode stops the upgrade, naming it, rather than
    /// counting as ready.
    #[tokio::test]
    async fn unreadable_waits_stop_the_migration() {
        let db = testing::database(Some(14)).await;
        db.execute_unprepared(&format!(
            "{} INSERT INTO action_runs (id, organization_id, entity_id, action, parameters, plan, status, actor, created_at) \
             VALUES ('run', 'org', 'root', 'A', '{{}}', '{{}}', 'running', 'test', 0); \
             INSERT INTO action_steps (id, action_run_id, step_order, entity_id, waits_for, trigger_type, status) VALUES \
             ('s-root', 'run', 0, 'root', 'not json', 'noop', 'pending');",
            testing::org_and_entities(&["root"])
        ))
        .await
        .expect("rows of the old schema");
        let error = crate::migrations::Migrator::up(&db, None)
            .await
            .expect_err("refused")
            .to_string();
        assert!(error.contains("action step s-root"), "{error}");
    }
}
