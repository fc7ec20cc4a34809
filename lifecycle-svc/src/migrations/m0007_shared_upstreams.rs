use sea_orm::{ConnectionTrait, DatabaseBackend};
use sea_orm_migration::prelude::*;

/// Shared upstreams (DP-10): a step may end `kept` (an upstream others still run on), and one
/// entity never has two teardown steps running at once.
pub struct M0007SharedUpstreams;

impl MigrationName for M0007SharedUpstreams {
    fn name(&self) -> &str {
        "m0007_shared_upstreams"
    }
}

/// The index that makes the database refuse a second running step for one entity: two action
/// runs over two users of one upstream must never destroy it twice.
const ONE_RUNNING_STEP: &str = "CREATE UNIQUE INDEX action_steps_one_running ON action_steps (entity_id) WHERE status = 'running';";

/// SQLite cannot alter a CHECK constraint: the table is rebuilt with the new one, its rows
/// copied, and its indexes made again.
const STEPS_SQLITE: &str = r#"
CREATE TABLE action_steps_new (
    id TEXT PRIMARY KEY,
    action_run_id TEXT NOT NULL REFERENCES action_runs (id),
    step_order INTEGER NOT NULL,
    entity_id TEXT NOT NULL REFERENCES entities (id),
    waits_for TEXT NOT NULL,
    trigger_type TEXT NOT NULL CHECK (trigger_type IN ('destroy_run', 'webhook', 'noop')),
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'canceled', 'kept')),
    run_id TEXT REFERENCES runs (id),
    attempt INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    started_at BIGINT,
    finished_at BIGINT,
    deadline_at BIGINT,
    -- Webhook steps: when the request went out (NULL while it is still to be sent).
    dispatched_at BIGINT,
    UNIQUE (action_run_id, entity_id)
);
INSERT INTO action_steps_new (id, action_run_id, step_order, entity_id, waits_for, trigger_type, status,
    run_id, attempt, error, started_at, finished_at, deadline_at, dispatched_at)
SELECT id, action_run_id, step_order, entity_id, waits_for, trigger_type, status,
    run_id, attempt, error, started_at, finished_at, deadline_at, dispatched_at FROM action_steps;
DROP TABLE action_steps;
ALTER TABLE action_steps_new RENAME TO action_steps;
CREATE INDEX action_steps_dispatch ON action_steps (started_at)
    WHERE status = 'running' AND trigger_type = 'webhook' AND dispatched_at IS NULL;
