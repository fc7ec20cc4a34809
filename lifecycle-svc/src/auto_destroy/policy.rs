//! Policy changes that move many schedules at once: an organization's settings (lead times,
//! longest inactivity, minimum notice, the label policy that protects) and a project's default
//! inactivity. Each gives the minimum notice (AD-12) and is held to the blast-radius guard
//! (AD-13): a change that would bring more than `confirm_threshold` workspaces' destroys within
//! 7 days must echo that count back.

use ebb_common::time::EpochMs;
use ebb_common::{Error, Result};
use sea_orm::ConnectionTrait;

use crate::store::{for_update, query_all};
use crate::tenancy::orgs::{self, OrgRow, OrgSettings};
use crate::tenancy::projects::{self, ProjectChanges, ProjectRow};
use crate::workspaces::{self, WORKSPACE_COLUMNS, WORKSPACE_FROM, WorkspaceRow};

/// How far ahead the blast-radius guard looks.
pub const BLAST_RADIUS_WINDOW_MS: i64 = 7 * 86_400_000;

/// A workspace whose destroy a policy change brought within the blast-radius window.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub workspace_id: String,
    pub workspace_name: String,
    pub destroy_at: EpochMs,
    /// `auto_destroy_at`, `inactivity`, `retry` or `minimum_notice`.
    pub reason: &'static str,
    /// The scheduled time, when a destroy window moved the destroy to `destroy_at`.
    pub scheduled_at: Option<EpochMs>,
}

/// Whether a workspace's schedule moved into the window: due within it now, and not due that
/// soon before.
pub fn newly_within_window(before: Option<EpochMs>, after: Option<EpochMs>, now: EpochMs) -> bool {
    let horizon = now.saturating_add(BLAST_RADIUS_WINDOW_MS);
    match after {
        Some(at) if at <= horizon => before.is_none_or(|b| b > horizon || at < b),
        _ => false,
    }
}

/// The blast-radius guard (AD-13): more than `threshold` newly scheduled destroys need
/// `confirm_count` equal to their number.
pub fn check_blast_radius(scheduled: usize, threshold: i32, confirm_count: i32) -> Result<()> {
    let threshold = usize::try_from(threshold).unwrap_or(0);
    if scheduled <= threshold || usize::try_from(confirm_count).ok() == Some(scheduled) {
        return Ok(());
    }
    Err(Error::precondition_reason(
        "CONFIRM_COUNT_REQUIRED",
        format!(
            "this change would schedule {scheduled} workspaces to be destroyed within 7 days, \
             more than the organization's confirm_threshold of {threshold}; preview it with \
             PreviewAutoDestroy and repeat the request with confirm_count = {scheduled}"
        ),
        [
            ("count", scheduled.to_string()),
            ("confirm_threshold", threshold.to_string()),
        ],
    ))
}

/// Re-saves `affected` after a policy change: protection follows the label policy, the minimum
/// notice is given, and what comes due within 7 days is returned, soonest first.
async fn reschedule(
    conn: &impl ConnectionTrait,
    org: &OrgRow,
    affected: Vec<WorkspaceRow>,
    actor: &str,
    now: EpochMs,
) -> Result<Vec<Scheduled>> {
    let mut scheduled = Vec::new();
    for mut ws in affected {
        let before = ws.next_auto_destroy_at;
        // Fails closed: labels that do not decode count as protected.
        ws.protected_by_policy = ws.labels().map_or(true, |labels| org.protects(&labels));
        ws.give_notice(org, before, now)?;
        workspaces::save(conn, &mut ws, org, actor, now).await?;
        if newly_within_window(before, ws.next_auto_destroy_at, now)
            && let Some(at) = ws.next_auto_destroy_at
        {
            scheduled.push(Scheduled {
                workspace_id: ws.id.clone(),
                workspace_name: ws.name.clone(),
                destroy_at: at,
                reason: ws.timing().reason(),
                scheduled_at: ws.window_held_due_at,
            });
        }
    }
    scheduled.sort_by_key(|s| s.destroy_at);
    Ok(scheduled)
}

/// A change of an organization's settings: the paths to change and the new values (already
/// validated), applied to the settings as they are inside the transaction.
pub struct SettingsChange<'a> {
    /// Takes the current settings and gives the new ones.
    pub merge: &'a (dyn Fn(OrgSettings) -> OrgSettings + Sync),
    /// The etag the caller read; empty for none.
    pub etag: &'a str,
    pub confirm_count: i32,
}

