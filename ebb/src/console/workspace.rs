//! `GET /workspaces/{id}`: one workspace's schedule and why, its runs and its history with
//! the actors of the audit trail; and the actions on it — extend, lock, unlock, clear,
//! approve or reject a destroy run — offered to the roles that may take them.

use axum::extract::{Form, Path};
use axum::response::Response;
use ebb_proto::audit::v1 as au;
use ebb_proto::lifecycle::v1 as lc;
use maud::{Markup, html};
use serde::Deserialize;

use super::api::failure;
use super::layout::{self, Frame, Nav, relative, when};
use super::session::{Session, Signed};
use crate::cli::output::{label, span};

/// What a `next_auto_destroy_reason` means.
pub fn reason_text(reason: &str) -> &'static str {
    match reason {
        "auto_destroy_at" => "one-shot time",
        "inactivity" => "inactivity",
        "recurring" => "recurring schedule",
        "retry" => "retry of a failed destroy",
        "minimum_notice" => "policy change, pushed to give the minimum notice",
        _ => "scheduled",
    }
}

pub async fn page(Signed(session): Signed, Path(id): Path<String>) -> Response {
    let ws = match session
        .api
        .lifecycle()
        .get_workspace(lc::GetWorkspaceRequest {
            workspace_id: id.clone(),
        })
        .await
    {
        Ok(w) => w.into_inner().workspace.unwrap_or_default(),
        Err(s) => {
            let frame = Frame::new(&session, None, Nav::Upcoming);
            return layout::failed(
                &frame,
                "Workspace",
                &failure(&format!("Workspace {id}"), &s),
            );
        }
    };
    let orgs = layout::org(&session, &ws.organization_id).await.ok();
    let frame = Frame::new(&session, orgs.as_ref(), Nav::Upcoming);
    let title = format!("Workspace {}", ws.name);
    layout::outcome(&frame, &title, body(&session, &ws).await)
}

