//! `ebb workspaces`: list and look at workspaces, set, clear and extend their destroy
//! schedules, see upcoming destroys, preview a policy, lock and unlock, and explain deferrals.

use std::time::Duration;

use chrono::Utc;
use ebb_proto::audit::v1 as audit;
use ebb_proto::audit::v1::audit_service_client::AuditServiceClient;
use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;

use super::output::{
    self, fields, label, or_none, relative, span, table, text, time, when, yes_no,
};
use super::{
    CliError, Connection, Ctx, duration_text, enum_parser, parse_duration, parse_key_value,
    parse_time, request_id, timestamp,
};

/// `ebb workspaces`.
#[derive(Debug, clap::Args)]
pub struct WorkspacesArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List an organization's workspaces (optionally of one project, or in one state).
    List {
        /// Organization whose workspaces are listed.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
        /// Only workspaces in this state: active or archived.
        #[arg(long, value_parser = enum_parser("WORKSPACE_STATE_", pb::WorkspaceState::from_str_name))]
        state: Option<pb::WorkspaceState>,
        /// Only this auto-destroy status: idle, deferred, queued, retrying, succeeded, failed.
        #[arg(long, value_parser = enum_parser("AUTO_DESTROY_STATUS_", pb::AutoDestroyStatus::from_str_name))]
        status: Option<pb::AutoDestroyStatus>,
        /// Only workspaces with a pending destroy.
        #[arg(long)]
        scheduled: bool,
        /// At most this many workspaces.
        #[arg(long, default_value_t = 500)]
        limit: usize,
    },
    /// Show one workspace and its schedule.
    Show {
        /// Workspace id.
        workspace: String,
    },
    /// Create a workspace in a project.
    Create {
        /// Project the workspace belongs to.
        #[arg(long)]
        project: String,
        /// Workspace name.
        name: String,
        /// A label, KEY=VALUE; repeatable.
        #[arg(long = "label", value_parser = parse_key_value)]
        labels: Vec<(String, String)>,
        /// Working directory handed to runners.
        #[arg(long)]
        working_directory: Option<String>,
        /// Protect it from every auto-destroy.
        #[arg(long)]
        protected: bool,
    },
    /// Set a destroy time (--at or --in) and/or an inactivity period.
    Schedule {
        /// Workspace id.
        workspace: String,
        /// Destroy at this time (RFC 3339, e.g. 2030-01-01T00:00:00Z).
        #[arg(long, value_parser = parse_time, conflicts_with = "in")]
        at: Option<chrono::DateTime<Utc>>,
        /// Destroy this long from now (e.g. 2h, 3d, 90m).
        #[arg(id = "in", long = "in", value_name = "DURATION", value_parser = parse_duration)]
        in_: Option<Duration>,
        /// Destroy after this long without an applied state change (1h to 9999d, e.g. 14d).
        #[arg(long, value_parser = duration_text)]
        inactivity: Option<String>,
    },
    /// Clear the destroy time and the workspace's own inactivity period.
    Clear {
        /// Workspace id.
        workspace: String,
        /// Clear only the destroy time (`at`) or only the inactivity period (`inactivity`).
        #[arg(long, value_enum)]
        only: Option<Part>,
        /// Return to the project's default inactivity instead of none.
        #[arg(long)]
        inherit_project_default: bool,
    },
    /// Push the pending destroy later, within the organization's maximum.
    Extend {
        /// Workspace id.
        workspace: String,
        /// How much later, e.g. 1d or 12h.
        #[arg(long, value_parser = duration_text)]
        by: String,
    },
    /// Destroys due within a window, soonest first.
    Upcoming {
        /// Organization whose workspaces are looked at.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
        /// The window from now, e.g. 24h or 7d.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        within: Duration,
        /// At most this many workspaces.
        #[arg(long, default_value_t = 500)]
        limit: usize,
    },
    /// Which workspaces a proposed setting would destroy, and when; changes nothing.
    Preview {
        /// Organization whose workspaces are looked at.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
        /// Only workspaces carrying this label, KEY=VALUE; repeatable.
        #[arg(long = "label", value_parser = parse_key_value)]
        labels: Vec<(String, String)>,
        /// Proposed destroy time (RFC 3339).
        #[arg(long, value_parser = parse_time, conflicts_with = "in")]
        at: Option<chrono::DateTime<Utc>>,
        /// Proposed destroy time, this long from now.
        #[arg(id = "in", long = "in", value_name = "DURATION", value_parser = parse_duration)]
        in_: Option<Duration>,
        /// Proposed inactivity period.
        #[arg(long, value_parser = duration_text)]
        inactivity: Option<String>,
    },
    /// Lock a workspace: its destroy is deferred until it is unlocked.
    Lock {
        /// Workspace id.
        workspace: String,
        /// Why; deferrals quote it.
        #[arg(long)]
        reason: String,
    },
    /// Unlock a workspace.
    Unlock {
        /// Workspace id.
        workspace: String,
    },
    /// Why a workspace's destroy was deferred: its lock, its active runs and the deferral
    /// events.
    WhyDeferred {
        /// Workspace id.
        workspace: String,
    },
    /// Every auto-destroy decision about a workspace from the audit log, newest first.
    History {
        /// Workspace id.
        workspace: String,
        /// At most this many events.
        #[arg(long, default_value_t = 50)]
        limit: i32,
    },
}

