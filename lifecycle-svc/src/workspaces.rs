//! Organizations, projects, workspaces, state versions and auto-destroy settings.

use std::collections::BTreeMap;

use ebb_common::time::{EpochMs, rfc3339};
use ebb_common::{Error, Result};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::json;

use crate::outbox::{self, NewEvent};
use crate::rows::{
    ORG_COLUMNS, OrgRow, PROJECT_COLUMNS, ProjectRow, StateVersionRow, WORKSPACE_COLUMNS,
    WORKSPACE_FROM, WorkspaceRow,
};
use crate::schedule;
use crate::sql::{exec, for_update, query_all, query_one};

/// Organization settings as validated values.
#[derive(Debug, Clone, PartialEq)]
pub struct OrgSettings {
    pub reminder_lead_times_ms: Vec<i64>,
    pub destroy_retry_limit: i32,
    pub max_inactivity_ms: i64,
    pub protected_labels: BTreeMap<String, String>,
}

impl Default for OrgSettings {
    fn default() -> Self {
        Self {
            reminder_lead_times_ms: vec![24 * 3_600_000, 12 * 3_600_000],
            destroy_retry_limit: 2,
            max_inactivity_ms: 9999 * 86_400_000,
            protected_labels: BTreeMap::new(),
        }
    }
}

// --- organizations -------------------------------------------------------------------------

/// Creates an organization.
pub async fn create_org(
    conn: &impl ConnectionTrait,
    name: &str,
    settings: &OrgSettings,
    actor: &str,
    now: EpochMs,
) -> Result<OrgRow> {
    let id = uuid::Uuid::now_v7().to_string();
    let inserted = exec(
        conn,
        "INSERT INTO organizations (id, name, reminder_lead_times_ms, destroy_retry_limit, \
         max_inactivity_ms, protected_labels, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (name) DO NOTHING",
        [
            id.clone().into(),
            name.into(),
            json!(settings.reminder_lead_times_ms).to_string().into(),
            settings.destroy_retry_limit.into(),
            settings.max_inactivity_ms.into(),
            json!(settings.protected_labels).to_string().into(),
            now.into(),
        ],
    )
    .await?;
    if inserted == 0 {
        return Err(Error::AlreadyExists(format!(
            "an organization named {name:?} already exists"
        )));
    }
    outbox::write(
        conn,
        vec![NewEvent::new(
            &id,
            "organization.created",
            "organization",
            &id,
            actor,
            json!({"name": name}),
        )],
        now,
    )
    .await?;
    get_org(conn, &id).await
}

/// An organization by id.
pub async fn get_org(conn: &impl ConnectionTrait, id: &str) -> Result<OrgRow> {
    query_one(
        conn,
        &format!("SELECT {ORG_COLUMNS} FROM organizations WHERE id = $1"),
        [id.into()],
    )
    .await?
    .ok_or_else(|| Error::not_found("organization", id))
}

/// Replaces an organization's settings and re-evaluates its workspaces' protection and
/// schedules.
pub async fn update_org_settings(
    conn: &impl ConnectionTrait,
    id: &str,
    settings: &OrgSettings,
    actor: &str,
    now: EpochMs,
) -> Result<OrgRow> {
    let n = exec(
        conn,
        "UPDATE organizations SET reminder_lead_times_ms = $1, destroy_retry_limit = $2, \
         max_inactivity_ms = $3, protected_labels = $4, updated_at = $5 WHERE id = $6",
        [
            json!(settings.reminder_lead_times_ms).to_string().into(),
            settings.destroy_retry_limit.into(),
            settings.max_inactivity_ms.into(),
            json!(settings.protected_labels).to_string().into(),
            now.into(),
            id.into(),
        ],
    )
    .await?;
    if n == 0 {
        return Err(Error::not_found("organization", id));
    }
    let org = get_org(conn, id).await?;
    let workspaces: Vec<WorkspaceRow> = query_all(
        conn,
        &format!(
            "SELECT {WORKSPACE_COLUMNS} FROM {WORKSPACE_FROM} WHERE w.organization_id = $1{}",
            for_update(conn, "w")
        ),
        [id.into()],
    )
    .await?;
    for mut ws in workspaces {
        ws.protected_by_policy = org.protects(&ws.labels());
        save(conn, &mut ws, &org, now).await?;
    }
    outbox::write(
        conn,
        vec![NewEvent::new(
            id,
            "organization.settings_updated",
            "organization",
            id,
            actor,
            json!({}),
        )],
        now,
    )
    .await?;
    Ok(org)
}

