//! A workspace's auto-destroy settings: set, clear and extend its schedule (AD-2, AD-4, AD-11).

use ebb_common::time::{EpochMs, rfc3339};
use ebb_common::{Error, Result};
use sea_orm::ConnectionTrait;
use serde_json::json;

use crate::events::{NewEvent, outbox};
use crate::tenancy::orgs::{check_inactivity_max, get_org};
use crate::timing::recurrence::Recurrence;
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

/// What [`set_auto_destroy`] sets; unset parts are unchanged.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    /// The one-shot time.
    pub at: Option<EpochMs>,
    /// The inactivity period.
    pub inactivity_ms: Option<i64>,
    /// A recurring schedule.
    pub recurring: Option<Recurrence>,
}

/// Sets the one-shot time, the inactivity period and/or the recurring schedule.
pub async fn set_auto_destroy(
    conn: &impl ConnectionTrait,
    id: &str,
    schedule: Schedule,
    actor: &str,
    now: EpochMs,
) -> Result<WorkspaceRow> {
    let Schedule {
        at,
        inactivity_ms,
        recurring,
    } = schedule;
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
    if let Some(recurrence) = &recurring {
        // AD-12: the first occurrence is the first at or after the minimum notice; sooner
        // ones are skipped (never pulled off the times the cron names).
        let first = recurrence
            .next_at_or_after(now.saturating_add(org.minimum_notice_ms()?))
            .ok_or_else(|| {
                Error::invalid(
                    "recurring.cron",
                    format!("{:?} never occurs", recurrence.cron()),
                )
            })?;
        ws.recurring_cron = Some(recurrence.cron().to_owned());
        ws.recurring_time_zone = Some(recurrence.time_zone().to_owned());
        ws.recurring_due_at = Some(first);
    }
    if inactivity_ms.is_some() || recurring.is_some() {
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
                "recurring": ws.recurring_cron.as_ref().map(|cron| json!({
                    "cron": cron, "time_zone": ws.recurring_time_zone,
                    "next_occurrence": ws.recurring_due_at.map(rfc3339),
                })),
                "next_auto_destroy_at": ws.next_auto_destroy_at.map(rfc3339),
                "owner": ws.owner(),
            }),
        )],
        now,
    )
    .await?;
    get_workspace(conn, id).await
}

/// What [`clear_auto_destroy`] clears.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clear {
    /// The one-shot time.
    pub at: bool,
    /// The inactivity period.
    pub inactivity: bool,
    /// With `inactivity`: go back to the project's default.
    pub inherit: bool,
    /// The recurring schedule.
    pub recurring: bool,
}

/// Clears the one-shot time, the inactivity period and/or the recurring schedule.
pub async fn clear_auto_destroy(
    conn: &impl ConnectionTrait,
    id: &str,
    clear: Clear,
    actor: &str,
    now: EpochMs,
) -> Result<WorkspaceRow> {
    let Clear {
        at: clear_at,
        inactivity: clear_inactivity,
        inherit,
        recurring: clear_recurring,
    } = clear;
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
    if clear_recurring {
        ws.recurring_cron = None;
        ws.recurring_time_zone = None;
        ws.recurring_due_at = None;
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
                "clear_recurring": clear_recurring,
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
    // A recurring schedule: the current occurrence moves; the next ones follow the cron from
    // there.
    if timing.recurring_due() == Some(current) {
        ws.recurring_due_at = Some(target);
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
