use sea_orm_migration::prelude::*;

/// The rest of the schedules issue: approval only for workspaces with some labels or for
/// cascades over a number of entities, owners of
/// entities (their reminders and results reach them), and recurring entity actions — each
/// occurrence a scheduled action of its own, linked to the first by `series_id`.
pub struct M0014ScheduleScopes;

impl MigrationName for M0014ScheduleScopes {
    fn name(&self) -> &str {
        "m0014_schedule_scopes"
    }
}

const SQL: &str = r#"
-- With require_approval: only workspaces carrying one of these labels need it; {} means all.
ALTER TABLE organizations ADD COLUMN approval_labels TEXT NOT NULL DEFAULT '{}';

ALTER TABLE entities ADD COLUMN owner_email TEXT NOT NULL DEFAULT '';
ALTER TABLE entities ADD COLUMN owner_slack_user_id TEXT NOT NULL DEFAULT '';
CREATE INDEX entities_owner_email ON entities (organization_id, owner_email)
    WHERE owner_email <> '';
CREATE INDEX entities_owner_slack ON entities (organization_id, owner_slack_user_id)
    WHERE owner_slack_user_id <> '';

ALTER TABLE scheduled_actions ADD COLUMN recurring_cron TEXT;
ALTER TABLE scheduled_actions ADD COLUMN recurring_time_zone TEXT;
ALTER TABLE scheduled_actions ADD COLUMN series_id TEXT;
-- A recurring action has both, or neither; each occurrence is scheduled once per series.
ALTER TABLE scheduled_actions ADD CONSTRAINT scheduled_actions_recurring_whole
    CHECK ((recurring_cron IS NULL) = (recurring_time_zone IS NULL));
-- An occurrence of a recurring action belongs to its series, and only those do.
ALTER TABLE scheduled_actions ADD CONSTRAINT scheduled_actions_recurring_series
    CHECK ((recurring_cron IS NULL) = (series_id IS NULL));
"#;

const SQLITE_NO_ADD_CONSTRAINT: &str = r#"
ALTER TABLE organizations ADD COLUMN approval_labels TEXT NOT NULL DEFAULT '{}';

ALTER TABLE entities ADD COLUMN owner_email TEXT NOT NULL DEFAULT '';
ALTER TABLE entities ADD COLUMN owner_slack_user_id TEXT NOT NULL DEFAULT '';
CREATE INDEX entities_owner_email ON entities (organization_id, owner_email)
    WHERE owner_email <> '';
CREATE INDEX entities_owner_slack ON entities (organization_id, owner_slack_user_id)
    WHERE owner_slack_user_id <> '';

ALTER TABLE scheduled_actions ADD COLUMN recurring_cron TEXT;
ALTER TABLE scheduled_actions ADD COLUMN recurring_time_zone TEXT
    CHECK ((recurring_cron IS NULL) = (recurring_time_zone IS NULL));
ALTER TABLE scheduled_actions ADD COLUMN series_id TEXT
    CHECK ((recurring_cron IS NULL) = (series_id IS NULL));
"#;

const COMMON: &str = r#"
-- With require_approval: the destroy runs of a cascade tearing down more entities than this
-- wait for approval; NULL: cascades need none.
ALTER TABLE organizations ADD COLUMN approval_cascade_threshold INTEGER
    CHECK (approval_cascade_threshold IS NULL OR approval_cascade_threshold >= 0);
-- Set when the cascade's destroy runs wait for approval, each at most this long.
ALTER TABLE action_runs ADD COLUMN approval_window_ms BIGINT
    CHECK (approval_window_ms IS NULL OR approval_window_ms > 0);
CREATE UNIQUE INDEX scheduled_actions_occurrence ON scheduled_actions (series_id, scheduled_at)
    WHERE series_id IS NOT NULL;
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0014ScheduleScopes {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(match db.get_database_backend() {
            sea_orm::DatabaseBackend::Sqlite => SQLITE_NO_ADD_CONSTRAINT,
            _ => SQL,
        })
        .await?;
        db.execute_unprepared(COMMON).await?;
        Ok(())
    }
}