/// One part of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// The one-shot destroy time.
    At,
    /// The workspace's own inactivity period.
    Inactivity,
}

type Lifecycle = LifecycleServiceClient<ebb_common::client::TracedChannel>;

const WORKSPACE: &str = "ebb.lifecycle.v1.Workspace";

/// Runs `ebb workspaces`.
pub fn main(args: WorkspacesArgs) -> std::process::ExitCode {
    super::run("workspaces", async move {
        let ctx = super::connect(&args.conn)?;
        run(&ctx, args.command).await
    })
}

async fn run(ctx: &Ctx, command: Command) -> Result<(), CliError> {
    let mut api = Lifecycle::new(ctx.channel.clone());
    match command {
        Command::List {
            organization,
            project,
            state,
            status,
            scheduled,
            limit,
        } => {
            let request = pb::ListWorkspacesRequest {
                organization_id: organization.clone(),
                project_id: project.unwrap_or_default(),
                state: state.map_or(0, |s| s as i32),
                auto_destroy_status: status.map_or(0, |s| s as i32),
                scheduled_only: scheduled,
                ..Default::default()
            };
            let answer = list_all(&mut api, request, limit, &organization).await?;
            ctx.print(&answer, "ebb.lifecycle.v1.ListWorkspacesResponse", &|r| {
                workspace_table(&r.workspaces)
            })
        }
        Command::Show { workspace } => {
            let ws = get(&mut api, &workspace).await?;
            ctx.print(&ws, WORKSPACE, &|w| workspace_fields(w))
        }
        Command::Create {
            project,
            name,
            labels,
            working_directory,
            protected,
        } => {
            let ws = api
                .create_workspace(pb::CreateWorkspaceRequest {
                    request_id: request_id(),
                    project_id: project.clone(),
                    name: name.clone(),
                    labels: labels.into_iter().collect(),
                    protected,
                    working_directory: working_directory.unwrap_or_default(),
                })
                .await
                .map_err(|s| {
                    CliError::status(format!("create workspace {name} in project {project}"), s)
                })?
                .into_inner()
                .workspace
                .unwrap_or_default();
            ctx.print(&ws, WORKSPACE, &|w| workspace_fields(w))
        }
        Command::Schedule {
            workspace,
            at,
            in_,
            inactivity,
        } => {
            let at = destroy_time(at, in_)?;
            if at.is_none() && inactivity.is_none() {
                return Err(CliError::Usage(
                    "give --at, --in or --inactivity (or several)".into(),
                ));
            }
            let ws = api
                .set_auto_destroy(pb::SetAutoDestroyRequest {
                    request_id: request_id(),
                    workspace_id: workspace.clone(),
                    auto_destroy_at: at.map(timestamp),
                    auto_destroy_inactivity: inactivity.unwrap_or_default(),
                })
                .await
                .map_err(|s| CliError::status(format!("schedule workspace {workspace}"), s))?
                .into_inner()
                .workspace
                .unwrap_or_default();
            ctx.print(&ws, WORKSPACE, &|w| workspace_fields(w))
        }
        Command::Clear {
            workspace,
            only,
            inherit_project_default,
        } => {
            let ws = api
                .clear_auto_destroy(pb::ClearAutoDestroyRequest {
                    request_id: request_id(),
                    workspace_id: workspace.clone(),
                    clear_auto_destroy_at: only != Some(Part::Inactivity),
                    clear_auto_destroy_inactivity: only != Some(Part::At),
                    inherit_project_default,
                })
                .await
                .map_err(|s| {
                    CliError::status(format!("clear the schedule of workspace {workspace}"), s)
                })?
                .into_inner()
                .workspace
                .unwrap_or_default();
            ctx.print(&ws, WORKSPACE, &|w| workspace_fields(w))
        }
        Command::Extend { workspace, by } => {
            let ws = api
                .extend_auto_destroy(pb::ExtendAutoDestroyRequest {
                    request_id: request_id(),
                    workspace_id: workspace.clone(),
                    extend_by: by,
                })
                .await
                .map_err(|s| CliError::status(format!("extend workspace {workspace}"), s))?
                .into_inner()
                .workspace
                .unwrap_or_default();
            ctx.print(&ws, WORKSPACE, &|w| workspace_fields(w))
        }
        Command::Upcoming {
            organization,
            project,
            within,
            limit,
        } => {
            let until = Utc::now()
                + chrono::Duration::from_std(within)
                    .map_err(|_| CliError::Usage("--within is too long".into()))?;
            let request = pb::ListWorkspacesRequest {
                organization_id: organization.clone(),
                project_id: project.unwrap_or_default(),
                scheduled_only: true,
                next_auto_destroy_before: Some(timestamp(until)),
                ..Default::default()
            };
            let mut answer = list_all(&mut api, request, limit, &organization).await?;
            answer.workspaces.sort_by_key(|w| {
                w.next_auto_destroy_at
                    .as_ref()
                    .map(|t| (t.seconds, t.nanos))
            });
            ctx.print(&answer, "ebb.lifecycle.v1.ListWorkspacesResponse", &|r| {
                upcoming_table(&r.workspaces, within)
            })
        }
        Command::Preview {
            organization,
            project,
            labels,
            at,
            in_,
            inactivity,
        } => {
            let at = destroy_time(at, in_)?;
            if at.is_none() && inactivity.is_none() {
                return Err(CliError::Usage(
                    "give the proposed setting: --at, --in or --inactivity".into(),
                ));
            }
            let answer = api
                .preview_auto_destroy(pb::PreviewAutoDestroyRequest {
                    organization_id: organization.clone(),
                    project_id: project.unwrap_or_default(),
                    auto_destroy_inactivity: inactivity.unwrap_or_default(),
                    auto_destroy_at: at.map(timestamp),
                    label_selector: labels.into_iter().collect(),
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .map_err(|s| {
                    CliError::status(format!("preview for organization {organization}"), s)
                })?
                .into_inner();
            ctx.print(
                &answer,
                "ebb.lifecycle.v1.PreviewAutoDestroyResponse",
                &|r| preview_table(r),
            )
        }
        Command::Lock { workspace, reason } => {
            let ws = api
                .lock_workspace(pb::LockWorkspaceRequest {
                    request_id: request_id(),
                    workspace_id: workspace.clone(),
                    reason,
                })
                .await
                .map_err(|s| CliError::status(format!("lock workspace {workspace}"), s))?
                .into_inner()
                .workspace
                .unwrap_or_default();
            ctx.print(&ws, WORKSPACE, &|w| workspace_fields(w))
        }
        Command::Unlock { workspace } => {
            let ws = api
                .unlock_workspace(pb::UnlockWorkspaceRequest {
                    request_id: request_id(),
                    workspace_id: workspace.clone(),
                })
                .await
                .map_err(|s| CliError::status(format!("unlock workspace {workspace}"), s))?
                .into_inner()
                .workspace
                .unwrap_or_default();
            ctx.print(&ws, WORKSPACE, &|w| workspace_fields(w))
        }
        Command::WhyDeferred { workspace } => why_deferred(ctx, &mut api, &workspace).await,
        Command::History { workspace, limit } => {
            let ws = get(&mut api, &workspace).await?;
            let mut audit = AuditServiceClient::new(ctx.channel.clone());
            let answer = audit
                .list_events(audit::ListEventsRequest {
                    organization_id: ws.organization_id.clone(),
                    action_prefix: "workspace.auto_destroy.".into(),
                    subject_id: workspace.clone(),
                    order: audit::Order::NewestFirst as i32,
                    page_size: limit,
                    ..Default::default()
                })
                .await
                .map_err(|s| CliError::status(format!("audit events of workspace {workspace}"), s))?
                .into_inner();
            ctx.print(&answer, "ebb.audit.v1.ListEventsResponse", &|r| {
                super::audit::events_table(&r.events)
            })
        }
    }
}

/// `--at` or `now + --in`.
fn destroy_time(
    at: Option<chrono::DateTime<Utc>>,
    in_: Option<Duration>,
) -> Result<Option<chrono::DateTime<Utc>>, CliError> {
    match (at, in_) {
        (Some(at), _) => Ok(Some(at)),
        (None, Some(d)) => chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d))
            .map(Some)
            .ok_or_else(|| CliError::Usage("--in is too long".into())),
        (None, None) => Ok(None),
    }
}

