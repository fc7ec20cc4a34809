//! What a finished destroy run means for its workspace (AD-7, AD-8, AD-9).

use ebb_common::Result;
use ebb_common::time::{EpochMs, rfc3339};
use sea_orm::ConnectionTrait;
use serde_json::json;

use crate::events::{NewEvent, outbox};
use crate::runs::RunRow;
use crate::runs::RunSource;
use crate::runs::latest_run_id;
use crate::tenancy::orgs;
use crate::timing::math;
use crate::workspaces;
use crate::workspaces::AutoDestroyStatus;
use crate::workspaces::WorkspaceState;

/// What a finished destroy run means for its workspace. `succeeded` is `None` for a run that
/// was canceled or errored without an outcome.
pub async fn destroy_run_finished(
    conn: &impl ConnectionTrait,
    run: &RunRow,
    succeeded: Option<bool>,
    actor: &str,
    now: EpochMs,
    retry_backoff_ms: i64,
) -> Result<()> {
    let mut ws = workspaces::lock_workspace_row(conn, &run.workspace_id).await?;
    let org = orgs::get_org(conn, &ws.organization_id).await?;
    let mut events = Vec::new();
    let auto = run.source == RunSource::AutoDestroy;
    match (succeeded, auto) {
        (Some(true), true) => {
            // AD-7: archive (never delete), clear the one-shot, keep the inactivity setting
            // (it schedules again only after a new applied state version). A workspace with a
            // recurring schedule stays active: it is destroyed again by the next occurrence
            // after the next applied state version.
            let recurring = ws.recurring_cron.is_some();
            if !recurring {
                ws.state = WorkspaceState::Archived;
            }
            ws.auto_destroy_at = None;
            ws.applied_since_destroy = false;
            ws.auto_destroy_status = AutoDestroyStatus::Succeeded;
            ws.auto_destroy_failures = 0;
            ws.auto_destroy_retry_at = None;
            events.push(NewEvent::new(&ws.organization_id, "workspace.auto_destroy.succeeded", "workspace", &ws.id, actor, json!({
                "run_id": run.id, "workspace_name": ws.name, "due_at": run.fire_due_at.map(rfc3339),
                "archived": !recurring, "owner": ws.owner(),
            })));
            if !recurring {
                events.push(NewEvent::new(
                    &ws.organization_id,
                    "workspace.archived",
                    "workspace",
                    &ws.id,
                    actor,
                    json!({"run_id": run.id}),
                ));
            }
        }
        (Some(true), false) => {
            // AD-9: a manual destroy before the scheduled time cancels the one-shot; and
            // inactivity waits for the next applied state version.
            ws.applied_since_destroy = false;
            if ws.auto_destroy_at.is_some_and(|at| at > now) {
                ws.auto_destroy_at = None;
                events.push(NewEvent::new(&ws.organization_id, "workspace.auto_destroy.cleared", "workspace", &ws.id, actor, json!({
                    "reason": "manual destroy succeeded before the scheduled time", "run_id": run.id,
                })));
            }
        }
        (outcome, true) => {
            // AD-8: retry while this run is still the workspace's latest, up to the limit.
            let latest = latest_run_id(conn, &ws.id).await?;
            let is_latest = latest.as_deref() == Some(run.id.as_str());
            let failures = ws.auto_destroy_failures + 1;
            ws.auto_destroy_failures = failures;
            let will_retry = outcome.is_some() && is_latest && failures <= org.destroy_retry_limit;
            if will_retry {
                let at = now + math::retry_backoff_ms(retry_backoff_ms, failures);
                ws.auto_destroy_retry_at = Some(at);
                ws.auto_destroy_status = AutoDestroyStatus::Retrying;
            } else {
                ws.auto_destroy_retry_at = None;
                ws.auto_destroy_status = if outcome.is_some() {
                    AutoDestroyStatus::Failed
                } else {
                    AutoDestroyStatus::Idle
                };
            }
            events.push(NewEvent::new(
                &ws.organization_id,
                "workspace.auto_destroy.failed",
                "workspace",
                &ws.id,
                actor,
                json!({
                    "run_id": run.id,
                    "workspace_name": ws.name,
                    "status": run.status,
                    "failures": failures,
                    "will_retry": will_retry,
                    "retry_at": ws.auto_destroy_retry_at.map(rfc3339),
                    "is_latest_run": is_latest,
                    "owner": ws.owner(),
                }),
            ));
        }
        (_, false) => {}
    }
    workspaces::save(conn, &mut ws, &org, actor, now).await?;
    outbox::write(conn, events, now).await
}
