//! State versions: every applied state resets the inactivity clock and its reminders (AD-9).

use ebb_common::time::{EpochMs, rfc3339};
use ebb_common::{Error, Result};
use sea_orm::{ConnectionTrait, FromQueryResult};
use serde_json::json;

use crate::events::{NewEvent, outbox};
use crate::store::{exec, query_all, query_one};
use crate::tenancy::orgs::get_org;
use crate::workspaces::AutoDestroyStatus;
use crate::workspaces::WorkspaceState;
use crate::workspaces::{WorkspaceRow, get_workspace, lock_workspace_row, save};

/// A state version.
#[derive(Debug, Clone, FromQueryResult)]
pub struct StateVersionRow {
    pub id: String,
    pub workspace_id: String,
    pub serial: i64,
    pub run_id: Option<String>,
    pub created_at: i64,
}

// --- state versions ------------------------------------------------------------------------

/// Records an applied state version. Unless it came from a destroy, it resets the inactivity
/// timer (and so its reminders) and re-arms the inactivity branch after a destroy.
pub async fn record_state_version(
    conn: &impl ConnectionTrait,
    workspace_id: &str,
    serial: i64,
    run_id: Option<&str>,
    from_destroy: bool,
    actor: &str,
    now: EpochMs,
) -> Result<(StateVersionRow, WorkspaceRow)> {
    let mut ws = lock_workspace_row(conn, workspace_id).await?;
    if ws.state == WorkspaceState::Archived {
        return Err(Error::precondition(format!(
            "workspace {workspace_id} is archived; restore it first"
        )));
    }
    if serial <= ws.latest_serial {
        return Err(Error::precondition(format!(
            "serial {serial} is not greater than the latest serial {} of workspace {workspace_id}",
            ws.latest_serial
        )));
    }
    let org = get_org(conn, &ws.organization_id).await?;
    let id = uuid::Uuid::now_v7().to_string();
    exec(
        conn,
        "INSERT INTO state_versions (id, workspace_id, serial, run_id, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
        [
            id.clone().into(),
            workspace_id.into(),
            serial.into(),
            run_id.map(str::to_owned).into(),
            now.into(),
        ],
    )
    .await?;
    ws.latest_serial = serial;
    if !from_destroy {
        ws.last_state_change_at = Some(now);
        ws.applied_since_destroy = true;
        ws.inactivity_extension_ms = 0;
        // Activity is never pushed by the minimum notice (AD-12).
        ws.inactivity_not_before = None;
        if ws.auto_destroy_status == AutoDestroyStatus::Succeeded {
            ws.auto_destroy_status = AutoDestroyStatus::Idle;
        }
    }
    save(conn, &mut ws, &org, actor, now).await?;
    outbox::write(
        conn,
        vec![NewEvent::new(
            &ws.organization_id,
            "state_version.recorded",
            "workspace",
            workspace_id,
            actor,
            json!({
                "state_version_id": id,
                "serial": serial,
                "run_id": run_id,
                "next_auto_destroy_at": ws.next_auto_destroy_at.map(rfc3339),
            }),
        )],
        now,
    )
    .await?;
    let sv = query_one(
        conn,
        "SELECT id, workspace_id, serial, run_id, created_at FROM state_versions WHERE id = $1",
        [id.into()],
    )
    .await?
    .ok_or_else(|| Error::Internal("state version vanished".into()))?;
    Ok((sv, get_workspace(conn, workspace_id).await?))
}

/// State versions of a workspace, newest first, before `before_serial`.
pub async fn list_state_versions(
    conn: &impl ConnectionTrait,
    workspace_id: &str,
    before_serial: Option<i64>,
    limit: u64,
) -> Result<Vec<StateVersionRow>> {
    get_workspace(conn, workspace_id).await?;
    query_all(
        conn,
        &format!(
            "SELECT id, workspace_id, serial, run_id, created_at FROM state_versions \
             WHERE workspace_id = $1 AND serial < $2 ORDER BY serial DESC LIMIT {limit}"
        ),
        [
            workspace_id.into(),
            before_serial.unwrap_or(i64::MAX).into(),
        ],
    )
    .await
}
