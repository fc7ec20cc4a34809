//! `GET /`: what is about to be destroyed — the next seven days of the organization's
//! scheduled destroys as a timeline and a table, filtered by project, label and owner.

use std::collections::HashMap;

use axum::extract::Query;
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use ebb_proto::audit::v1 as au;
use ebb_proto::lifecycle::v1 as lc;
use maud::{Markup, html};
use serde::Deserialize;

use super::api::failure;
use super::layout::{self, Nav, Org};
use super::session::{Session, Signed};
use super::timeline::{self, Lane, Reminder};
use crate::cli::output::datetime;

/// How far ahead the page looks.
const DAYS: i64 = 7;
/// Most workspaces read for the page.
const MAX_WORKSPACES: usize = 2000;
/// Most lanes drawn; the table lists every one.
const MAX_LANES: usize = 150;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Filters {
    org: String,
    project: String,
    label: String,
    owner: String,
}

pub async fn page(Signed(session): Signed, Query(f): Query<Filters>) -> Response {
    let title = "Upcoming destroys";
    layout::org_page(&session, &f.org, Nav::Upcoming, title, async |org| {
        body(&session, org, &f).await
    })
    .await
}

/// `key=value` (or `key` for any value) of the label filter.
fn label_filter(text: &str) -> Result<Option<(String, Option<String>)>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let (k, v) = match text.split_once('=') {
        Some((k, v)) => (k.trim(), Some(v.trim().to_owned())),
        None => (text, None),
    };
    if k.is_empty() {
        return Err(format!(
            "Label filter `{text}`: give `key=value`, or `key` for any value."
        ));
    }
    Ok(Some((k.to_owned(), v)))
}