/// One workspace, or an error naming it.
pub async fn get(api: &mut Lifecycle, workspace: &str) -> Result<pb::Workspace, CliError> {
    api.get_workspace(pb::GetWorkspaceRequest {
        workspace_id: workspace.to_owned(),
    })
    .await
    .map_err(|s| CliError::status(format!("workspace {workspace}"), s))?
    .into_inner()
    .workspace
    .ok_or_else(|| CliError::Failed(format!("workspace {workspace}: the answer is empty")))
}

/// Every page of a listing, up to `limit` workspaces, as one answer.
async fn list_all(
    api: &mut Lifecycle,
    mut request: pb::ListWorkspacesRequest,
    limit: usize,
    organization: &str,
) -> Result<pb::ListWorkspacesResponse, CliError> {
    let mut all = pb::ListWorkspacesResponse::default();
    loop {
        request.page_size = i32::try_from(limit.saturating_sub(all.workspaces.len()))
            .unwrap_or(i32::MAX)
            .clamp(1, 1000);
        let page = api
            .list_workspaces(request.clone())
            .await
            .map_err(|s| CliError::status(format!("workspaces of organization {organization}"), s))?
            .into_inner();
        all.workspaces.extend(page.workspaces);
        all.next_page_token = page.next_page_token;
        if all.next_page_token.is_empty() || all.workspaces.len() >= limit {
            all.workspaces.truncate(limit);
            return Ok(all);
        }
        request.page_token = all.next_page_token.clone();
    }
}

