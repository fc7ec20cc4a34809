//! Projects and their default auto-destroy inactivity.

use ebb_common::time::EpochMs;
use ebb_common::{Error, Result};
use sea_orm::{ConnectionTrait, FromQueryResult};
use serde_json::json;

use crate::events::{NewEvent, outbox};
use crate::store::{exec, keyset, query_one, select_all};
use crate::tenancy::orgs::{check_inactivity_max, get_org};
use crate::timing::windows::DestroyWindows;
use sea_orm::sea_query::{Expr, ExprTrait, Order, Query};

/// Columns of [`ProjectRow`], in order.
pub const PROJECT_COLUMNS: &str =
    "id, organization_id, name, default_inactivity_ms, destroy_windows, created_at, updated_at";

/// A project.
#[derive(Debug, Clone, FromQueryResult)]
pub struct ProjectRow {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub default_inactivity_ms: Option<i64>,
    /// Its own destroy windows (JSON), replacing the organization's; `None`: the
    /// organization's.
    pub destroy_windows: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

// --- projects ------------------------------------------------------------------------------

/// Creates a project.
pub async fn create_project(
    conn: &impl ConnectionTrait,
    org_id: &str,
    name: &str,
    default_inactivity_ms: Option<i64>,
    destroy_windows: Option<&DestroyWindows>,
    actor: &str,
    now: EpochMs,
) -> Result<ProjectRow> {
    let org = get_org(conn, org_id).await?;
    check_inactivity_max(
        "default_auto_destroy_inactivity",
        default_inactivity_ms,
        &org,
    )?;
    let id = uuid::Uuid::now_v7().to_string();
    let n = exec(
        conn,
        "INSERT INTO projects (id, organization_id, name, default_inactivity_ms, created_at, \
         updated_at, destroy_windows) VALUES ($1, $2, $3, $4, $5, $5, $6) \
         ON CONFLICT (organization_id, name) DO NOTHING",
        [
            id.clone().into(),
            org_id.into(),
            name.into(),
            default_inactivity_ms.into(),
            now.into(),
            destroy_windows.map(DestroyWindows::to_json).into(),
        ],
    )
    .await?;
    if n == 0 {
        return Err(Error::AlreadyExists(format!(
            "a project named {name:?} already exists in the organization"
        )));
    }
    outbox::write(
        conn,
        vec![NewEvent::new(
            org_id,
            "project.created",
            "project",
            &id,
            actor,
            json!({"name": name}),
        )],
        now,
    )
    .await?;
    get_project(conn, &id).await
}

/// A project by id.
pub async fn get_project(conn: &impl ConnectionTrait, id: &str) -> Result<ProjectRow> {
    query_one(
        conn,
        &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1"),
        [id.into()],
    )
    .await?
    .ok_or_else(|| Error::not_found("project", id))
}

/// One page of an organization's projects, oldest first (optionally only the one named
/// `name`), after the keyset position `after` (created_at, id).
pub async fn list_projects(
    conn: &impl ConnectionTrait,
    organization_id: &str,
    name: Option<&str>,
    after: Option<(i64, String)>,
    limit: u64,
) -> Result<Vec<ProjectRow>> {
    let mut q = Query::select();
    q.expr(Expr::cust(format!("{PROJECT_COLUMNS} FROM projects")))
        .and_where(Expr::col("organization_id").eq(organization_id));
    if let Some(name) = name {
        q.and_where(Expr::col("name").eq(name));
    }
    if let Some(position) = after {
        q.cond_where(keyset("created_at", "id", position, Order::Asc));
    }
    q.order_by("created_at", Order::Asc)
        .order_by("id", Order::Asc)
        .limit(limit);
    select_all(conn, &q).await
}

/// What a project update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProjectChanges<'a> {
    pub name: Option<&'a str>,
    /// `Some(None)` clears the default.
    pub default_inactivity_ms: Option<Option<i64>>,
    /// `Some(None)` returns the project to its organization's windows.
    pub destroy_windows: Option<Option<&'a DestroyWindows>>,
}

/// Renames a project and/or changes its default inactivity or destroy windows; see
/// `auto_destroy::policy` for the workspaces that follow.
pub async fn update_project(
    conn: &impl ConnectionTrait,
    id: &str,
    changes: &ProjectChanges<'_>,
    actor: &str,
    now: EpochMs,
) -> Result<ProjectRow> {
    let ProjectChanges {
        name,
        default_inactivity_ms,
        destroy_windows,
    } = *changes;
    let mut project = get_project(conn, id).await?;
    let org = get_org(conn, &project.organization_id).await?;
    if let Some(name) = name {
        project.name = name.to_owned();
    }
    if let Some(d) = default_inactivity_ms {
        check_inactivity_max("default_auto_destroy_inactivity", d, &org)?;
        project.default_inactivity_ms = d;
    }
    if let Some(w) = destroy_windows {
        project.destroy_windows = w.map(DestroyWindows::to_json);
    }
    let renamed = conn
        .execute_raw(ebb_common::db::stmt(
            conn.get_database_backend(),
            "UPDATE projects SET name = $1, default_inactivity_ms = $2, updated_at = $3, \
             destroy_windows = $5 WHERE id = $4",
            [
                project.name.clone().into(),
                project.default_inactivity_ms.into(),
                now.into(),
                id.into(),
                project.destroy_windows.clone().into(),
            ],
        ))
        .await;
    match renamed {
        Err(e) if ebb_common::db::is_unique_violation(&e) => {
            return Err(Error::AlreadyExists(format!(
                "a project named {:?} already exists in the organization",
                project.name
            )));
        }
        other => {
            other?;
        }
    }
    outbox::write(
        conn,
        vec![NewEvent::new(
            &project.organization_id,
            "project.updated",
            "project",
            id,
            actor,
            json!({
                "name": project.name,
                "default_inactivity_ms": project.default_inactivity_ms,
                "destroy_windows": destroy_windows.map(|w| w.map(|w| w.spec().clone())),
            }),
        )],
        now,
    )
    .await?;
    get_project(conn, id).await
}