async fn body(session: &Session, org: &Org, f: &Filters) -> Result<Markup, String> {
    let now = Utc::now();
    let until = now + Duration::days(DAYS);
    let label = label_filter(&f.label)?;
    let mut api = session.api.lifecycle();
    let projects: HashMap<String, String> = api
        .list_projects(lc::ListProjectsRequest {
            organization_id: org.id.clone(),
            page_size: 500,
            ..Default::default()
        })
        .await
        .map_err(|s| failure("Listing projects", &s))?
        .into_inner()
        .projects
        .into_iter()
        .map(|p| (p.id, p.name))
        .collect();
    let settings = api
        .get_organization(lc::GetOrganizationRequest {
            organization_id: org.id.clone(),
        })
        .await
        .map_err(|s| failure("Reading the organization", &s))?
        .into_inner()
        .organization
        .and_then(|o| o.settings)
        .unwrap_or_default();
    let leads: Vec<i64> = settings
        .reminder_lead_times
        .iter()
        .map(|d| d.seconds)
        .collect();

    let mut workspaces = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = api
            .list_workspaces(lc::ListWorkspacesRequest {
                organization_id: org.id.clone(),
                project_id: f.project.clone(),
                owner: f.owner.trim().to_owned(),
                scheduled_only: true,
                next_auto_destroy_before: Some(crate::cli::timestamp(until)),
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await
            .map_err(|s| failure("Listing scheduled workspaces", &s))?
            .into_inner();
        workspaces.extend(page.workspaces);
        page_token = page.next_page_token;
        if page_token.is_empty() || workspaces.len() >= MAX_WORKSPACES {
            break;
        }
    }
    let more = !page_token.is_empty();
    if let Some((k, v)) = &label {
        workspaces.retain(|w| match (w.labels.get(k), v) {
            (Some(have), Some(want)) => have == want,
            (Some(_), None) => true,
            (None, _) => false,
        });
    }

    let longest = leads.iter().copied().max().unwrap_or(0);
    let (sent, audit_warning) = sent_reminders(
        session,
        org,
        now - Duration::seconds(longest) - Duration::days(1),
    )
    .await;
    let mut lanes: Vec<Lane> = workspaces
        .iter()
        .filter_map(|w| {
            let due = datetime(w.next_auto_destroy_at.as_ref())?;
            let reminders = reminders_of(&w.id, due, &leads, &sent, now);
            Some(Lane {
                workspace_id: w.id.clone(),
                workspace_name: w.name.clone(),
                project: projects
                    .get(&w.project_id)
                    .cloned()
                    .unwrap_or_else(|| w.project_id.clone()),
                due,
                held_from: datetime(w.window_held_due_time.as_ref()),
                pushed_by_notice: w.next_auto_destroy_reason == "minimum_notice",
                reason: w.next_auto_destroy_reason.clone(),
                reminders,
            })
        })
        .collect();
    lanes.sort_by(|a, b| (&a.project, a.due).cmp(&(&b.project, b.due)));
    let drawn = &lanes[..lanes.len().min(MAX_LANES)];

    let mut project_names: Vec<(&String, &String)> = projects.iter().collect();
    project_names.sort_by(|a, b| a.1.cmp(b.1));
    Ok(html! {
        form.filters method="get" action="/" {
            @if session.caller.organization_id.is_none() { input type="hidden" name="org" value=(org.id); }
            div.field {
                label for="project" { "Project" }
                select #project name="project" {
                    option value="" { "every project" }
                    @for (id, name) in &project_names {
                        option value=(id) selected[**id == f.project] { (name) }
                    }
                }
            }
            div.field {
                label for="label" { "Label" }
                input #label name="label" value=(f.label) placeholder="team=web";
            }
            div.field {
                label for="owner" { "Owner" }
                input #owner name="owner" value=(f.owner) placeholder="email or Slack id";
            }
            button type="submit" { "Filter" }
        }
        @if let Some(w) = audit_warning { p.flash.error { (w) } }
        p.legend {
            span { "◆ destroy" }
            span { "● reminder sent" }
            span { "○ reminder to come" }
            span.badge.warn { "pushed by notice" }
            span.badge.window { "waiting for a destroy window (dashed from the scheduled time)" }
        }
        @if lanes.is_empty() {
            p #none { "Nothing is scheduled to be destroyed in the next " (DAYS) " days"
                @if !f.project.is_empty() || label.is_some() || !f.owner.is_empty() { " that matches the filters" }
                "." }
        } @else {
            div.scroll { (timeline::draw(drawn, now, DAYS)) }
            @if lanes.len() > drawn.len() {
                p.muted { "The timeline draws the first " (drawn.len()) " of " (lanes.len()) "; the table lists them all." }
            }
            h2 { (lanes.len()) " scheduled destroy" @if lanes.len() != 1 { "s" } @if more { " (more than " (MAX_WORKSPACES) " are scheduled: narrow the filters)" } }
            div.scroll {
                table #upcoming.wide {
                    thead { tr { th { "Workspace" } th { "Project" } th { "Destroy at" } th { "Why" } th.opt { "Reminders" } th.opt { "Owner" } } }
                    tbody {
                        @for l in &lanes {
                            @let w = workspaces.iter().find(|w| w.id == l.workspace_id);
                            tr data-workspace=(l.workspace_id) {
                                td { a href=(format!("/workspaces/{}", l.workspace_id)) { (l.workspace_name) } }
                                td { (l.project) }
                                td { (timeline::stamp(l.due)) br; span.muted { (crate::cli::output::relative_to(l.due, now)) } }
                                td {
                                    (super::workspace::reason_text(&l.reason))
                                    @if l.pushed_by_notice { " " span.badge.warn { "pushed by notice" } }
                                    @if let Some(from) = l.held_from { " " span.badge.window { "window: scheduled " (timeline::stamp(from)) } }
                                }
                                td.opt {
                                    @let sent_n = l.reminders.iter().filter(|r| r.sent).count();
                                    (sent_n) " sent, " (l.reminders.len() - sent_n) " to come"
                                }
                                td.opt { (w.and_then(|w| w.owner.as_ref()).map(|o| if o.email.is_empty() { o.slack_user_id.clone() } else { o.email.clone() }).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
    })
}

/// The reminders already sent, per workspace: (due time, lead time in seconds). Read from the
/// audit trail; when it cannot be read, none, and a warning for the page.
async fn sent_reminders(
    session: &Session,
    org: &Org,
    since: DateTime<Utc>,
) -> (HashMap<String, Vec<(DateTime<Utc>, i64)>>, Option<String>) {
    let mut sent: HashMap<String, Vec<(DateTime<Utc>, i64)>> = HashMap::new();
    let answer = session
        .api
        .audit()
        .list_events(au::ListEventsRequest {
            organization_id: org.id.clone(),
            action: "workspace.auto_destroy.reminder".into(),
            start_time: Some(crate::cli::timestamp(since)),
            order: au::Order::NewestFirst as i32,
            page_size: 1000,
            ..Default::default()
        })
        .await;
    let events = match answer {
        Ok(a) => a.into_inner().events,
        Err(s) => {
            return (
                sent,
                Some(failure(
                    "Reading sent reminders from the audit trail (shown as to come or missing)",
                    &s,
                )),
            );
        }
    };
    for e in events {
        let Some(input) = e.event else { continue };
        let data = crate::cli::output::struct_json(input.data.as_ref());
        let due = data
            .get("due_at")
            .and_then(|v| v.as_str())
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc));
        let lead = data.get("lead_time_ms").and_then(|v| v.as_i64());
        if let (Some(due), Some(lead)) = (due, lead) {
            sent.entry(input.subject_id)
                .or_default()
                .push((due, lead / 1000));
        }
    }
    (sent, None)
}

/// The reminders of the destroy of `workspace` at `due`: those sent for it, and those whose
/// time is still ahead.
fn reminders_of(
    workspace: &str,
    due: DateTime<Utc>,
    leads: &[i64],
    sent: &HashMap<String, Vec<(DateTime<Utc>, i64)>>,
    now: DateTime<Utc>,
) -> Vec<Reminder> {
    let mut out: Vec<Reminder> = sent
        .get(workspace)
        .into_iter()
        .flatten()
        .filter(|(d, _)| *d == due)
        .map(|(_, lead)| Reminder {
            at: due - Duration::seconds(*lead),
            lead: crate::cli::output::compact(lead.unsigned_abs()),
            sent: true,
        })
        .collect();
    for lead in leads {
        let at = due - Duration::seconds(*lead);
        if at > now && !out.iter().any(|r| r.at == at) {
            out.push(Reminder {
                at,
                lead: crate::cli::output::compact(lead.unsigned_abs()),
                sent: false,
            });
        }
    }
    out.sort_by_key(|r| r.at);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn reminders_are_sent_for_this_due_time_or_still_to_come() {
        let due = at("2030-01-03T12:00:00Z");
        let now = at("2030-01-02T18:00:00Z");
        let leads = [86_400, 43_200, 3_600];
        let mut sent = HashMap::new();
        sent.insert(
            "ws".to_owned(),
            vec![
                // The 24h reminder of this due time went out.
                (due, 86_400),
                // One of an earlier schedule does not count.
                (at("2030-01-01T12:00:00Z"), 43_200),
            ],
        );
        let r = reminders_of("ws", due, &leads, &sent, now);
        let seen: Vec<(String, bool)> = r.iter().map(|r| (r.lead.clone(), r.sent)).collect();
        assert_eq!(
            seen,
            vec![
                ("1d".to_owned(), true),
                ("12h".to_owned(), false),
                ("1h".to_owned(), false)
            ]
        );
        assert_eq!(
            label_filter("team=web").expect("ok"),
            Some(("team".into(), Some("web".into())))
        );
        assert_eq!(
            label_filter("team").expect("ok"),
            Some(("team".into(), None))
        );
        assert!(label_filter("=web").is_err());
    }
}
