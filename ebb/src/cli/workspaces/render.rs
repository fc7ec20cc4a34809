//! Workspaces as tables for people: listings, upcoming destroys, a preview, one workspace.

use std::time::Duration;

use ebb_proto::lifecycle::v1 as pb;

use crate::cli::output::{
    self, fields, label, or_none, relative, span, table, text, time, when, yes_no,
};

pub(super) fn state(w: &pb::Workspace) -> String {
    label(w.state, "WORKSPACE_STATE_", pb::WorkspaceState::as_str_name)
}

pub(super) fn status(w: &pb::Workspace) -> String {
    label(
        w.auto_destroy_status,
        "AUTO_DESTROY_STATUS_",
        pb::AutoDestroyStatus::as_str_name,
    )
}

/// Which branch decides the next destroy.
pub(super) fn decided_by(w: &pb::Workspace) -> &'static str {
    match (&w.next_auto_destroy_at, &w.auto_destroy_at) {
        (None, _) => "-",
        (Some(next), Some(at)) if next == at => "time",
        (Some(_), _) if w.next_auto_destroy_reason == "recurring" => "recurring",
        (Some(_), _) => "inactivity",
    }
}

pub(super) fn inactivity(w: &pb::Workspace) -> String {
    let s = span(w.effective_auto_destroy_inactivity.as_ref());
    if w.inherits_project_auto_destroy && s != "-" {
        format!("{s} (project)")
    } else {
        s
    }
}

pub(super) fn protected(w: &pb::Workspace) -> String {
    match (w.protected, w.protected_by_policy) {
        (_, true) => "yes (policy)".to_owned(),
        (p, false) => yes_no(p),
    }
}

pub(super) fn workspace_table(list: &[pb::Workspace]) -> String {
    let mut t = table(&[
        "id",
        "name",
        "state",
        "auto-destroy at",
        "inactivity",
        "next destroy",
        "status",
        "protected",
        "locked",
    ])
    .wide_only(&["auto-destroy at", "inactivity", "protected"]);
    for w in list {
        t.add_row(vec![
            w.id.clone(),
            w.name.clone(),
            state(w),
            time(w.auto_destroy_at.as_ref()),
            inactivity(w),
            when(w.next_auto_destroy_at.as_ref()),
            status(w),
            protected(w),
            yes_no(w.locked),
        ]);
    }
    or_none(t, list.len(), "no workspaces")
}

pub(super) fn upcoming_table(list: &[pb::Workspace], within: Duration) -> String {
    let mut t = table(&[
        "due at (UTC)",
        "in",
        "workspace",
        "name",
        "project",
        "by",
        "status",
        "locked",
    ])
    .wide_only(&["project", "locked"]);
    for w in list {
        t.add_row(vec![
            time(w.next_auto_destroy_at.as_ref()),
            relative(w.next_auto_destroy_at.as_ref()),
            w.id.clone(),
            w.name.clone(),
            w.project_id.clone(),
            decided_by(w).to_owned(),
            status(w),
            yes_no(w.locked),
        ]);
    }
    let none = format!(
        "no destroys due within {}",
        output::compact(within.as_secs())
    );
    or_none(t, list.len(), &none)
}

/// One workspace as a two-column table.
pub fn workspace_fields(w: &pb::Workspace) -> String {
    let labels = if w.labels.is_empty() {
        "-".to_owned()
    } else {
        let mut l: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        l.sort();
        l.join(", ")
    };
    let locked = if w.locked {
        format!("yes: {}", text(&w.lock_reason))
    } else {
        "no".to_owned()
    };
    fields(vec![
        ("id", w.id.clone()),
        ("name", w.name.clone()),
        ("organization", w.organization_id.clone()),
        ("project", w.project_id.clone()),
        ("state", state(w)),
        ("labels", labels),
        ("working directory", text(&w.working_directory)),
        ("protected", protected(w)),
        ("locked", locked),
        ("auto-destroy at", when(w.auto_destroy_at.as_ref())),
        ("inactivity", inactivity(w)),
        ("recurring", recurring(w)),
        ("next occurrences", occurrences(w)),
        ("owner", owner(w)),
        ("last state change", when(w.last_state_change_at.as_ref())),
        ("next destroy", when(w.next_auto_destroy_at.as_ref())),
        ("decided by", decided_by(w).to_owned()),
        (
            "held by window",
            match &w.window_held_due_time {
                Some(t) => format!("scheduled for {}", when(Some(t))),
                None => "-".to_owned(),
            },
        ),
        ("auto-destroy status", status(w)),
        ("updated", when(w.update_time.as_ref())),
    ])
}

fn recurring(w: &pb::Workspace) -> String {
    match &w.recurring_auto_destroy {
        Some(r) => format!("{} ({})", r.cron, r.time_zone),
        None => "-".to_owned(),
    }
}

fn occurrences(w: &pb::Workspace) -> String {
    let Some(r) = &w.recurring_auto_destroy else {
        return "-".to_owned();
    };
    r.next_occurrences
        .iter()
        .map(|t| time(Some(t)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn owner(w: &pb::Workspace) -> String {
    match &w.owner {
        Some(o) => [o.email.as_str(), o.slack_user_id.as_str()]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(", "),
        None => "-".to_owned(),
    }
}

pub(super) fn preview_table(r: &pb::PreviewAutoDestroyResponse) -> String {
    let mut t = table(&["destroy at (UTC)", "in", "workspace", "name", "by"]);
    for item in &r.items {
        t.add_row(vec![
            time(item.destroy_time.as_ref()),
            relative(item.destroy_time.as_ref()),
            item.workspace_id.clone(),
            item.workspace_name.clone(),
            item.reason.clone(),
        ]);
    }
    format!(
        "{}\n{} workspace(s) would be destroyed; {} skipped (protected or without applied state)",
        or_none(t, r.items.len(), "no workspace would be destroyed"),
        r.items.len(),
        r.skipped_count
    )
}