// --- projects ------------------------------------------------------------------------------

/// Creates a project.
pub async fn create_project(
    conn: &impl ConnectionTrait,
    org_id: &str,
    name: &str,
    default_inactivity_ms: Option<i64>,
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
         updated_at) VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (organization_id, name) DO NOTHING",
        [id.clone().into(), org_id.into(), name.into(), default_inactivity_ms.into(), now.into()],
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

/// Renames a project and/or changes its default inactivity; inheriting workspaces follow.
pub async fn update_project(
    conn: &impl ConnectionTrait,
    id: &str,
    name: Option<&str>,
    default_inactivity_ms: Option<Option<i64>>,
    actor: &str,
    now: EpochMs,
) -> Result<ProjectRow> {
    let mut project = get_project(conn, id).await?;
    let org = get_org(conn, &project.organization_id).await?;
    if let Some(name) = name {
        project.name = name.to_owned();
    }
    if let Some(d) = default_inactivity_ms {
        check_inactivity_max("default_auto_destroy_inactivity", d, &org)?;
        project.default_inactivity_ms = d;
    }
    let renamed = conn
        .execute_raw(ebb_common::db::stmt(
            conn.get_database_backend(),
            "UPDATE projects SET name = $1, default_inactivity_ms = $2, updated_at = $3 WHERE id = $4",
            [
                project.name.clone().into(),
                project.default_inactivity_ms.into(),
                now.into(),
                id.into(),
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
    if default_inactivity_ms.is_some() {
        let workspaces: Vec<WorkspaceRow> = query_all(
            conn,
            &format!(
                "SELECT {WORKSPACE_COLUMNS} FROM {WORKSPACE_FROM} \
                 WHERE w.project_id = $1 AND w.inherits_project_auto_destroy = TRUE{}",
                for_update(conn, "w")
            ),
            [id.into()],
        )
        .await?;
        for mut ws in workspaces {
            save(conn, &mut ws, &org, now).await?;
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
            }),
        )],
        now,
    )
    .await?;
    get_project(conn, id).await
}

// --- workspaces ----------------------------------------------------------------------------

/// A new workspace's attributes.
#[derive(Debug, Clone)]
pub struct NewWorkspace {
    pub project_id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub protected: bool,
    pub working_directory: String,
}