async fn body(session: &Session, ws: &lc::Workspace) -> Result<Markup, String> {
    let mut api = session.api.lifecycle();
    let project = api
        .get_project(lc::GetProjectRequest {
            project_id: ws.project_id.clone(),
        })
        .await
        .map(|p| p.into_inner().project.unwrap_or_default())
        .map_err(|s| failure("Reading the project", &s))?;
    let runs = api
        .list_runs(lc::ListRunsRequest {
            organization_id: ws.organization_id.clone(),
            workspace_id: ws.id.clone(),
            page_size: 20,
            ..Default::default()
        })
        .await
        .map_err(|s| failure("Listing runs", &s))?
        .into_inner()
        .runs;
    let history = session
        .api
        .audit()
        .list_events(au::ListEventsRequest {
            organization_id: ws.organization_id.clone(),
            subject_id: ws.id.clone(),
            order: au::Order::NewestFirst as i32,
            page_size: 50,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().events)
        .map_err(|s| failure("Reading the history from the audit trail", &s));
    let status = label(
        ws.auto_destroy_status,
        "AUTO_DESTROY_STATUS_",
        lc::AutoDestroyStatus::as_str_name,
    );
    let may = session.caller.may_change();
    let csrf = &session.csrf;
    let action = |verb: &str| format!("/workspaces/{}/{verb}", ws.id);
    Ok(html! {
        p.muted { "Project " strong { (project.name) } " · " code { (ws.id) } }
        h2 { "Schedule" }
        dl.facts #schedule {
            dt { "Status" } dd #status { span.badge { (status) } }
            dt { "Next destroy" }
            dd #next {
                @if ws.next_auto_destroy_at.is_some() {
                    (when(ws.next_auto_destroy_at.as_ref())) " · " (relative(ws.next_auto_destroy_at.as_ref()))
                } @else { "none scheduled" }
            }
            @if ws.next_auto_destroy_at.is_some() {
                dt { "Why" }
                dd #why {
                    (reason_text(&ws.next_auto_destroy_reason))
                    @if ws.next_auto_destroy_reason == "minimum_notice" { " " span.badge.warn { "pushed by notice" } }
                }
            }
            @if let Some(held) = &ws.window_held_due_time {
                dt { "Destroy window" }
                dd { span.badge.window { "waiting for a window" } " scheduled for " (when(Some(held))) "; it starts when the next destroy window opens" }
            }
            dt { "One-shot time" } dd { (when(ws.auto_destroy_at.as_ref())) }
            dt { "Inactivity" }
            dd {
                @if ws.effective_auto_destroy_inactivity.is_some() {
                    (span(ws.effective_auto_destroy_inactivity.as_ref())) " after the last state change ("
                    (when(ws.last_state_change_at.as_ref())) ")"
                    @if ws.inherits_project_auto_destroy { ", inherited from project " (project.name) } @else { ", the workspace's own" }
                } @else { "none" }
            }
            @if let Some(r) = &ws.recurring_auto_destroy {
                dt { "Recurring" }
                dd { code { (r.cron) } " in " (r.time_zone)
                    @if !r.next_occurrences.is_empty() { "; next: "
                        @for (i, t) in r.next_occurrences.iter().take(3).enumerate() { @if i > 0 { ", " } (when(Some(t))) }
                    }
                }
            }
            dt { "Protected" } dd { @if ws.protected { "yes" @if ws.protected_by_policy { " (by the organization's label policy)" } } @else { "no" } }
            dt { "Locked" } dd #locked { @if ws.locked { "yes" @if !ws.lock_reason.is_empty() { ": " (ws.lock_reason) } } @else { "no" } }
            @if let Some(o) = &ws.owner {
                dt { "Owner" } dd { (o.email) @if !o.email.is_empty() && !o.slack_user_id.is_empty() { " · " } (o.slack_user_id) }
            }
        }
        @if may {
            h2 { "Act" }
            div.cards {
                @if ws.next_auto_destroy_at.is_some() {
                    form.stack.card method="post" action=(action("extend")) {
                        input type="hidden" name="csrf" value=(csrf);
                        label for="extend_by" { "Push the destroy later by" }
                        input #extend_by name="extend_by" value="1d" required;
                        button #extend type="submit" { "Extend" }
                    }
                }
                @if ws.locked {
                    form.stack.card method="post" action=(action("unlock")) {
                        input type="hidden" name="csrf" value=(csrf);
                        p { "Locked workspaces are never destroyed automatically." }
                        button #unlock type="submit" { "Unlock" }
                    }
                } @else {
                    form.stack.card method="post" action=(action("lock")) {
                        input type="hidden" name="csrf" value=(csrf);
                        label for="reason" { "Lock, with a reason" }
                        input #reason name="reason" placeholder="investigating an incident";
                        button #lock.secondary type="submit" { "Lock" }
                    }
                }
                @if ws.auto_destroy_at.is_some() || ws.effective_auto_destroy_inactivity.is_some() || ws.recurring_auto_destroy.is_some() {
                    form.stack.card method="post" action=(action("clear")) {
                        input type="hidden" name="csrf" value=(csrf);
                        p { "Remove the one-shot time, the inactivity period and the recurring schedule." }
                        button #clear.danger type="submit" { "Clear the schedule" }
                    }
                }
            }
        }
        h2 { "Runs" }
        (runs_table(session, ws, &runs))
        h2 { "History" }
        @match &history {
            Err(e) => p.flash.error { (e) },
            Ok(events) if events.is_empty() => p.muted { "No events recorded yet (the audit trail receives them within seconds)." },
            Ok(events) => div.scroll { table #history {
                thead { tr { th { "When" } th { "What" } th { "Who" } } }
                tbody { @for e in events { @if let Some(i) = &e.event {
                    tr { td { (when(i.occur_time.as_ref())) } td { code { (i.action) } } td.actor { (i.actor) } }
                } } }
            } },
        }
    })
}