CREATE INDEX action_steps_run ON action_steps (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX action_steps_deadline ON action_steps (deadline_at) WHERE status = 'running';
"#;

const STEPS_POSTGRES: &str = r#"
ALTER TABLE action_steps DROP CONSTRAINT action_steps_status_check;
ALTER TABLE action_steps ADD CONSTRAINT action_steps_status_check
    CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'canceled', 'kept'));
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0007SharedUpstreams {
    /// The SQLite rebuild drops a table: all of it or none of it, on both backends.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let steps = match db.get_database_backend() {
            DatabaseBackend::Sqlite => STEPS_SQLITE,
            _ => STEPS_POSTGRES,
        };
        db.execute_unprepared(steps).await?;
        db.execute_unprepared(ONE_RUNNING_STEP).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, DatabaseConnection, FromQueryResult, Statement};
    use sea_orm_migration::MigratorTrait;

    use crate::migrations::Migrator;

    #[derive(Debug, FromQueryResult)]
    struct Named {
        name: String,
    }

    async fn sql(db: &DatabaseConnection, text: &str) -> Result<(), sea_orm::DbErr> {
        db.execute_unprepared(text).await.map(|_| ())
    }

    /// Steps written before the migration come through the SQLite rebuild unchanged, with
    /// every index of the table made again.
    #[tokio::test]
    async fn the_sqlite_rebuild_keeps_every_step_and_index() {
        let db = crate::testing::database(Some(6)).await;
        sql(
            &db,
            "INSERT INTO organizations (id, name, reminder_lead_times_ms, destroy_retry_limit, max_inactivity_ms, protected_labels, created_at, updated_at) \
             VALUES ('org', 'org', '[]', 2, 1000, '[]', 0, 0); \
             INSERT INTO entity_kinds (name, definition, source, updated_at) VALUES ('tenant', '{}', 'api', 0); \
             INSERT INTO entities (id, organization_id, kind, name, state, attributes, created_at, updated_at) \
             VALUES ('t1', 'org', 'tenant', 't1', 'deprovisioning', '{}', 0, 0), ('t2', 'org', 'tenant', 't2', 'active', '{}', 0, 0); \
             INSERT INTO action_runs (id, organization_id, entity_id, action, parameters, plan, status, actor, created_at) \
             VALUES ('r1', 'org', 't1', 'A', '{}', '{}', 'running', 'test', 0), ('r2', 'org', 't2', 'A', '{}', '{}', 'succeeded', 'test', 0); \
             INSERT INTO action_steps (id, action_run_id, step_order, entity_id, waits_for, trigger_type, status, attempt, error, started_at, deadline_at) \
             VALUES ('s1', 'r1', 0, 't1', '[]', 'webhook', 'running', 3, 'none yet', 10, 20), ('s2', 'r2', 0, 't2', '[]', 'noop', 'succeeded', 1, '', 5, 6);",
        )
        .await
        .expect("rows of the old schema");
        Migrator::up(&db, None).await.expect("migrate m0007");

        #[derive(Debug, FromQueryResult, PartialEq)]
        struct Step {
            id: String,
            status: String,
            attempt: i32,
            error: String,
            deadline_at: Option<i64>,
        }
        let steps = Step::find_by_statement(Statement::from_string(
            db.get_database_backend(),
            "SELECT id, status, attempt, error, deadline_at FROM action_steps ORDER BY id",
        ))
        .all(&db)
        .await
        .expect("steps");
        assert_eq!(
            steps,
            [
                Step {
                    id: "s1".into(),
                    status: "running".into(),
                    attempt: 3,
                    error: "none yet".into(),
                    deadline_at: Some(20)
                },
                Step {
                    id: "s2".into(),
                    status: "succeeded".into(),
                    attempt: 1,
                    error: String::new(),
                    deadline_at: Some(6)
                },
            ]
        );
        let indexes: Vec<String> = Named::find_by_statement(Statement::from_string(
            db.get_database_backend(),
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'action_steps' \
             AND name NOT LIKE 'sqlite_autoindex%' ORDER BY name",
        ))
        .all(&db)
        .await
        .expect("indexes")
        .into_iter()
        .map(|n| n.name)
        .collect();
        // Every index the rebuild recreated is there (later migrations add others).
        for index in [
            "action_steps_deadline",
            "action_steps_dispatch",
            "action_steps_one_running",
            "action_steps_run",
        ] {
            assert!(indexes.iter().any(|i| i == index), "{index} in {indexes:?}");
        }
        sql(
            &db,
            "UPDATE action_steps SET status = 'kept' WHERE id = 's2'",
        )
        .await
        .expect("kept is a status");
        assert!(
            sql(
                &db,
                "INSERT INTO action_steps (id, action_run_id, step_order, entity_id, waits_for, trigger_type, status) \
                 VALUES ('s3', 'r2', 1, 't1', '[]', 'noop', 'running')"
            )
            .await
            .is_err(),
            "a second running step for t1"
        );
        assert!(
            sql(
                &db,
                "INSERT INTO action_steps (id, action_run_id, step_order, entity_id, waits_for, trigger_type, status) \
                 VALUES ('s4', 'r2', 1, 't1', '[]', 'noop', 'done')"
            )
            .await
            .is_err(),
            "an unknown status"
        );
        assert!(
            sql(&db, "DELETE FROM action_runs WHERE id = 'r1'")
                .await
                .is_err(),
            "the rebuilt table's foreign keys hold"
        );
    }
}