/// Creates a workspace; it inherits its project's default inactivity.
pub async fn create_workspace(
    conn: &impl ConnectionTrait,
    new: NewWorkspace,
    actor: &str,
    now: EpochMs,
) -> Result<WorkspaceRow> {
    let project = get_project(conn, &new.project_id).await?;
    let org = get_org(conn, &project.organization_id).await?;
    let id = uuid::Uuid::now_v7().to_string();
    let shard_key = i32::from_be_bytes(
        uuid::Uuid::new_v4().as_bytes()[..4]
            .try_into()
            .unwrap_or_default(),
    )
    .rem_euclid(1 << 30);
    let protected_by_policy = org.protects(&new.labels);
    let n = exec(
        conn,
        "INSERT INTO workspaces (id, organization_id, project_id, name, labels, state, protected, \
         protected_by_policy, locked, lock_reason, working_directory, \
         inherits_project_auto_destroy, auto_destroy_status, applied_since_destroy, shard_key, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, FALSE, '', $8, \
         TRUE, 'idle', FALSE, $9, $10, $10) ON CONFLICT (project_id, name) DO NOTHING",
        [
            id.clone().into(),
            org.id.clone().into(),
            project.id.clone().into(),
            new.name.clone().into(),
            json!(new.labels).to_string().into(),
            new.protected.into(),
            protected_by_policy.into(),
            new.working_directory.clone().into(),
            shard_key.into(),
            now.into(),
        ],
    )
    .await?;
    if n == 0 {
        return Err(Error::AlreadyExists(format!(
            "a workspace named {:?} already exists in the project",
            new.name
        )));
    }
    outbox::write(
        conn,
        vec![NewEvent::new(
            &org.id,
            "workspace.created",
            "workspace",
            &id,
            actor,
            json!({
                "name": new.name, "project_id": project.id,
            }),
        )],
        now,
    )
    .await?;
    get_workspace(conn, &id).await
}

/// A workspace by id.
pub async fn get_workspace(conn: &impl ConnectionTrait, id: &str) -> Result<WorkspaceRow> {
    query_one(
        conn,
        &format!("SELECT {WORKSPACE_COLUMNS} FROM {WORKSPACE_FROM} WHERE w.id = $1"),
        [id.into()],
    )
    .await?
    .ok_or_else(|| Error::not_found("workspace", id))
}

/// A workspace by id, locked for the rest of the transaction on PostgreSQL.
pub async fn lock_workspace_row(conn: &impl ConnectionTrait, id: &str) -> Result<WorkspaceRow> {
    query_one(
        conn,
        &format!(
            "SELECT {WORKSPACE_COLUMNS} FROM {WORKSPACE_FROM} WHERE w.id = $1{}",
            for_update(conn, "w")
        ),
        [id.into()],
    )
    .await?
    .ok_or_else(|| Error::not_found("workspace", id))
}

/// Filters of a workspace list.
#[derive(Debug, Clone, Default)]
pub struct WorkspaceFilter {
    pub organization_id: String,
    pub project_id: Option<String>,
    pub state: Option<&'static str>,
    pub auto_destroy_status: Option<&'static str>,
    pub next_before: Option<EpochMs>,
    pub scheduled_only: bool,
}

/// One page of workspaces ordered by creation, after `after` (created_at, id).
pub async fn list_workspaces(
    conn: &impl ConnectionTrait,
    filter: &WorkspaceFilter,
    after: Option<(i64, String)>,
    limit: u64,
) -> Result<Vec<WorkspaceRow>> {
    let mut sql =
        format!("SELECT {WORKSPACE_COLUMNS} FROM {WORKSPACE_FROM} WHERE w.organization_id = $1");
    let mut values: Vec<Value> = vec![filter.organization_id.clone().into()];
    let mut push = |sql: &mut String, clause: &str, v: Value| {
        values.push(v);
        sql.push_str(&clause.replace("$?", &format!("${}", values.len())));
    };
    if let Some(p) = &filter.project_id {
        push(&mut sql, " AND w.project_id = $?", p.clone().into());
    }
    if let Some(s) = filter.state {
        push(&mut sql, " AND w.state = $?", s.into());
    }
    if let Some(s) = filter.auto_destroy_status {
        push(&mut sql, " AND w.auto_destroy_status = $?", s.into());
    }
    if let Some(t) = filter.next_before {
        push(&mut sql, " AND w.next_auto_destroy_at <= $?", t.into());
    }
    if filter.scheduled_only {
        sql.push_str(" AND w.next_auto_destroy_at IS NOT NULL");
    }
    if let Some((created, id)) = after {
        push(&mut sql, " AND (w.created_at > $?", created.into());
        push(&mut sql, " OR (w.created_at = $?", created.into());
        push(&mut sql, " AND w.id > $?))", id.into());
    }
    sql.push_str(&format!(" ORDER BY w.created_at, w.id LIMIT {limit}"));
    query_all(conn, &sql, values).await
}

