//! Reminders before an auto-destroy (AD-10), on the shared reminder loop.

use ebb_common::Result;
use ebb_common::time::{EpochMs, rfc3339};
use sea_orm::ConnectionTrait;
use serde_json::json;

use crate::auto_destroy::queue::ACTOR;
use crate::events::NewEvent;
use crate::store::query_all;
use crate::timing::reminders::{self, Reminded};
use crate::timing::snooze_links::Links;
use crate::timing::{self};
use crate::workspaces::{WORKSPACE_COLUMNS, WORKSPACE_FROM, WorkspaceRow};

impl Reminded for WorkspaceRow {
    fn id(&self) -> &str {
        &self.id
    }

    fn organization_id(&self) -> &str {
        &self.organization_id
    }

    fn due_at(&self) -> Option<EpochMs> {
        // A recurring occurrence with nothing to destroy gets no reminder.
        let timing = self.timing();
        self.next_auto_destroy_at
            .filter(|due| !timing.nothing_to_destroy(*due))
    }

    fn reminder(&self, due_at: EpochMs, lead_ms: i64) -> NewEvent {
        NewEvent::new(
            &self.organization_id,
            "workspace.auto_destroy.reminder",
            "workspace",
            &self.id,
            ACTOR,
            json!({
                "workspace_name": self.name,
                "due_at": rfc3339(due_at),
                "lead_time_ms": lead_ms,
                "lead_time": ebb_common::time::human(lead_ms),
                "reason": self.timing().reason(),
                "owner": self.owner(),
            }),
        )
    }
}

/// Sends the reminders that are due in one shard; each (schedule, lead time) at most once.
/// With `links`, each reminder carries a snooze link.
pub async fn send_due_reminders(
    conn: &impl ConnectionTrait,
    shard: i32,
    shard_count: i32,
    limit: u64,
    links: Option<&Links>,
    now: EpochMs,
) -> Result<u32> {
    let sql = reminders::due_statement(
        conn,
        &timing::WORKSPACES,
        WORKSPACE_COLUMNS,
        WORKSPACE_FROM,
        "w",
        limit,
    );
    let due: Vec<WorkspaceRow> =
        query_all(conn, &sql, [now.into(), shard_count.into(), shard.into()]).await?;
    reminders::send(conn, &timing::WORKSPACES, &due, links, now).await
}
