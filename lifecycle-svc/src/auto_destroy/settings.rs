//! A workspace's auto-destroy settings: set, clear and extend its schedule (AD-2, AD-4, AD-11).

use ebb_common::time::{EpochMs, rfc3339};
use ebb_common::{Error, Result};
use sea_orm::ConnectionTrait;
use serde_json::json;

use crate::events::{NewEvent, outbox};
use crate::tenancy::orgs::{check_inactivity_max, get_org};
use crate::workspaces::AutoDestroyStatus;
use crate::workspaces::WorkspaceState;
use crate::workspaces::{WorkspaceRow, get_workspace, lock_workspace_row, save};

fn refuse_if_protected(ws: &WorkspaceRow) -> Result<()> {
    if ws.protected {
        return Err(Error::precondition_reason(
            "WORKSPACE_PROTECTED",
            format!(
                "workspace {} is protected; it cannot get an auto-destroy schedule",
                ws.id
            ),
            [("workspace_id", ws.id.as_str())],
        ));
    }
    if ws.protected_by_policy {
        return Err(Error::precondition_reason(
            "WORKSPACE_PROTECTED_BY_POLICY",
            format!(
                "workspace {} is protected by the organization's label policy; it cannot get \
                 an auto-destroy schedule",
                ws.id
            ),
            [("workspace_id", ws.id.as_str())],
        ));
    }
    Ok(())
}

/// Sets the one-shot time and/or the inactivity period.
pub async fn set_auto_destroy(
    conn: &impl ConnectionTrait,
    id: &str,
    at: Option<EpochMs>,
    inactivity_ms: Option<i64>,
    actor: &str,
    now: EpochMs,
) -> Result<WorkspaceRow> {
    let mut ws = lock_workspace_row(conn, id).await?;
    refuse_if_protected(&ws)?;
    if ws.state == WorkspaceState::Archived {
        return Err(Error::precondition(format!(
            "workspace {id} is archived; restore it first"
        )));
    }
    let org = get_org(conn, &ws.organization_id).await?;
    check_inactivity_max("auto_destroy_inactivity", inactivity_ms, &org)?;
    let before = ws.next_auto_destroy_at;
    if let Some(at) = at {
        if at <= now {
            return Err(Error::invalid("auto_destroy_at", "must be in the future"));
        }
        ws.auto_destroy_at = Some(at);
    }
    if inactivity_ms.is_some() {
        ws.auto_destroy_inactivity_ms = inactivity_ms;
        ws.inactivity_extension_ms = 0;
        ws.inactivity_not_before = None;
        ws.inherits_project_auto_destroy = false;
    }
    // A new schedule starts afresh.
    ws.auto_destroy_status = AutoDestroyStatus::Idle;
    ws.auto_destroy_failures = 0;
    ws.auto_destroy_retry_at = None;
    if inactivity_ms.is_some() {
        // AD-12: a new inactivity period never makes the destroy due without notice; the
        // explicit one-shot is honoured as given.
        ws.give_notice(&org, before, now)?;
    }
    save(conn, &mut ws, &org, actor, now).await?;
    outbox::write(
        conn,
        vec![NewEvent::new(
            &ws.organization_id,
            "workspace.auto_destroy.scheduled",
            "workspace",
            id,
            actor,
            json!({
                "auto_destroy_at": ws.auto_destroy_at.map(rfc3339),
                "auto_destroy_inactivity_ms": ws.effective_inactivity_ms(),
                "next_auto_destroy_at": ws.next_auto_destroy_at.map(rfc3339),
            }),
        )],
        now,
    )
    .await?;
    get_workspace(conn, id).await
}

/// Clears the one-shot time and/or the inactivity period.
pub async fn clear_auto_destroy(
    conn: &impl ConnectionTrait,
    id: &str,
    clear_at: bool,
    clear_inactivity: bool,
    inherit: bool,
    actor: &str,
    now: EpochMs,
) -> Result<WorkspaceRow> {
    let mut ws = lock_workspace_row(conn, id).await?;
    let org = get_org(conn, &ws.organization_id).await?;
    let before = ws.next_auto_destroy_at;
    if clear_at {
        ws.auto_destroy_at = None;
    }
    if clear_inactivity {
        ws.auto_destroy_inactivity_ms = None;
        ws.inherits_project_auto_destroy = inherit;
    }
    ws.auto_destroy_retry_at = None;
    ws.auto_destroy_failures = 0;
    if ws.auto_destroy_status != AutoDestroyStatus::Queued {
        ws.auto_destroy_status = AutoDestroyStatus::Idle;
    }
    // Whatever clearing re-arms (the project's default, or the inactivity of a workspace whose
    // auto-destroy had FAILED) comes due no sooner than the minimum notice (AD-12).
    ws.give_notice(&org, before, now)?;
    save(conn, &mut ws, &org, actor, now).await?;
    outbox::write(
        conn,
        vec![NewEvent::new(
            &ws.organization_id,
            "workspace.auto_destroy.cleared",
            "workspace",
            id,
            actor,
            json!({
                "clear_auto_destroy_at": clear_at,
                "clear_auto_destroy_inactivity": clear_inactivity,
                "next_auto_destroy_at": ws.next_auto_destroy_at.map(rfc3339),
            }),
        )],
        now,
    )
    .await?;
    get_workspace(conn, id).await
}

/// Pushes the pending destroy later by `by_ms`, within the organization's maximum: a one-shot
/// moves later; an inactivity deadline is pushed by restarting its clock later.
pub async fn extend_auto_destroy(
    conn: &impl ConnectionTrait,
    id: &str,
    by_ms: i64,
    actor: &str,
    now: EpochMs,
) -> Result<WorkspaceRow> {
    let mut ws = lock_workspace_row(conn, id).await?;
    let org = get_org(conn, &ws.organization_id).await?;
    let Some(current) = ws.next_auto_destroy_at else {
        return Err(Error::precondition(format!(
            "workspace {id} has no pending auto-destroy to extend"
        )));
    };
    let target = current.saturating_add(by_ms);
    if target - now > org.max_inactivity_ms {
        return Err(Error::invalid(
            "extend_by",
            format!(
                "would put the destroy {} away, beyond the organization's maximum of {}",
                ebb_common::time::human(target - now),
                ebb_common::time::human(org.max_inactivity_ms)
            ),
        ));
    }
    let timing = ws.timing();
    if ws.auto_destroy_at == Some(current) {
        ws.auto_destroy_at = Some(target);
    }
    if timing.inactivity_due() == Some(current) {
        ws.inactivity_extension_ms = ws.inactivity_extension_ms.saturating_add(by_ms);
        // A deadline the minimum notice set moves with the extension too.
        if let Some(floor) = ws.inactivity_not_before {
            ws.inactivity_not_before = Some(floor.saturating_add(by_ms));
        }
    }
    if ws.auto_destroy_retry_at == Some(current) {
        ws.auto_destroy_retry_at = Some(target);
    }
    save(conn, &mut ws, &org, actor, now).await?;
    outbox::write(
        conn,
        vec![NewEvent::new(
            &ws.organization_id,
            "workspace.auto_destroy.extended",
            "workspace",
            id,
            actor,
            json!({
                "previous": rfc3339(current),
                "next_auto_destroy_at": ws.next_auto_destroy_at.map(rfc3339),
            }),
        )],
        now,
    )
    .await?;
    get_workspace(conn, id).await
}
