//! Reminders before an auto-destroy (AD-10).

use std::collections::BTreeMap;

use ebb_common::Result;
use ebb_common::time::{EpochMs, rfc3339};
use sea_orm::{ConnectionTrait, DatabaseBackend};
use serde_json::json;

use crate::auto_destroy::queue::ACTOR;
use crate::events::{NewEvent, outbox};
use crate::store::{exec, query_all};
use crate::tenancy::orgs;
use crate::tenancy::orgs::OrgRow;
use crate::timing::math;
use crate::workspaces::{WORKSPACE_COLUMNS, WORKSPACE_FROM, WorkspaceRow};

/// Sends the reminders that are due in one shard; each (schedule, lead time) at most once.
pub async fn send_due_reminders(
    conn: &impl ConnectionTrait,
    shard: i32,
    shard_count: i32,
    limit: u64,
    now: EpochMs,
) -> Result<u32> {
    let skip_locked = match conn.get_database_backend() {
        DatabaseBackend::Postgres => " FOR UPDATE OF w SKIP LOCKED",
        _ => "",
    };
    let due: Vec<WorkspaceRow> = query_all(
        conn,
        &format!(
            "SELECT {WORKSPACE_COLUMNS} FROM {WORKSPACE_FROM} WHERE w.next_reminder_at <= $1 \
             AND w.shard_key % $2 = $3 ORDER BY w.next_reminder_at LIMIT {limit}{skip_locked}"
        ),
        [now.into(), shard_count.into(), shard.into()],
    )
    .await?;
    let mut orgs: BTreeMap<String, OrgRow> = BTreeMap::new();
    let mut events = Vec::new();
    let mut sent = 0;
    for ws in due {
        if !orgs.contains_key(&ws.organization_id) {
            let org = orgs::get_org(conn, &ws.organization_id).await?;
            orgs.insert(org.id.clone(), org);
        }
        let leads = orgs[&ws.organization_id].lead_times();
        let mut next_reminder = None;
        if let Some(due_at) = ws.next_auto_destroy_at {
            if let Some(lead) = math::due_lead_time(due_at, &leads, now) {
                let mut first = true;
                for l in std::iter::once(lead).chain(math::superseded(lead, &leads)) {
                    let inserted = exec(
                        conn,
                        "INSERT INTO auto_destroy_reminders (workspace_id, due_at, lead_ms, sent_at) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                        [ws.id.clone().into(), due_at.into(), l.into(), now.into()],
                    )
                    .await?;
                    if first && inserted == 1 {
                        sent += 1;
                        events.push(NewEvent::new(
                            &ws.organization_id,
                            "workspace.auto_destroy.reminder",
                            "workspace",
                            &ws.id,
                            ACTOR,
                            json!({
                                "workspace_name": ws.name,
                                "due_at": rfc3339(due_at),
                                "lead_time_ms": lead,
                                "lead_time": ebb_common::time::human(lead),
                                "reason": ws.timing().reason(),
                            }),
                        ));
                    }
                    first = false;
                }
            }
            next_reminder = leads.iter().map(|l| due_at - l).filter(|t| *t > now).min();
        }
        exec(
            conn,
            "UPDATE workspaces SET next_reminder_at = $1 WHERE id = $2",
            [next_reminder.into(), ws.id.clone().into()],
        )
        .await?;
    }
    outbox::write(conn, events, now).await?;
    Ok(sent)
}