/// Replaces an organization's settings in one transaction — read under a row lock, checked
/// against the caller's etag (stale → ABORTED), merged by mask — and re-evaluates its
/// workspaces' protection and schedules.
pub async fn update_org_settings(
    conn: &impl ConnectionTrait,
    id: &str,
    change: &SettingsChange<'_>,
    actor: &str,
    now: EpochMs,
) -> Result<(OrgRow, Vec<Scheduled>)> {
    let current = orgs::lock_org(conn, id).await?;
    if !change.etag.is_empty() && change.etag != current.etag() {
        return Err(Error::Aborted(format!(
            "organization {id} changed since it was read (etag {} is stale, current {}); \
             read it again and retry",
            change.etag,
            current.etag()
        )));
    }
    let settings = (change.merge)(current.settings()?);
    let org = orgs::update_org_settings(conn, id, &settings, actor, now).await?;
    let affected: Vec<WorkspaceRow> = query_all(
        conn,
        &format!(
            "SELECT {WORKSPACE_COLUMNS} FROM {WORKSPACE_FROM} WHERE w.organization_id = $1{}",
            for_update(conn, "w")
        ),
        [id.into()],
    )
    .await?;
    let scheduled = reschedule(conn, &org, affected, actor, now).await?;
    check_blast_radius(scheduled.len(), org.confirm_threshold, change.confirm_count)?;
    Ok((org, scheduled))
}

/// Renames a project and/or changes its default inactivity or destroy windows; the workspaces
/// that follow are re-planned, with the minimum notice and under the blast-radius guard.
pub async fn update_project(
    conn: &impl ConnectionTrait,
    id: &str,
    changes: &ProjectChanges<'_>,
    confirm_count: i32,
    actor: &str,
    now: EpochMs,
) -> Result<(ProjectRow, Vec<Scheduled>)> {
    let project = projects::update_project(conn, id, changes, actor, now).await?;
    let destroy_windows = changes.destroy_windows;
    if changes.default_inactivity_ms.is_none() && destroy_windows.is_none() {
        return Ok((project, Vec::new()));
    }
    let org = orgs::get_org(conn, &project.organization_id).await?;
    // New windows move every workspace of the project; a new default only those inheriting it.
    let only_inheriting = if destroy_windows.is_some() {
        ""
    } else {
        " AND w.inherits_project_auto_destroy = TRUE"
    };
    let inheriting: Vec<WorkspaceRow> = query_all(
        conn,
        &format!(
            "SELECT {WORKSPACE_COLUMNS} FROM {WORKSPACE_FROM} \
             WHERE w.project_id = $1{only_inheriting}{}",
            for_update(conn, "w")
        ),
        [id.into()],
    )
    .await?;
    let scheduled = reschedule(conn, &org, inheriting, actor, now).await?;
    check_blast_radius(scheduled.len(), org.confirm_threshold, confirm_count)?;
    Ok((project, scheduled))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: i64 = 86_400_000;

    #[test]
    fn only_schedules_moved_into_the_window_count() {
        let now = 100 * D;
        assert!(newly_within_window(None, Some(now + D), now));
        assert!(newly_within_window(
            Some(now + 30 * D),
            Some(now + 2 * D),
            now
        ));
        assert!(
            newly_within_window(Some(now + 5 * D), Some(now + 2 * D), now),
            "sooner"
        );
        assert!(!newly_within_window(
            Some(now + 2 * D),
            Some(now + 2 * D),
            now
        ));
        assert!(
            !newly_within_window(Some(now + D), Some(now + 3 * D), now),
            "later"
        );
        assert!(
            !newly_within_window(None, Some(now + 8 * D), now),
            "outside"
        );
        assert!(!newly_within_window(Some(now + D), None, now));
    }

    #[test]
    fn the_guard_needs_the_exact_count_above_the_threshold() {
        assert!(check_blast_radius(25, 25, 0).is_ok());
        assert!(check_blast_radius(26, 25, 0).is_err());
        assert!(check_blast_radius(26, 25, 25).is_err());
        assert!(check_blast_radius(26, 25, 26).is_ok());
        let err = check_blast_radius(40, 25, 0).expect_err("refused");
        assert!(err.to_string().contains("confirm_count = 40"), "{err}");
    }
}
