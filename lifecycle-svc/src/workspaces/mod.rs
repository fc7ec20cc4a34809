//! Workspaces: create, read, list, change and save, with their derived schedule recomputed on
//! every save.

pub(crate) mod lock;
pub(crate) mod manual_runs;
pub(crate) mod reads;
pub(crate) mod state_versions;

use std::collections::BTreeMap;

use ebb_common::time::{EpochMs, rfc3339};
use ebb_common::{Error, Result};
use sea_orm::sea_query::{Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, FromQueryResult};
use serde_json::json;

use crate::events::{NewEvent, outbox};
use crate::store::{IdRow, db_enum, decode_json, exec, for_update, keyset, query_one, select_all};
use crate::tenancy::orgs::{OrgRow, get_org};
use crate::tenancy::projects::get_project;
use crate::timing::math;
use crate::timing::math::Timing;
use crate::timing::recurrence::Recurrence;
use crate::timing::windows::InForce;

db_enum! {
    /// Whether a workspace is in use or archived (never deleted).
    pub enum WorkspaceState {
        Active = "active",
        Archived = "archived",
    }
}

db_enum! {
    /// Where a workspace's auto-destroy stands.
    pub enum AutoDestroyStatus {
        Idle = "idle",
        Deferred = "deferred",
        Queued = "queued",
        Retrying = "retrying",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

/// Columns of [`WorkspaceRow`], in order (qualified by `w.`).
pub const WORKSPACE_COLUMNS: &str = "w.id, w.organization_id, w.project_id, w.name, w.labels, \
    w.state, w.protected, w.protected_by_policy, w.locked, w.lock_reason, w.working_directory, \
    w.auto_destroy_at, w.auto_destroy_inactivity_ms, w.inherits_project_auto_destroy, \
    w.auto_destroy_status, w.last_state_change_at, w.latest_serial, w.applied_since_destroy, \
    w.last_fired_due_at, w.auto_destroy_failures, w.auto_destroy_retry_at, \
    w.next_auto_destroy_at, w.next_reminder_at, w.inactivity_extension_ms, w.held_due_at, \
    w.inactivity_not_before, w.recurring_cron, w.recurring_time_zone, w.recurring_due_at, \
    w.owner_email, w.owner_slack_user_id, w.created_at, w.updated_at, \
    p.default_inactivity_ms AS project_default_inactivity_ms, w.window_not_before, \
    w.window_held_due_at, COALESCE(p.destroy_windows, wo.destroy_windows) AS destroy_windows";

/// `FROM` clause joining a workspace to its project and organization.
pub const WORKSPACE_FROM: &str = "workspaces w JOIN projects p ON p.id = w.project_id \
    JOIN organizations wo ON wo.id = w.organization_id";

/// A workspace with its project's default inactivity.
#[derive(Debug, Clone, FromQueryResult)]
pub struct WorkspaceRow {
    pub id: String,
    pub organization_id: String,
    pub project_id: String,
    pub name: String,
    pub labels: String,
    pub state: WorkspaceState,
    pub protected: bool,
    pub protected_by_policy: bool,
    pub locked: bool,
    pub lock_reason: String,
    pub working_directory: String,
    pub auto_destroy_at: Option<i64>,
    pub auto_destroy_inactivity_ms: Option<i64>,
    pub inherits_project_auto_destroy: bool,
    pub auto_destroy_status: AutoDestroyStatus,
    pub last_state_change_at: Option<i64>,
    pub latest_serial: i64,
    pub applied_since_destroy: bool,
    pub last_fired_due_at: Option<i64>,
    pub auto_destroy_failures: i32,
    pub auto_destroy_retry_at: Option<i64>,
    pub next_auto_destroy_at: Option<i64>,
    pub next_reminder_at: Option<i64>,
    pub inactivity_extension_ms: i64,
    pub held_due_at: Option<i64>,
    pub inactivity_not_before: Option<i64>,
    pub recurring_cron: Option<String>,
    pub recurring_time_zone: Option<String>,
    pub recurring_due_at: Option<i64>,
    pub owner_email: String,
    pub owner_slack_user_id: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub project_default_inactivity_ms: Option<i64>,
    pub window_not_before: Option<i64>,
    pub window_held_due_at: Option<i64>,
    /// The destroy windows in force (JSON): the project's, else the organization's.
    pub destroy_windows: Option<String>,
}

impl WorkspaceRow {
    /// Labels as a map.
    pub fn labels(&self) -> Result<BTreeMap<String, String>> {
        decode_json("workspaces", "labels", &self.id, &self.labels)
    }

    /// The inactivity period in force.
    pub fn effective_inactivity_ms(&self) -> Option<i64> {
        if self.inherits_project_auto_destroy {
            self.project_default_inactivity_ms
        } else {
            self.auto_destroy_inactivity_ms
        }
    }

    /// Whether a destroy window holds its due auto-destroy back (WAITING_FOR_WINDOW): only
    /// while no run of it is queued and it has not ended.
    pub fn waiting_for_window(&self) -> bool {
        self.window_held_due_at.is_some()
            && matches!(
                self.auto_destroy_status,
                AutoDestroyStatus::Idle | AutoDestroyStatus::Deferred | AutoDestroyStatus::Retrying
            )
    }

    /// Protected by flag or policy.
    pub fn is_protected(&self) -> bool {
        self.protected || self.protected_by_policy
    }

    /// The inputs of its auto-destroy timing.
    pub fn timing(&self) -> Timing {
        Timing {
            archived: self.state == WorkspaceState::Archived,
            protected: self.is_protected(),
            failed: self.auto_destroy_status == AutoDestroyStatus::Failed,
            auto_destroy_at: self.auto_destroy_at,
            inactivity_ms: self.effective_inactivity_ms(),
            last_state_change_at: self.last_state_change_at,
            applied_since_destroy: self.applied_since_destroy,
            last_fired_due_at: self.last_fired_due_at,
            retry_at: self.auto_destroy_retry_at,
            inactivity_extension_ms: self.inactivity_extension_ms,
            inactivity_not_before: self.inactivity_not_before,
            recurrence: self.recurrence(),
            recurring_due_at: self.recurring_due_at,
            windows: InForce::stored(self.destroy_windows.as_deref()),
            window_not_before: self.window_not_before,
        }
    }

    /// Its recurring schedule, if it has one that parses (a damaged one never fires).
    pub fn recurrence(&self) -> Option<Recurrence> {
        Recurrence::stored(
            self.recurring_cron.as_deref(),
            self.recurring_time_zone.as_deref(),
        )
    }

    /// Its owner as event payloads carry it (reminders and results go to the owner too), or
    /// null when it names none.
    pub fn owner(&self) -> serde_json::Value {
        owner_json(&self.owner_email, &self.owner_slack_user_id)
    }

    /// Takes over what a pure timing decision changed.
    pub fn apply(&mut self, timing: &Timing) {
        self.auto_destroy_at = timing.auto_destroy_at;
        self.auto_destroy_retry_at = timing.retry_at;
        self.inactivity_extension_ms = timing.inactivity_extension_ms;
        self.inactivity_not_before = timing.inactivity_not_before;
        self.recurring_due_at = timing.recurring_due_at;
    }

    /// Gives the organization's minimum notice after a change that may have brought the
    /// destroy forward from `previous_due` (AD-12): if it did, it comes due no sooner than
    /// `now` plus the notice. Whether it pushed the due time.
    pub fn give_notice(
        &mut self,
        org: &OrgRow,
        previous_due: Option<EpochMs>,
        now: EpochMs,
    ) -> Result<bool> {
        let mut timing = self.timing();
        let Some(due) = timing.next_auto_destroy_at() else {
            return Ok(false);
        };
        if previous_due.is_some_and(|p| due >= p) {
            return Ok(false);
        }
        let pushed = timing.give_notice(now, org.minimum_notice_ms()?);
        self.apply(&timing);
        Ok(pushed)
    }

    /// Consumes every due time up to `now` that passed while the workspace could not be
    /// destroyed (`reason`: `protected`, `archived`), one `skipped` event each (AD-12): the
    /// one-shot cleared, the inactivity clock restarted, so nothing that passed fires later.
    ///
    /// A short inactivity period held for long comes due many times: past
    /// [`SKIPPED_EVENTS`] due times, everything else up to `now` is consumed at once, the
    /// inactivity clock restarting at `now`, with one last event that says so (`through`).
    pub fn consume_passed(&mut self, reason: &str, actor: &str, now: EpochMs) -> Vec<NewEvent> {
        let mut events = Vec::new();
        loop {
            let mut held = self.timing();
            held.protected = true;
            held.archived = false;
            let Some(due) = held.held_due_at().filter(|d| *d <= now) else {
                break;
            };
            if events.len() == SKIPPED_EVENTS {
                let mut event = self.consume_held(due, reason, actor);
                let mut timing = self.timing();
                timing.consume(now);
                self.apply(&timing);
                if let serde_json::Value::Object(data) = &mut event.data {
                    data.insert("through".to_owned(), json!(rfc3339(now)));
                }
                events.push(event);
                break;
            }
            // Each consumption moves the next due time past the one it consumed.
            events.push(self.consume_held(due, reason, actor));
        }
        events
    }

    /// Consumes the schedule held by protection that came due at `due` (AD-12): records
    /// `workspace.auto_destroy.skipped`, clears the one-shot and restarts the inactivity clock.
    pub fn consume_held(&mut self, due: EpochMs, reason: &str, actor: &str) -> NewEvent {
        let mut timing = self.timing();
        let branch = timing.branch_of(due);
        timing.consume(due);
        self.apply(&timing);
        NewEvent::new(
            &self.organization_id,
            "workspace.auto_destroy.skipped",
            "workspace",
            &self.id,
            actor,
            json!({
                "due_at": rfc3339(due),
                "workspace_name": self.name,
                "reason": reason,
                "schedule": branch.name(),
                "owner": self.owner(),
            }),
        )
    }
}

/// How many due times that passed unfired are consumed one event each (see
/// [`WorkspaceRow::consume_passed`]).
pub const SKIPPED_EVENTS: usize = 16;

/// An owner as event payloads carry it, or null for none.
pub fn owner_json(email: &str, slack_user_id: &str) -> serde_json::Value {
    if email.is_empty() && slack_user_id.is_empty() {
        return serde_json::Value::Null;
    }
    json!({"email": email, "slack_user_id": slack_user_id})
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
    pub owner_email: String,
    pub owner_slack_user_id: String,
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
         created_at, updated_at, owner_email, owner_slack_user_id) VALUES ($1, $2, $3, $4, $5, \
         'active', $6, $7, FALSE, '', $8, TRUE, 'idle', FALSE, $9, $10, $10, $11, $12) \
         ON CONFLICT (project_id, name) DO NOTHING",
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
            new.owner_email.clone().into(),
            new.owner_slack_user_id.clone().into(),
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
    pub state: Option<WorkspaceState>,
    pub auto_destroy_status: Option<AutoDestroyStatus>,
    /// Only those a destroy window holds back (`Some(true)`), or only the others.
    pub waiting_for_window: Option<bool>,
    pub next_before: Option<EpochMs>,
    pub scheduled_only: bool,
    /// Only workspaces whose owner has this email address or Slack user id.
    pub owner: Option<String>,
    /// Only workspaces with exactly this name (one per project at most).
    pub name: Option<String>,
}

/// One page of workspaces ordered by creation, after `after` (created_at, id).
pub async fn list_workspaces(
    conn: &impl ConnectionTrait,
    filter: &WorkspaceFilter,
    after: Option<(i64, String)>,
    limit: u64,
) -> Result<Vec<WorkspaceRow>> {
    let mut q = Query::select();
    q.expr(Expr::cust(format!(
        "{WORKSPACE_COLUMNS} FROM {WORKSPACE_FROM}"
    )))
    .and_where(Expr::col(("w", "organization_id")).eq(filter.organization_id.as_str()));
    if let Some(p) = &filter.project_id {
        q.and_where(Expr::col(("w", "project_id")).eq(p.as_str()));
    }
    if let Some(s) = filter.state {
        q.and_where(Expr::col(("w", "state")).eq(s.as_str()));
    }
    if let Some(s) = filter.auto_destroy_status {
        q.and_where(Expr::col(("w", "auto_destroy_status")).eq(s.as_str()));
    }
    match filter.waiting_for_window {
        Some(true) => q.and_where(Expr::cust(
            "w.window_held_due_at IS NOT NULL \
             AND w.auto_destroy_status IN ('idle', 'deferred', 'retrying')",
        )),
        Some(false) => q.and_where(Expr::col(("w", "window_held_due_at")).is_null()),
        None => &mut q,
    };
    if let Some(t) = filter.next_before {
        q.and_where(Expr::col(("w", "next_auto_destroy_at")).lte(t));
    }
    if filter.scheduled_only {
        q.and_where(Expr::col(("w", "next_auto_destroy_at")).is_not_null());
    }
    if let Some(owner) = &filter.owner {
        q.and_where(
            Expr::col(("w", "owner_email"))
                .eq(owner.as_str())
                .or(Expr::col(("w", "owner_slack_user_id")).eq(owner.as_str())),
        );
    }
    if let Some(name) = &filter.name {
        q.and_where(Expr::col(("w", "name")).eq(name.as_str()));
    }
    if let Some(position) = after {
        q.cond_where(keyset(
            ("w", "created_at"),
            ("w", "id"),
            position,
            Order::Asc,
        ));
    }
    q.order_by(("w", "created_at"), Order::Asc)
        .order_by(("w", "id"), Order::Asc)
        .limit(limit);
    select_all(conn, &q).await
}

/// Writes every mutable column of `ws`, with its derived schedule recomputed.
pub async fn save(
    conn: &impl ConnectionTrait,
    ws: &mut WorkspaceRow,
    org: &OrgRow,
    actor: &str,
    now: EpochMs,
) -> Result<()> {
    // Protection was lifted (the stored row still holds a schedule): what came due while it
    // was protected is consumed, never fired, and the rest gets the minimum notice (AD-12).
    if !ws.is_protected() && ws.state == WorkspaceState::Active {
        if let Some(held) = ws.held_due_at.filter(|h| *h <= now) {
            // The held time first (as stored when it was protected), then whatever else passed.
            let mut events = vec![ws.consume_held(held, "protected", actor)];
            events.extend(ws.consume_passed("protected", actor, now));
            outbox::write(conn, events, now).await?;
        }
        if ws.held_due_at.is_some() {
            ws.give_notice(org, None, now)?;
        }
    }
    let timing = ws.timing();
    // The recurring occurrence that fired is replaced by the next one; a schedule with no
    // occurrence left is dropped whole.
    ws.recurring_due_at = timing.recurring_due();
    if ws.recurring_due_at.is_none() {
        ws.recurring_cron = None;
        ws.recurring_time_zone = None;
    }
    ws.next_auto_destroy_at = timing.next_auto_destroy_at();
    ws.held_due_at = timing.held_due_at();
    ws.window_not_before = timing.live_window_floor();
    ws.window_held_due_at = timing.held_by_window();
    ws.next_reminder_at = math::next_reminder_at(timing.reminded_due(), &org.lead_times()?, now);
    if ws.next_auto_destroy_at.is_none()
        && matches!(
            ws.auto_destroy_status,
            AutoDestroyStatus::Deferred | AutoDestroyStatus::Retrying
        )
    {
        ws.auto_destroy_status = AutoDestroyStatus::Idle;
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
         inactivity_extension_ms = $23, held_due_at = $24, inactivity_not_before = $25, \
         recurring_cron = $26, recurring_time_zone = $27, recurring_due_at = $28, \
         owner_email = $29, owner_slack_user_id = $30, window_not_before = $31, \
         window_held_due_at = $32 \
         WHERE id = $22",
        [
            ws.name.clone().into(),
            ws.labels.clone().into(),
            ws.state.into(),
            ws.protected.into(),
            ws.protected_by_policy.into(),
            ws.locked.into(),
            ws.lock_reason.clone().into(),
            ws.working_directory.clone().into(),
            ws.auto_destroy_at.into(),
            ws.auto_destroy_inactivity_ms.into(),
            ws.inherits_project_auto_destroy.into(),
            ws.auto_destroy_status.into(),
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
            ws.held_due_at.into(),
            ws.inactivity_not_before.into(),
            ws.recurring_cron.clone().into(),
            ws.recurring_time_zone.clone().into(),
            ws.recurring_due_at.into(),
            ws.owner_email.clone().into(),
            ws.owner_slack_user_id.clone().into(),
            ws.window_not_before.into(),
            ws.window_held_due_at.into(),
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
    pub owner_email: Option<String>,
    pub owner_slack_user_id: Option<String>,
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
    if let Some(email) = changes.owner_email {
        ws.owner_email = email;
    }
    if let Some(slack) = changes.owner_slack_user_id {
        ws.owner_slack_user_id = slack;
    }
    save(conn, &mut ws, &org, actor, now).await?;
    outbox::write(
        conn,
        vec![NewEvent::new(
            &ws.organization_id,
            "workspace.updated",
            "workspace",
            id,
            actor,
            json!({
                "name": ws.name, "protected": ws.is_protected(), "owner": ws.owner(),
            }),
        )],
        now,
    )
    .await?;
    get_workspace(conn, id).await
}
