//! Rows to protobuf messages, and protobuf enums to the database's words.

use ebb_common::time::{to_duration, to_timestamp, to_timestamp_opt};
use ebb_common::{Error, Result};
use ebb_proto::lifecycle::v1 as pb;

use crate::auto_destroy::policy;
use crate::events::outbox::OutboxRow;
use crate::runs::{RunRow, RunSource, RunStatus};
use crate::store::decode_json;
use crate::tenancy::orgs::OrgRow;
use crate::tenancy::projects::ProjectRow;
use crate::timing::windows::WindowsSpec;
use crate::workspaces::state_versions::StateVersionRow;
use crate::workspaces::{AutoDestroyStatus, WorkspaceRow, WorkspaceState};
use ebb_common::time::EpochMs;

pub fn organization(o: &OrgRow) -> Result<pb::Organization> {
    Ok(pb::Organization {
        id: o.id.clone(),
        name: o.name.clone(),
        settings: Some(pb::OrganizationSettings {
            reminder_lead_times: o.lead_times()?.into_iter().map(to_duration).collect(),
            destroy_retry_limit: o.destroy_retry_limit,
            max_inactivity: Some(to_duration(o.max_inactivity_ms)),
            protected_labels: o.protected_labels()?.into_iter().collect(),
            minimum_notice: o.minimum_notice_ms.map(to_duration),
            confirm_threshold: Some(o.confirm_threshold),
            snooze_step: Some(to_duration(o.snooze_step_ms())),
            require_approval: o.require_approval,
            approval_window: Some(to_duration(o.approval_window_ms)),
            destroy_windows: destroy_windows(o.destroy_windows.as_deref()),
            approval_labels: o.approval_labels()?.into_iter().collect(),
            approval_cascade_threshold: o.approval_cascade_threshold,
        }),
        etag: o.etag(),
        create_time: Some(to_timestamp(o.created_at)),
        update_time: Some(to_timestamp(o.updated_at)),
    })
}

/// A workspace a policy change scheduled within 7 days.
pub fn scheduled(s: &policy::Scheduled, now: EpochMs) -> pb::AutoDestroyPreviewItem {
    pb::AutoDestroyPreviewItem {
        workspace_id: s.workspace_id.clone(),
        workspace_name: s.workspace_name.clone(),
        destroy_time: Some(to_timestamp(s.destroy_at)),
        reason: s.reason.to_owned(),
        time_left: Some(to_duration((s.destroy_at - now).max(0))),
        next_occurrences: Vec::new(),
        waiting_for_window: s.scheduled_at.is_some(),
        scheduled_time: s.scheduled_at.map(to_timestamp),
    }
}

/// Destroy windows as the API shows them.
pub fn destroy_windows(json: Option<&str>) -> Option<pb::DestroyWindows> {
    let spec: WindowsSpec = serde_json::from_str(json?).ok()?;
    Some(pb::DestroyWindows {
        time_zone: spec.time_zone,
        windows: spec
            .windows
            .into_iter()
            .map(|w| pb::DestroyWindow {
                days: w.days,
                start: w.start,
                end: w.end,
            })
            .collect(),
    })
}

pub fn project(p: &ProjectRow) -> pb::Project {
    pb::Project {
        destroy_windows: destroy_windows(p.destroy_windows.as_deref()),
        id: p.id.clone(),
        organization_id: p.organization_id.clone(),
        name: p.name.clone(),
        default_auto_destroy_inactivity: p.default_inactivity_ms.map(to_duration),
        create_time: Some(to_timestamp(p.created_at)),
        update_time: Some(to_timestamp(p.updated_at)),
    }
}

fn auto_destroy_status(s: AutoDestroyStatus) -> pb::AutoDestroyStatus {
    match s {
        AutoDestroyStatus::Idle => pb::AutoDestroyStatus::Idle,
        AutoDestroyStatus::Deferred => pb::AutoDestroyStatus::Deferred,
        AutoDestroyStatus::Queued => pb::AutoDestroyStatus::Queued,
        AutoDestroyStatus::Retrying => pb::AutoDestroyStatus::Retrying,
        AutoDestroyStatus::Succeeded => pb::AutoDestroyStatus::Succeeded,
        AutoDestroyStatus::Failed => pb::AutoDestroyStatus::Failed,
    }
}

