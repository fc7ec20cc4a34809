//! Policy changes that move many schedules at once: an organization's settings (lead times,
//! longest inactivity, the label policy that protects) and a project's default inactivity.

use ebb_common::Result;
use ebb_common::time::EpochMs;
use sea_orm::ConnectionTrait;

use crate::store::{for_update, query_all};
use crate::tenancy::orgs::{self, OrgRow, OrgSettings};
use crate::tenancy::projects::{self, ProjectRow};
use crate::workspaces::{self, WORKSPACE_COLUMNS, WORKSPACE_FROM, WorkspaceRow};

/// Replaces an organization's settings and re-evaluates its workspaces' protection and
/// schedules.
pub async fn update_org_settings(
    conn: &impl ConnectionTrait,
    id: &str,
    settings: &OrgSettings,
    actor: &str,
    now: EpochMs,
) -> Result<OrgRow> {
    let org = orgs::update_org_settings(conn, id, settings, actor, now).await?;
    let affected: Vec<WorkspaceRow> = query_all(
        conn,
        &format!(
            "SELECT {WORKSPACE_COLUMNS} FROM {WORKSPACE_FROM} WHERE w.organization_id = $1{}",
            for_update(conn, "w")
        ),
        [id.into()],
    )
    .await?;
    for mut ws in affected {
        // Fails closed: labels that do not decode count as protected.
        ws.protected_by_policy = ws.labels().map_or(true, |labels| org.protects(&labels));
        workspaces::save(conn, &mut ws, &org, now).await?;
    }
    Ok(org)
}

/// Renames a project and/or changes its default inactivity; the workspaces that inherit it
/// follow.
pub async fn update_project(
    conn: &impl ConnectionTrait,
    id: &str,
    name: Option<&str>,
    default_inactivity_ms: Option<Option<i64>>,
    actor: &str,
    now: EpochMs,
) -> Result<ProjectRow> {
    let project =
        projects::update_project(conn, id, name, default_inactivity_ms, actor, now).await?;
    if default_inactivity_ms.is_some() {
        let org = orgs::get_org(conn, &project.organization_id).await?;
        let inheriting: Vec<WorkspaceRow> = query_all(
            conn,
            &format!(
                "SELECT {WORKSPACE_COLUMNS} FROM {WORKSPACE_FROM} \
                 WHERE w.project_id = $1 AND w.inherits_project_auto_destroy = TRUE{}",
                for_update(conn, "w")
            ),
            [id.into()],
        )
        .await?;
        for mut ws in inheriting {
            workspaces::save(conn, &mut ws, &org, now).await?;
        }
    }
    Ok(project)
}
