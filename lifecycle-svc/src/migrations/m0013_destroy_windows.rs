use sea_orm_migration::prelude::*;

/// Destroy windows (the schedules issue, item 2): an organization or a project may allow
/// automated destroys only inside weekly windows in a time zone. A workspace's due time that
/// falls outside every window waits for the next opening; a scheduled action fires at its
/// `fire_at`, never before its `scheduled_at`, and its reminders are kept per due time, so a
/// time a window moves gets its reminders again.
pub struct M0013DestroyWindows;

impl MigrationName for M0013DestroyWindows {
    fn name(&self) -> &str {
        "m0013_destroy_windows"
    }
}

const SQL: &str = r#"
-- JSON {"time_zone": …, "windows": [{"days", "start", "end"}]}; NULL: any time. A project's
-- setting replaces its organization's.
ALTER TABLE organizations ADD COLUMN destroy_windows TEXT;
ALTER TABLE projects ADD COLUMN destroy_windows TEXT;
-- When the scheduler reached a due time outside every window: it waits for the first opening after.
ALTER TABLE workspaces ADD COLUMN window_not_before BIGINT;
-- The scheduled time while a window holds the destroy back (status WAITING_FOR_WINDOW).
ALTER TABLE workspaces ADD COLUMN window_held_due_at BIGINT;
CREATE INDEX workspaces_window_held ON workspaces (organization_id, window_held_due_at)
    WHERE window_held_due_at IS NOT NULL;

-- When a scheduled action fires: its scheduled time, or the next window opening after it.
ALTER TABLE scheduled_actions ADD COLUMN fire_at BIGINT CHECK (fire_at >= scheduled_at);
UPDATE scheduled_actions SET fire_at = scheduled_at;
CREATE INDEX scheduled_actions_fire ON scheduled_actions (fire_at) WHERE status = 'pending';

CREATE TABLE scheduled_action_reminders_by_due (
    scheduled_action_id TEXT NOT NULL REFERENCES scheduled_actions (id),
    due_at BIGINT NOT NULL,
    lead_ms BIGINT NOT NULL,
    sent_at BIGINT NOT NULL,
    PRIMARY KEY (scheduled_action_id, due_at, lead_ms)
);
INSERT INTO scheduled_action_reminders_by_due (scheduled_action_id, due_at, lead_ms, sent_at)
    SELECT r.scheduled_action_id, s.scheduled_at, r.lead_ms, r.sent_at
    FROM scheduled_action_reminders r JOIN scheduled_actions s ON s.id = r.scheduled_action_id;
DROP TABLE scheduled_action_reminders;
ALTER TABLE scheduled_action_reminders_by_due RENAME TO scheduled_action_reminders;
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0013DestroyWindows {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(SQL).await?;
        Ok(())
    }
}
