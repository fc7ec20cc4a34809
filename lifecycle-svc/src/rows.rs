//! Rows as read from lifecycle's tables.

use std::collections::BTreeMap;

use ebb_common::time::EpochMs;
use sea_orm::FromQueryResult;

use crate::schedule::Timing;

/// Columns of [`OrgRow`], in order.
pub const ORG_COLUMNS: &str = "id, name, reminder_lead_times_ms, destroy_retry_limit, \
    max_inactivity_ms, protected_labels, created_at, updated_at";

/// An organization.
#[derive(Debug, Clone, FromQueryResult)]
pub struct OrgRow {
    pub id: String,
    pub name: String,
    pub reminder_lead_times_ms: String,
    pub destroy_retry_limit: i32,
    pub max_inactivity_ms: i64,
    pub protected_labels: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl OrgRow {
    /// Reminder lead times in milliseconds.
    pub fn lead_times(&self) -> Vec<i64> {
        serde_json::from_str(&self.reminder_lead_times_ms).unwrap_or_default()
    }

    /// Labels that protect a workspace.
    pub fn protected_labels(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.protected_labels).unwrap_or_default()
    }

    /// Whether the organization's policy protects a workspace with `labels`.
    pub fn protects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.protected_labels()
            .iter()
            .any(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Columns of [`ProjectRow`], in order.
pub const PROJECT_COLUMNS: &str =
    "id, organization_id, name, default_inactivity_ms, created_at, updated_at";

/// A project.
#[derive(Debug, Clone, FromQueryResult)]
pub struct ProjectRow {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub default_inactivity_ms: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Columns of [`WorkspaceRow`], in order (qualified by `w.`).
pub const WORKSPACE_COLUMNS: &str = "w.id, w.organization_id, w.project_id, w.name, w.labels, \
    w.state, w.protected, w.protected_by_policy, w.locked, w.lock_reason, w.working_directory, \
    w.auto_destroy_at, w.auto_destroy_inactivity_ms, w.inherits_project_auto_destroy, \
    w.auto_destroy_status, w.last_state_change_at, w.latest_serial, w.applied_since_destroy, \
    w.last_fired_due_at, w.auto_destroy_failures, w.auto_destroy_retry_at, \
    w.next_auto_destroy_at, w.next_reminder_at, w.inactivity_extension_ms, w.shard_key, w.created_at, w.updated_at, \
    p.default_inactivity_ms AS project_default_inactivity_ms";

/// `FROM` clause joining a workspace to its project.
pub const WORKSPACE_FROM: &str = "workspaces w JOIN projects p ON p.id = w.project_id";

/// A workspace with its project's default inactivity.
#[derive(Debug, Clone, FromQueryResult)]
pub struct WorkspaceRow {
    pub id: String,
    pub organization_id: String,
    pub project_id: String,
    pub name: String,
    pub labels: String,
    pub state: String,
    pub protected: bool,
    pub protected_by_policy: bool,
    pub locked: bool,
    pub lock_reason: String,
    pub working_directory: String,
    pub auto_destroy_at: Option<i64>,
    pub auto_destroy_inactivity_ms: Option<i64>,
    pub inherits_project_auto_destroy: bool,
    pub auto_destroy_status: String,
    pub last_state_change_at: Option<i64>,
    pub latest_serial: i64,
    pub applied_since_destroy: bool,
    pub last_fired_due_at: Option<i64>,
    pub auto_destroy_failures: i32,
    pub auto_destroy_retry_at: Option<i64>,
    pub next_auto_destroy_at: Option<i64>,
    pub next_reminder_at: Option<i64>,
    pub inactivity_extension_ms: i64,
    pub shard_key: i32,
    pub created_at: i64,
    pub updated_at: i64,
    pub project_default_inactivity_ms: Option<i64>,
}

impl WorkspaceRow {
    /// Labels as a map.
    pub fn labels(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.labels).unwrap_or_default()
    }

    /// The inactivity period in force.
    pub fn effective_inactivity_ms(&self) -> Option<i64> {
        if self.inherits_project_auto_destroy {
            self.project_default_inactivity_ms
        } else {
            self.auto_destroy_inactivity_ms
        }
    }

    /// Protected by flag or policy.
    pub fn is_protected(&self) -> bool {
        self.protected || self.protected_by_policy
    }

    /// The inputs of its auto-destroy timing.
    pub fn timing(&self) -> Timing {
        Timing {
            archived: self.state == "archived",
            protected: self.is_protected(),
            failed: self.auto_destroy_status == "failed",
            auto_destroy_at: self.auto_destroy_at,
            inactivity_ms: self.effective_inactivity_ms(),
            last_state_change_at: self.last_state_change_at,
            applied_since_destroy: self.applied_since_destroy,
            last_fired_due_at: self.last_fired_due_at,
            retry_at: self.auto_destroy_retry_at,
            inactivity_extension_ms: self.inactivity_extension_ms,
        }
    }
}

/// Columns of [`RunRow`], in order.
pub const RUN_COLUMNS: &str = "id, organization_id, workspace_id, is_destroy, auto_apply, \
    source, status, fire_due_at, attempt, runner_id, lease_token, lease_expires_at, \
    cancel_requested, exit_code, output_tail, message, working_directory, created_at, \
    claimed_at, finished_at";

/// A run.
#[derive(Debug, Clone, FromQueryResult)]
pub struct RunRow {
    pub id: String,
    pub organization_id: String,
    pub workspace_id: String,
    pub is_destroy: bool,
    pub auto_apply: bool,
    pub source: String,
    pub status: String,
    pub fire_due_at: Option<i64>,
    pub attempt: i32,
    pub runner_id: String,
    pub lease_token: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub cancel_requested: bool,
    pub exit_code: i32,
    pub output_tail: String,
    pub message: String,
    pub working_directory: String,
    pub created_at: EpochMs,
    pub claimed_at: Option<EpochMs>,
    pub finished_at: Option<EpochMs>,
}

impl RunRow {
    /// Queued or running.
    pub fn is_active(&self) -> bool {
        self.status == "queued" || self.status == "running"
    }
}

/// A state version.
#[derive(Debug, Clone, FromQueryResult)]
pub struct StateVersionRow {
    pub id: String,
    pub workspace_id: String,
    pub serial: i64,
    pub run_id: Option<String>,
    pub created_at: i64,
}

/// An outbox event.
#[derive(Debug, Clone, FromQueryResult)]
pub struct OutboxRow {
    pub seq: i64,
    pub id: String,
    pub organization_id: String,
    pub org_seq: i64,
    pub event_type: String,
    pub subject_type: String,
    pub subject_id: String,
    pub actor: String,
    pub data: String,
    pub created_at: i64,
}