fn runs_table(session: &Session, ws: &lc::Workspace, runs: &[lc::Run]) -> Markup {
    let may = session.caller.may_change();
    html! {
        @if runs.is_empty() { p.muted { "No runs yet." } } @else {
            div.scroll { table #runs {
                thead { tr { th { "Run" } th { "Source" } th { "Status" } th { "Created" } th { "Approval" } } }
                tbody { @for r in runs {
                    @let status = label(r.status, "RUN_STATUS_", lc::RunStatus::as_str_name);
                    tr data-run=(r.id) {
                        td { code { (r.id) } }
                        td { (label(r.source, "RUN_SOURCE_", lc::RunSource::as_str_name)) }
                        td { span.badge { (status) } @if !r.message.is_empty() { br; span.muted { (r.message) } } }
                        td { (when(r.create_time.as_ref())) }
                        td {
                            @if let Some(a) = &r.approval { (a.state) @if !a.decided_by.is_empty() { " by " (a.decided_by) } }
                            @if may && r.status == lc::RunStatus::AwaitingApproval as i32 {
                                @for verb in ["approve", "reject"] {
                                    form.actions method="post" action=(format!("/runs/{}/{verb}", r.id)) {
                                        input type="hidden" name="csrf" value=(session.csrf);
                                        input type="hidden" name="workspace" value=(ws.id);
                                        input name="reason" placeholder="why (for the audit trail)" required aria-label="reason";
                                        button.danger[verb == "approve"].secondary[verb == "reject"] type="submit" data-verb=(verb) { (verb) }
                                    }
                                }
                            }
                        }
                    }
                } }
            } }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ActForm {
    csrf: String,
    extend_by: String,
    reason: String,
    workspace: String,
}

/// `POST /workspaces/{id}/{extend|lock|unlock|clear}`.
pub async fn act(
    Signed(session): Signed,
    Path((id, verb)): Path<(String, String)>,
    Form(form): Form<ActForm>,
) -> Response {
    if let Some(r) = layout::stale_form(&session, &form.csrf) {
        return r;
    }
    let mut api = session.api.lifecycle();
    let request_id = crate::cli::request_id();
    let outcome = match verb.as_str() {
        "extend" => api
            .extend_auto_destroy(lc::ExtendAutoDestroyRequest {
                request_id,
                workspace_id: id.clone(),
                extend_by: form.extend_by.trim().to_owned(),
            })
            .await
            .map(|r| {
                let w = r.into_inner().workspace.unwrap_or_default();
                format!(
                    "Extended: the destroy is now at {}.",
                    when(w.next_auto_destroy_at.as_ref())
                )
            }),
        "lock" => api
            .lock_workspace(lc::LockWorkspaceRequest {
                request_id,
                workspace_id: id.clone(),
                reason: form.reason.trim().to_owned(),
            })
            .await
            .map(|_| "Locked: nothing destroys it automatically until it is unlocked.".to_owned()),
        "unlock" => api
            .unlock_workspace(lc::UnlockWorkspaceRequest {
                request_id,
                workspace_id: id.clone(),
            })
            .await
            .map(|_| "Unlocked.".to_owned()),
        "clear" => api
            .clear_auto_destroy(lc::ClearAutoDestroyRequest {
                request_id,
                workspace_id: id.clone(),
                clear_auto_destroy_at: true,
                clear_auto_destroy_inactivity: true,
                clear_recurring: true,
                ..Default::default()
            })
            .await
            .map(|_| "Cleared: no destroy is scheduled.".to_owned()),
        _ => return layout::not_found().await,
    };
    layout::after(
        &session,
        outcome,
        &format!("Could not {verb}"),
        &format!("/workspaces/{}", layout::enc(&id)),
    )
}

/// `POST /runs/{id}/{approve|reject}`, back to the run's workspace.
pub async fn decide(
    Signed(session): Signed,
    Path((id, verb)): Path<(String, String)>,
    Form(form): Form<ActForm>,
) -> Response {
    if let Some(r) = layout::stale_form(&session, &form.csrf) {
        return r;
    }
    let mut api = session.api.lifecycle();
    let reason = form.reason.trim().to_owned();
    let request_id = crate::cli::request_id();
    let outcome = match verb.as_str() {
        "approve" => api
            .approve_run(lc::ApproveRunRequest {
                request_id,
                run_id: id.clone(),
                reason,
            })
            .await
            .map(|_| "Approved: the destroy run is queued for the runners.".to_owned()),
        "reject" => api
            .reject_run(lc::RejectRunRequest {
                request_id,
                run_id: id.clone(),
                reason,
            })
            .await
            .map(|_| "Rejected: the destroy does not run.".to_owned()),
        _ => return layout::not_found().await,
    };
    let back = if form.workspace.is_empty() {
        "/".to_owned()
    } else {
        format!("/workspaces/{}", layout::enc(&form.workspace))
    };
    layout::after(
        &session,
        outcome,
        &format!("Could not {verb} run {id}"),
        &back,
    )
}