pub fn workspace(w: &WorkspaceRow) -> Result<pb::Workspace> {
    Ok(pb::Workspace {
        id: w.id.clone(),
        organization_id: w.organization_id.clone(),
        project_id: w.project_id.clone(),
        name: w.name.clone(),
        labels: w.labels()?.into_iter().collect(),
        state: if w.state == WorkspaceState::Archived {
            pb::WorkspaceState::Archived
        } else {
            pb::WorkspaceState::Active
        } as i32,
        protected: w.protected,
        protected_by_policy: w.protected_by_policy,
        locked: w.locked,
        lock_reason: w.lock_reason.clone(),
        working_directory: w.working_directory.clone(),
        auto_destroy_at: to_timestamp_opt(w.auto_destroy_at),
        auto_destroy_inactivity: w.auto_destroy_inactivity_ms.map(to_duration),
        inherits_project_auto_destroy: w.inherits_project_auto_destroy,
        effective_auto_destroy_inactivity: w.effective_inactivity_ms().map(to_duration),
        auto_destroy_status: if w.waiting_for_window() {
            pb::AutoDestroyStatus::WaitingForWindow
        } else {
            auto_destroy_status(w.auto_destroy_status)
        } as i32,
        last_state_change_at: to_timestamp_opt(w.last_state_change_at),
        next_auto_destroy_at: to_timestamp_opt(w.next_auto_destroy_at),
        next_auto_destroy_reason: if w.next_auto_destroy_at.is_some() {
            w.timing().reason().to_owned()
        } else {
            String::new()
        },
        create_time: Some(to_timestamp(w.created_at)),
        update_time: Some(to_timestamp(w.updated_at)),
        recurring_auto_destroy: recurring_schedule(w),
        owner: owner(&w.owner_email, &w.owner_slack_user_id),
        window_held_due_time: to_timestamp_opt(w.window_held_due_at),
    })
}

/// A workspace's recurring schedule with its next occurrences: the current one (as extended)
/// and those the cron gives after it.
fn recurring_schedule(w: &WorkspaceRow) -> Option<pb::RecurringSchedule> {
    let recurrence = w.recurrence()?;
    let timing = w.timing();
    let current = timing.recurring_due();
    let mut next: Vec<EpochMs> = current.into_iter().collect();
    if let Some(first) = current {
        next.extend(recurrence.upcoming(first, UPCOMING - 1));
    }
    Some(pb::RecurringSchedule {
        cron: recurrence.cron().to_owned(),
        time_zone: recurrence.time_zone().to_owned(),
        next_occurrences: next.into_iter().map(to_timestamp).collect(),
    })
}

/// How many occurrences a recurring schedule shows.
const UPCOMING: usize = 5;

/// An owner, or none.
pub fn owner(email: &str, slack_user_id: &str) -> Option<pb::Owner> {
    (!email.is_empty() || !slack_user_id.is_empty()).then(|| pb::Owner {
        email: email.to_owned(),
        slack_user_id: slack_user_id.to_owned(),
    })
}

pub fn state_version(s: &StateVersionRow) -> pb::StateVersion {
    pb::StateVersion {
        id: s.id.clone(),
        workspace_id: s.workspace_id.clone(),
        serial: s.serial,
        run_id: s.run_id.clone().unwrap_or_default(),
        create_time: Some(to_timestamp(s.created_at)),
    }
}

fn run_source(s: RunSource) -> pb::RunSource {
    match s {
        RunSource::Manual => pb::RunSource::Manual,
        RunSource::AutoDestroy => pb::RunSource::AutoDestroy,
        RunSource::Deprovision => pb::RunSource::Deprovision,
    }
}

fn run_status(s: RunStatus) -> pb::RunStatus {
    match s {
        RunStatus::Queued => pb::RunStatus::Queued,
        RunStatus::Running => pb::RunStatus::Running,
        RunStatus::Succeeded => pb::RunStatus::Succeeded,
        RunStatus::Failed => pb::RunStatus::Failed,
        RunStatus::Errored => pb::RunStatus::Errored,
        RunStatus::Canceled => pb::RunStatus::Canceled,
    }
}

pub fn run(r: &RunRow) -> pb::Run {
    pb::Run {
        id: r.id.clone(),
        organization_id: r.organization_id.clone(),
        workspace_id: r.workspace_id.clone(),
        is_destroy: r.is_destroy,
        auto_apply: r.auto_apply,
        source: run_source(r.source) as i32,
        status: if r.awaits_approval() {
            pb::RunStatus::AwaitingApproval as i32
        } else {
            run_status(r.status) as i32
        },
        fire_due_time: to_timestamp_opt(r.fire_due_at),
        attempt: r.attempt,
        runner_id: r.runner_id.clone(),
        lease_expire_time: to_timestamp_opt(r.lease_expires_at),
        exit_code: r.exit_code,
        output_tail: r.output_tail.clone(),
        message: r.message.clone(),
        create_time: Some(to_timestamp(r.created_at)),
        claim_time: to_timestamp_opt(r.claimed_at),
        finish_time: to_timestamp_opt(r.finished_at),
        working_directory: r.working_directory.clone(),
        approval: r.approval.as_ref().map(|state| pb::RunApproval {
            state: state.to_ascii_uppercase(),
            deadline: to_timestamp_opt(r.approval_deadline),
            decided_by: r.approval_by.clone().unwrap_or_default(),
            reason: r.approval_reason.clone().unwrap_or_default(),
            decide_time: to_timestamp_opt(r.approval_at),
        }),
    }
}

