//! Runs queued by people on a workspace.

use ebb_common::time::EpochMs;
use ebb_common::{Error, Result};
use sea_orm::ConnectionTrait;
use serde_json::json;

use crate::events::{NewEvent, outbox};
use crate::runs::{NewRun, RunRow, get_run, insert_run};
use crate::workspaces;
use crate::workspaces::WorkspaceState;

/// Queues a manual run.
pub async fn create_manual_run(
    conn: &impl ConnectionTrait,
    workspace_id: &str,
    is_destroy: bool,
    auto_apply: bool,
    message: &str,
    actor: &str,
    now: EpochMs,
) -> Result<RunRow> {
    let ws = workspaces::lock_workspace_row(conn, workspace_id).await?;
    if ws.state == WorkspaceState::Archived {
        return Err(Error::precondition(format!(
            "workspace {workspace_id} is archived; restore it first"
        )));
    }
    if ws.locked {
        return Err(Error::precondition(format!(
            "workspace {workspace_id} is locked: {}",
            ws.lock_reason
        )));
    }
    let new = NewRun {
        workspace_id,
        is_destroy,
        auto_apply,
        source: "manual",
        fire_due_at: None,
        message,
        approval_deadline: None,
    };
    let Some(id) = insert_run(conn, &ws.organization_id, &ws.working_directory, &new, now).await?
    else {
        return Err(Error::precondition_reason(
            "ACTIVE_DESTROY_RUN",
            format!("workspace {workspace_id} already has an active destroy run"),
            [("workspace_id", workspace_id)],
        ));
    };
    outbox::write(
        conn,
        vec![NewEvent::new(
            &ws.organization_id,
            "run.queued",
            "run",
            &id,
            actor,
            json!({
                "workspace_id": workspace_id, "is_destroy": is_destroy, "source": "manual",
            }),
        )],
        now,
    )
    .await?;
    get_run(conn, &id).await
}