/// Writes every mutable column of `ws`, with its derived schedule recomputed.
pub async fn save(
    conn: &impl ConnectionTrait,
    ws: &mut WorkspaceRow,
    org: &OrgRow,
    now: EpochMs,
) -> Result<()> {
    ws.next_auto_destroy_at = ws.timing().next_auto_destroy_at();
    ws.next_reminder_at =
        schedule::next_reminder_at(ws.next_auto_destroy_at, &org.lead_times(), now);
    if ws.next_auto_destroy_at.is_none()
        && matches!(ws.auto_destroy_status.as_str(), "deferred" | "retrying")
    {
        ws.auto_destroy_status = "idle".into();
    }
    ws.updated_at = now;
    exec(
        conn,
        "UPDATE workspaces SET name = $1, labels = $2, state = $3, protected = $4, \
         protected_by_policy = $5, locked = $6, lock_reason = $7, working_directory = $8, \
         auto_destroy_at = $9, auto_destroy_inactivity_ms = $10, \
         inherits_project_auto_destroy = $11, auto_destroy_status = $12, \
         last_state_change_at = $13, latest_serial = $14, applied_since_destroy = $15, \
         last_fired_due_at = $16, auto_destroy_failures = $17, auto_destroy_retry_at = $18, \
         next_auto_destroy_at = $19, next_reminder_at = $20, updated_at = $21, \
         inactivity_extension_ms = $23 WHERE id = $22",
        [
            ws.name.clone().into(),
            ws.labels.clone().into(),
            ws.state.clone().into(),
            ws.protected.into(),
            ws.protected_by_policy.into(),
            ws.locked.into(),
            ws.lock_reason.clone().into(),
            ws.working_directory.clone().into(),
            ws.auto_destroy_at.into(),
            ws.auto_destroy_inactivity_ms.into(),
            ws.inherits_project_auto_destroy.into(),
            ws.auto_destroy_status.clone().into(),
            ws.last_state_change_at.into(),
            ws.latest_serial.into(),
            ws.applied_since_destroy.into(),
            ws.last_fired_due_at.into(),
            ws.auto_destroy_failures.into(),
            ws.auto_destroy_retry_at.into(),
            ws.next_auto_destroy_at.into(),
            ws.next_reminder_at.into(),
            now.into(),
            ws.id.clone().into(),
            ws.inactivity_extension_ms.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Changes to a workspace's plain attributes.
#[derive(Debug, Clone, Default)]
pub struct WorkspaceChanges {
    pub name: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub protected: Option<bool>,
    pub working_directory: Option<String>,
}

/// Applies `changes`; protection takes the schedule off (it never fires on a protected
/// workspace) and policy protection follows the labels.
pub async fn update_workspace(
    conn: &impl ConnectionTrait,
    id: &str,
    changes: WorkspaceChanges,
    actor: &str,
    now: EpochMs,
) -> Result<WorkspaceRow> {
    let mut ws = lock_workspace_row(conn, id).await?;
    let org = get_org(conn, &ws.organization_id).await?;
    if let Some(name) = changes.name {
        if name != ws.name {
            let clash: Option<IdRow> = query_one(
                conn,
                "SELECT id FROM workspaces WHERE project_id = $1 AND name = $2",
                [ws.project_id.clone().into(), name.clone().into()],
            )
            .await?;
            if clash.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "a workspace named {name:?} already exists in the project"
                )));
            }
        }
        ws.name = name;
    }
    if let Some(labels) = changes.labels {
        ws.protected_by_policy = org.protects(&labels);
        ws.labels = json!(labels).to_string();
    }
    if let Some(p) = changes.protected {
        ws.protected = p;
    }
    if let Some(w) = changes.working_directory {
        ws.working_directory = w;
    }
    save(conn, &mut ws, &org, now).await?;
    outbox::write(
        conn,
        vec![NewEvent::new(
            &ws.organization_id,
            "workspace.updated",
            "workspace",
            id,
            actor,
            json!({
                "name": ws.name, "protected": ws.is_protected(),
            }),
        )],
        now,
    )
    .await?;
    get_workspace(conn, id).await
}