pub fn outbox_event(e: &OutboxRow) -> Result<pb::OutboxEvent> {
    let data: serde_json::Value = decode_json("outbox", "data", &e.id, &e.data)?;
    Ok(pb::OutboxEvent {
        id: e.id.clone(),
        sequence: e.org_seq,
        organization_id: e.organization_id.clone(),
        r#type: e.event_type.clone(),
        subject_type: e.subject_type.clone(),
        subject_id: e.subject_id.clone(),
        actor: e.actor.clone(),
        data: Some(json_to_struct(&data)),
        create_time: Some(to_timestamp(e.created_at)),
    })
}

/// A JSON object as a protobuf `Struct`.
pub fn json_to_struct(v: &serde_json::Value) -> prost_types::Struct {
    match json_to_value(v).kind {
        Some(prost_types::value::Kind::StructValue(s)) => s,
        _ => prost_types::Struct::default(),
    }
}

/// A JSON value as a protobuf `Value`.
pub fn json_to_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// The database word of a workspace-state filter (`None` for unspecified).
pub fn workspace_state_filter(v: i32) -> Result<Option<WorkspaceState>> {
    match pb::WorkspaceState::try_from(v) {
        Ok(pb::WorkspaceState::Unspecified) => Ok(None),
        Ok(pb::WorkspaceState::Active) => Ok(Some(WorkspaceState::Active)),
        Ok(pb::WorkspaceState::Archived) => Ok(Some(WorkspaceState::Archived)),
        Err(_) => Err(Error::invalid(
            "state",
            format!("unknown workspace state {v}"),
        )),
    }
}

/// The auto-destroy status a list filter names, and whether it means workspaces a destroy
/// window holds back (or, for IDLE, DEFERRED and RETRYING, the others).
pub fn auto_destroy_status_filter(v: i32) -> Result<(Option<AutoDestroyStatus>, Option<bool>)> {
    use pb::AutoDestroyStatus as S;
    Ok(match S::try_from(v) {
        Ok(S::Unspecified) => (None, None),
        Ok(S::WaitingForWindow) => (None, Some(true)),
        Ok(S::Idle) => (Some(AutoDestroyStatus::Idle), Some(false)),
        Ok(S::Deferred) => (Some(AutoDestroyStatus::Deferred), Some(false)),
        Ok(S::Queued) => (Some(AutoDestroyStatus::Queued), None),
        Ok(S::Retrying) => (Some(AutoDestroyStatus::Retrying), Some(false)),
        Ok(S::Succeeded) => (Some(AutoDestroyStatus::Succeeded), None),
        Ok(S::Failed) => (Some(AutoDestroyStatus::Failed), None),
        Err(_) => {
            return Err(Error::invalid(
                "auto_destroy_status",
                format!("unknown auto-destroy status {v}"),
            ));
        }
    })
}

/// The run status a list filter names, and whether it means runs awaiting approval (queued
/// ones that do, or queued ones that do not).
pub fn run_status_filter(v: i32) -> Result<(Option<RunStatus>, Option<bool>)> {
    use pb::RunStatus as S;
    Ok(match S::try_from(v) {
        Ok(S::AwaitingApproval) => (Some(RunStatus::Queued), Some(true)),
        Ok(S::Queued) => (Some(RunStatus::Queued), Some(false)),
        other => (run_status_plain(other, v)?, None),
    })
}

fn run_status_plain(
    s: std::result::Result<pb::RunStatus, prost::UnknownEnumValue>,
    v: i32,
) -> Result<Option<RunStatus>> {
    use pb::RunStatus as S;
    Ok(match s {
        Ok(S::Unspecified) => None,
        Ok(S::Queued | S::AwaitingApproval) => Some(RunStatus::Queued),
        Ok(S::Running) => Some(RunStatus::Running),
        Ok(S::Succeeded) => Some(RunStatus::Succeeded),
        Ok(S::Failed) => Some(RunStatus::Failed),
        Ok(S::Errored) => Some(RunStatus::Errored),
        Ok(S::Canceled) => Some(RunStatus::Canceled),
        Err(_) => return Err(Error::invalid("status", format!("unknown run status {v}"))),
    })
}

/// The run source a list filter names.
pub fn run_source_filter(v: i32) -> Result<Option<RunSource>> {
    use pb::RunSource as S;
    Ok(match S::try_from(v) {
        Ok(S::Unspecified) => None,
        Ok(S::Manual) => Some(RunSource::Manual),
        Ok(S::AutoDestroy) => Some(RunSource::AutoDestroy),
        Ok(S::Deprovision) => Some(RunSource::Deprovision),
        Err(_) => return Err(Error::invalid("source", format!("unknown run source {v}"))),
    })
}
