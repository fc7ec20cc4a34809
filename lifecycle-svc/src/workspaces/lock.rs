//! Locking a workspace (runs wait) and archiving or restoring it.

use ebb_common::time::EpochMs;
use ebb_common::{Error, Result};
use sea_orm::ConnectionTrait;
use serde_json::json;

use crate::events::{NewEvent, outbox};
use crate::runs::has_active_run;
use crate::tenancy::orgs::get_org;
use crate::workspaces::WorkspaceState;
use crate::workspaces::{WorkspaceRow, get_workspace, lock_workspace_row, save};

/// Locks or unlocks a workspace.
pub async fn set_lock(
    conn: &impl ConnectionTrait,
    id: &str,
    lock: Option<String>,
    actor: &str,
    now: EpochMs,
) -> Result<WorkspaceRow> {
    let mut ws = lock_workspace_row(conn, id).await?;
    let org = get_org(conn, &ws.organization_id).await?;
    let (event, locked) = match lock {
        Some(reason) => {
            if ws.locked {
                return Err(Error::precondition(format!(
                    "workspace {id} is already locked: {}",
                    ws.lock_reason
                )));
            }
            ws.lock_reason = reason;
            ("workspace.locked", true)
        }
        None => {
            if !ws.locked {
                return Err(Error::precondition(format!("workspace {id} is not locked")));
            }
            ws.lock_reason.clear();
            ("workspace.unlocked", false)
        }
    };
    ws.locked = locked;
    save(conn, &mut ws, &org, actor, now).await?;
    outbox::write(
        conn,
        vec![NewEvent::new(
            &ws.organization_id,
            event,
            "workspace",
            id,
            actor,
            json!({"reason": ws.lock_reason}),
        )],
        now,
    )
    .await?;
    get_workspace(conn, id).await
}

/// Archives or restores a workspace. Archived workspaces are kept, never deleted, and have no
/// pending auto-destroy.
pub async fn set_archived(
    conn: &impl ConnectionTrait,
    id: &str,
    archived: bool,
    actor: &str,
    now: EpochMs,
) -> Result<WorkspaceRow> {
    let mut ws = lock_workspace_row(conn, id).await?;
    let org = get_org(conn, &ws.organization_id).await?;
    let target = if archived {
        WorkspaceState::Archived
    } else {
        WorkspaceState::Active
    };
    if ws.state == target {
        return Err(Error::precondition(format!(
            "workspace {id} is already {target}"
        )));
    }
    if archived && has_active_run(conn, id).await? {
        return Err(Error::precondition(format!(
            "workspace {id} has an active run; cancel it or wait for it to finish"
        )));
    }
    ws.state = target;
    let mut skipped = Vec::new();
    if !archived {
        // What came due while it was archived is consumed, never fired, and a restored
        // workspace is never due without the minimum notice (AD-12).
        skipped = ws.consume_passed("archived", actor, now);
        ws.give_notice(&org, None, now)?;
    }
    outbox::write(conn, skipped, now).await?;
    save(conn, &mut ws, &org, actor, now).await?;
    let event = if archived {
        "workspace.archived"
    } else {
        "workspace.restored"
    };
    outbox::write(
        conn,
        vec![NewEvent::new(
            &ws.organization_id,
            event,
            "workspace",
            id,
            actor,
            json!({}),
        )],
        now,
    )
    .await?;
    get_workspace(conn, id).await
}