/// A row of which only existence matters.
#[derive(FromQueryResult)]
struct IdRow {
    #[allow(dead_code)]
    id: String,
}

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
    save(conn, &mut ws, &org, now).await?;
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
    let target = if archived { "archived" } else { "active" };
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
    ws.state = target.into();
    save(conn, &mut ws, &org, now).await?;
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

/// Whether the workspace has a queued or running run.
pub async fn has_active_run(conn: &impl ConnectionTrait, workspace_id: &str) -> Result<bool> {
    let row: Option<IdRow> = query_one(
        conn,
        "SELECT id FROM runs WHERE workspace_id = $1 AND status IN ('queued', 'running') LIMIT 1",
        [workspace_id.into()],
    )
    .await?;
    Ok(row.is_some())
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
    if ws.state == "archived" {
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
        if ws.auto_destroy_status == "succeeded" {
            ws.auto_destroy_status = "idle".into();
        }
    }
    save(conn, &mut ws, &org, now).await?;
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

// --- auto-destroy settings -----------------------------------------------------------------

fn check_inactivity_max(field: &str, inactivity_ms: Option<i64>, org: &OrgRow) -> Result<()> {
    match inactivity_ms {
        Some(ms) if ms > org.max_inactivity_ms => Err(Error::invalid(
            field,
            format!(
                "exceeds the organization's maximum inactivity of {}",
                ebb_common::time::human(org.max_inactivity_ms)
            ),
        )),
        _ => Ok(()),
    }
}

fn refuse_if_protected(ws: &WorkspaceRow) -> Result<()> {
    if ws.protected {
        return Err(Error::precondition(format!(
            "workspace {} is protected; it cannot get an auto-destroy schedule",
            ws.id
        )));
    }
    if ws.protected_by_policy {
        return Err(Error::precondition(format!(
            "workspace {} is protected by the organization's label policy; it cannot get an \
             auto-destroy schedule",
            ws.id
        )));
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
    if ws.state == "archived" {
        return Err(Error::precondition(format!(
            "workspace {id} is archived; restore it first"
        )));
    }
    let org = get_org(conn, &ws.organization_id).await?;
    check_inactivity_max("auto_destroy_inactivity", inactivity_ms, &org)?;
    if let Some(at) = at {
        if at <= now {
            return Err(Error::invalid("auto_destroy_at", "must be in the future"));
        }
        ws.auto_destroy_at = Some(at);
    }
    if inactivity_ms.is_some() {
        ws.auto_destroy_inactivity_ms = inactivity_ms;
        ws.inactivity_extension_ms = 0;
        ws.inherits_project_auto_destroy = false;
    }
    // A new schedule starts afresh.
    ws.auto_destroy_status = "idle".into();
    ws.auto_destroy_failures = 0;
    ws.auto_destroy_retry_at = None;
    save(conn, &mut ws, &org, now).await?;
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
    if clear_at {
        ws.auto_destroy_at = None;
    }
    if clear_inactivity {
        ws.auto_destroy_inactivity_ms = None;
        ws.inherits_project_auto_destroy = inherit;
    }
    ws.auto_destroy_retry_at = None;
    ws.auto_destroy_failures = 0;
    if ws.auto_destroy_status != "queued" {
        ws.auto_destroy_status = "idle".into();
    }
    save(conn, &mut ws, &org, now).await?;
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
    }
    if ws.auto_destroy_retry_at == Some(current) {
        ws.auto_destroy_retry_at = Some(target);
    }
    save(conn, &mut ws, &org, now).await?;
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
