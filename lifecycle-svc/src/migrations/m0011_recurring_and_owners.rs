use sea_orm::{ConnectionTrait, DatabaseBackend};
use sea_orm_migration::prelude::*;

/// Recurring schedules and owners: a workspace may carry a cron expression with its IANA time
/// zone and the due time of its current occurrence (the three set together or not at all), and
/// it may name an owner (an email address and/or a Slack user id) who is told about its
/// reminders and results.
pub struct M0011RecurringAndOwners;

impl MigrationName for M0011RecurringAndOwners {
    fn name(&self) -> &str {
        "m0011_recurring_and_owners"
    }
}

const COMMON: &str = r#"
ALTER TABLE workspaces ADD COLUMN recurring_cron TEXT;
ALTER TABLE workspaces ADD COLUMN recurring_time_zone TEXT;
-- The current occurrence (moved by an extension); the next one is computed when it has fired
-- or was skipped.
ALTER TABLE workspaces ADD COLUMN recurring_due_at BIGINT;
ALTER TABLE workspaces ADD COLUMN owner_email TEXT NOT NULL DEFAULT '';
ALTER TABLE workspaces ADD COLUMN owner_slack_user_id TEXT NOT NULL DEFAULT '';

CREATE INDEX workspaces_owner_email ON workspaces (organization_id, owner_email)
    WHERE owner_email <> '';
CREATE INDEX workspaces_owner_slack ON workspaces (organization_id, owner_slack_user_id)
    WHERE owner_slack_user_id <> '';
"#;

const SQLITE: &str = r#"
CREATE TRIGGER workspaces_recurring_whole_insert BEFORE INSERT ON workspaces
WHEN (NEW.recurring_cron IS NULL) <> (NEW.recurring_time_zone IS NULL)
    OR (NEW.recurring_cron IS NULL) <> (NEW.recurring_due_at IS NULL)
BEGIN
    SELECT RAISE(ABORT, 'a recurring schedule needs its cron, its time zone and its next occurrence');
END;
CREATE TRIGGER workspaces_recurring_whole_update BEFORE UPDATE ON workspaces
WHEN (NEW.recurring_cron IS NULL) <> (NEW.recurring_time_zone IS NULL)
    OR (NEW.recurring_cron IS NULL) <> (NEW.recurring_due_at IS NULL)
BEGIN
    SELECT RAISE(ABORT, 'a recurring schedule needs its cron, its time zone and its next occurrence');
END;
"#;

const POSTGRES: &str = r#"
ALTER TABLE workspaces ADD CONSTRAINT workspaces_recurring_whole CHECK (
    (recurring_cron IS NULL) = (recurring_time_zone IS NULL)
    AND (recurring_cron IS NULL) = (recurring_due_at IS NULL)
);
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0011RecurringAndOwners {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(COMMON).await?;
        let specific = match db.get_database_backend() {
            DatabaseBackend::Sqlite => SQLITE,
            _ => POSTGRES,
        };
        db.execute_unprepared(specific).await?;
        Ok(())
    }
}
