//! `GET /action-runs/{id}`: an action run followed step by step. The steps part of the page
//! (`/action-runs/{id}/steps`) is fetched again every two seconds until the run has ended.

use axum::extract::{Form, Path};
use axum::response::{Html, IntoResponse, Response};
use ebb_proto::lifecycle::v1 as lc;
use maud::{Markup, html};
use serde::Deserialize;

use super::api::failure;
use super::deprovision::kept_of;
use super::graph::{self, Node};
use super::layout::{self, Frame, Nav, enc, when};
use super::session::{Session, Signed};
use crate::cli::output::label;

async fn get(session: &Session, id: &str) -> Result<lc::ActionRun, String> {
    session
        .api
        .deprovision()
        .get_action_run(lc::GetActionRunRequest {
            action_run_id: id.to_owned(),
        })
        .await
        .map(|r| r.into_inner().action_run.unwrap_or_default())
        .map_err(|s| failure(&format!("Action run {id}"), &s))
}

fn run_status(run: &lc::ActionRun) -> String {
    label(
        run.status,
        "ACTION_RUN_STATUS_",
        lc::ActionRunStatus::as_str_name,
    )
}

pub async fn page(Signed(session): Signed, Path(id): Path<String>) -> Response {
    let title = format!("Action run {id}");
    let run = match get(&session, &id).await {
        Ok(r) => r,
        Err(e) => {
            let frame = Frame::new(&session, None, Nav::Deprovision);
            return layout::failed(&frame, &title, &e);
        }
    };
    let orgs = layout::org(&session, &run.organization_id).await.ok();
    let frame = Frame::new(&session, orgs.as_ref(), Nav::Deprovision);
    let root = run
        .plan
        .iter()
        .find(|s| s.entity_id == run.entity_id)
        .map(|s| format!("{}/{}", s.entity_kind, s.entity_name))
        .unwrap_or_else(|| run.entity_id.clone());
    let body = html! {
        dl.facts {
            dt { "Action" } dd { (run.action) " on " (root) }
            dt { "Triggered by" } dd.actor { (run.actor) @if !run.scheduled_action_id.is_empty() { " (scheduled action " code { (run.scheduled_action_id) } ")" } }
            dt { "Started" } dd { (when(run.create_time.as_ref())) }
            dt { "Parameters" } dd { code { (crate::cli::output::struct_text(run.parameters.as_ref())) } }
        }
        (live(&session, &run))
    };
    layout::page(&frame, &title, body)
}

/// `GET /action-runs/{id}/steps`: the live part alone.
pub async fn steps(Signed(session): Signed, Path(id): Path<String>) -> Response {
    match get(&session, &id).await {
        Ok(run) => Html(live(&session, &run).into_string()).into_response(),
        Err(e) => Html(html! { div #live { p.flash.error { (e) } } }.into_string()).into_response(),
    }
}

/// The run's status, what the caller may do about it, its graph and steps; `data-done` once
/// the run has ended.
fn live(session: &Session, run: &lc::ActionRun) -> Markup {
    let status = run_status(run);
    let may = session.caller.may_change();
    let done = status != "running";
    let steps: std::collections::HashMap<&str, &lc::ActionStep> = run
        .steps
        .iter()
        .map(|s| (s.entity_id.as_str(), s))
        .collect();
    let step_status = |entity: &str| {
        steps.get(entity).map(|s| {
            label(
                s.status,
                "ACTION_STEP_STATUS_",
                lc::ActionStepStatus::as_str_name,
            )
        })
    };
    let nodes: Vec<Node> = run
        .plan
        .iter()
        .map(|p| Node {
            entity_id: p.entity_id.clone(),
            kind: p.entity_kind.clone(),
            name: p.entity_name.clone(),
            order: p.order,
            waits_for: p.waits_for_entity_ids.clone(),
            status: step_status(&p.entity_id).or(Some("pending".into())),
        })
        .collect();
    let kept: Vec<graph::Kept> = run.kept.iter().map(kept_of).collect();
    let finished = run
        .steps
        .iter()
        .filter(|s| {
            matches!(
                lc::ActionStepStatus::try_from(s.status),
                Ok(lc::ActionStepStatus::Succeeded | lc::ActionStepStatus::Kept)
            )
        })
        .count();
    html! {
        div #live data-follow=[(!done).then(|| format!("/action-runs/{}/steps", run.id))]
            data-done=[done.then_some("true")] data-status=(status) aria-live="polite" {
            p { "Status " span #run-status.badge.good[status == "succeeded"].bad[status == "failed" || status == "canceled"] { (status) }
                " · " (finished) " of " (run.plan.len()) " steps done"
                @if run.finish_time.is_some() { " · ended " (when(run.finish_time.as_ref())) } }
            @if !run.error.is_empty() { p.flash.error { (run.error) } }
            @if may && status == "running" {
                form.actions method="post" action=(format!("/action-runs/{}/cancel", enc(&run.id))) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    button #cancel.secondary type="submit" { "Cancel the run" }
                }
            }
            @if may && status == "failed" {
                form.actions method="post" action=(format!("/action-runs/{}/retry", enc(&run.id))) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    button #retry type="submit" { "Retry the failed steps" }
                }
            }
            div.scroll { (graph::draw(&nodes, &kept)) }
            div.scroll { table #steps {
                thead { tr { th { "Step" } th { "Entity" } th { "Status" } th.opt { "Run" } th { "Started" } th { "Finished" } } }
                tbody { @for p in &run.plan {
                    @let s = steps.get(p.entity_id.as_str());
                    tr data-step-status=(step_status(&p.entity_id).unwrap_or_default()) {
                        td.num { (p.order + 1) }
                        td { (p.entity_kind) "/" (p.entity_name) }
                        td { (step_status(&p.entity_id).unwrap_or_else(|| "pending".into()))
                             @if let Some(s) = s { @if !s.error.is_empty() { br; span.muted { (s.error) } } } }
                        td.opt { @if let Some(s) = s { code { (s.run_id) } } }
                        td { (when(s.and_then(|s| s.start_time.as_ref()))) }
                        td { (when(s.and_then(|s| s.finish_time.as_ref()))) }
                    }
                } }
            } }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CsrfOnly {
    csrf: String,
}

/// `POST /action-runs/{id}/{cancel|retry}`.
pub async fn act(
    Signed(session): Signed,
    Path((id, verb)): Path<(String, String)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(r) = layout::stale_form(&session, &form.csrf) {
        return r;
    }
    let mut api = session.api.deprovision();
    let request_id = crate::cli::request_id();
    let outcome = match verb.as_str() {
        "cancel" => api
            .cancel_action_run(lc::CancelActionRunRequest {
                request_id,
                action_run_id: id.clone(),
            })
            .await
            .map(|_| "Canceled: no further step starts.".to_owned()),
        "retry" => api
            .retry_action_run(lc::RetryActionRunRequest {
                request_id,
                action_run_id: id.clone(),
            })
            .await
            .map(|_| "Retrying the failed steps.".to_owned()),
        _ => return layout::not_found().await,
    };
    layout::after(
        &session,
        outcome,
        &format!("Could not {verb}"),
        &format!("/action-runs/{}", enc(&id)),
    )
}
