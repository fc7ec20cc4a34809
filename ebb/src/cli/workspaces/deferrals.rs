//! `ebb workspaces why-deferred`: what holds a destroy back, and the deferrals recorded.

use ebb_proto::lifecycle::v1 as pb;

use super::lookups::{Lifecycle, get};
use super::render::status;
use crate::cli::output::{self, fields, or_none, relative, table, text, time, when};
use crate::cli::{CliError, Ctx};

pub(super) async fn why_deferred(
    ctx: &Ctx,
    api: &mut Lifecycle,
    workspace: &str,
) -> Result<(), CliError> {
    let ws = get(api, workspace).await?;
    let mut active = Vec::new();
    for status in [pb::RunStatus::Queued, pb::RunStatus::Running] {
        let runs = api
            .list_runs(pb::ListRunsRequest {
                organization_id: ws.organization_id.clone(),
                workspace_id: workspace.to_owned(),
                status: status as i32,
                page_size: 100,
                ..Default::default()
            })
            .await
            .map_err(|s| CliError::status(format!("runs of workspace {workspace}"), s))?
            .into_inner()
            .runs;
        active.extend(runs);
    }
    let mut events = pb::ListOutboxEventsResponse::default();
    let mut page_token = String::new();
    loop {
        let page = api
            .list_outbox_events(pb::ListOutboxEventsRequest {
                organization_id: ws.organization_id.clone(),
                r#type: "workspace.auto_destroy.deferred".into(),
                subject_id: workspace.to_owned(),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .map_err(|s| CliError::status(format!("deferrals of workspace {workspace}"), s))?
            .into_inner();
        events.events.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    events.events.reverse();
    ctx.print(&events, "ebb.lifecycle.v1.ListOutboxEventsResponse", &|r| {
        let held = if ws.locked {
            format!("locked: {}", text(&ws.lock_reason))
        } else if !active.is_empty() {
            format!(
                "active run(s): {}",
                active
                    .iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            "nothing holds it back now".to_owned()
        };
        let summary = fields(vec![
            ("workspace", format!("{} ({})", ws.id, ws.name)),
            ("auto-destroy status", status(&ws)),
            ("next destroy", when(ws.next_auto_destroy_at.as_ref())),
            ("held back by", held),
        ]);
        let mut t = table(&["deferred at (UTC)", "ago", "due at", "reason"]);
        for e in &r.events {
            let data = e.data.as_ref();
            let field = |name: &str| {
                data.and_then(|d| d.fields.get(name))
                    .map(output::json)
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "-".to_owned())
            };
            t.add_row(vec![
                time(e.create_time.as_ref()),
                relative(e.create_time.as_ref()),
                field("due_at"),
                field("reason"),
            ]);
        }
        format!(
            "{summary}\n{}",
            or_none(t, r.events.len(), "no deferral recorded for this workspace")
        )
    })
}
