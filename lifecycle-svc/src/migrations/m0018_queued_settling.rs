use sea_orm_migration::prelude::*;

/// A step that ended on its own queues the settling of the steps it waited for instead of
/// counting them down in its own transaction, where siblings ending at the same time queued on
/// their common upstream's row (see `deprovision::progress`). A step settles once: the primary
/// key refuses a second row for it.
pub struct M0018QueuedSettling;

impl MigrationName for M0018QueuedSettling {
    fn name(&self) -> &str {
        "m0018_queued_settling"
    }
}

const SQL: &str = r#"
CREATE TABLE action_step_settles (
    step_id TEXT PRIMARY KEY REFERENCES action_steps (id),
    action_run_id TEXT NOT NULL REFERENCES action_runs (id),
    queued_at BIGINT NOT NULL
);
CREATE INDEX action_step_settles_order ON action_step_settles (queued_at, step_id);
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0018QueuedSettling {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(SQL).await?;
        Ok(())
    }
}
