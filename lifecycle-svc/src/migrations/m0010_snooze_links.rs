use sea_orm::ConnectionTrait;
use sea_orm_migration::prelude::*;

/// Snooze links in reminders (schedules issue, item 4): each organization's snooze step, and
/// the links already used — a link's id is its primary key, so the database itself refuses a
/// second use.
pub struct M0010SnoozeLinks;

impl MigrationName for M0010SnoozeLinks {
    fn name(&self) -> &str {
        "m0010_snooze_links"
    }
}

const BOTH: &str = r#"
-- NULL: one day. Zero: reminders carry no snooze link.
ALTER TABLE organizations ADD COLUMN snooze_step_ms BIGINT CHECK (snooze_step_ms >= 0);
CREATE TABLE snooze_links_used (
    link_id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    due_at BIGINT NOT NULL,
    via TEXT NOT NULL CHECK (via IN ('link', 'slack')),
    used_at BIGINT NOT NULL
);
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0010SnoozeLinks {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(BOTH).await?;
        Ok(())
    }
}