fn state(w: &pb::Workspace) -> String {
    label(w.state, "WORKSPACE_STATE_", pb::WorkspaceState::as_str_name)
}

fn status(w: &pb::Workspace) -> String {
    label(
        w.auto_destroy_status,
        "AUTO_DESTROY_STATUS_",
        pb::AutoDestroyStatus::as_str_name,
    )
}

/// Which branch decides the next destroy.
fn decided_by(w: &pb::Workspace) -> &'static str {
    match (&w.next_auto_destroy_at, &w.auto_destroy_at) {
        (None, _) => "-",
        (Some(next), Some(at)) if next == at => "time",
        (Some(_), _) => "inactivity",
    }
}

fn inactivity(w: &pb::Workspace) -> String {
    let s = span(w.effective_auto_destroy_inactivity.as_ref());
    if w.inherits_project_auto_destroy && s != "-" {
        format!("{s} (project)")
    } else {
        s
    }
}

fn protected(w: &pb::Workspace) -> String {
    match (w.protected, w.protected_by_policy) {
        (_, true) => "yes (policy)".to_owned(),
        (p, false) => yes_no(p),
    }
}

fn workspace_table(list: &[pb::Workspace]) -> String {
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
    ]);
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

fn upcoming_table(list: &[pb::Workspace], within: Duration) -> String {
    let mut t = table(&[
        "due at (UTC)",
        "in",
        "workspace",
        "name",
        "project",
        "by",
        "status",
        "locked",
    ]);
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
        ("last state change", when(w.last_state_change_at.as_ref())),
        ("next destroy", when(w.next_auto_destroy_at.as_ref())),
        ("decided by", decided_by(w).to_owned()),
        ("auto-destroy status", status(w)),
        ("updated", when(w.update_time.as_ref())),
    ])
}

fn preview_table(r: &pb::PreviewAutoDestroyResponse) -> String {
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

async fn why_deferred(ctx: &Ctx, api: &mut Lifecycle, workspace: &str) -> Result<(), CliError> {
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
