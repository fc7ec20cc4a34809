//! `ebb workspaces`: list and look at workspaces, set, clear and extend their destroy
//! schedules, see upcoming destroys, preview a policy, lock and unlock, and explain deferrals.

mod args;
mod deferrals;
mod lookups;
mod render;

use chrono::Utc;
use ebb_proto::audit::v1 as audit;
use ebb_proto::audit::v1::audit_service_client::AuditServiceClient;
use ebb_proto::lifecycle::v1 as pb;

use self::args::{Command, Part};
use self::deferrals::why_deferred;
use self::lookups::{Lifecycle, list_all};
use self::render::{preview_table, upcoming_table, workspace_table};
use super::names::Names;
use super::{CliError, Ctx, request_id, timestamp};

pub use self::args::WorkspacesArgs;
pub use self::lookups::get;
pub use self::render::workspace_fields;

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
            owner,
            limit,
        } => {
            let (org, project) = org_and_project(ctx, &organization, project).await?;
            let request = pb::ListWorkspacesRequest {
                organization_id: org,
                project_id: project,
                state: state.map_or(0, |s| s as i32),
                auto_destroy_status: status.map_or(0, |s| s as i32),
                scheduled_only: scheduled,
                owner: owner.unwrap_or_default(),
                ..Default::default()
            };
            let answer = list_all(&mut api, request, limit, &organization).await?;
            ctx.print(&answer, "ebb.lifecycle.v1.ListWorkspacesResponse", &|r| {
                workspace_table(&r.workspaces)
            })
        }
        Command::Show { workspace } => {
            let id = workspace.id(&ctx.channel).await?;
            let ws = get(&mut api, &id).await?;
            ctx.print(&ws, WORKSPACE, &|w| workspace_fields(w))
        }
        Command::Create {
            project,
            scope,
            name,
            labels,
            working_directory,
            protected,
            owner,
        } => {
            let project_id = Names::new(&ctx.channel, scope.organization.as_deref())
                .project(&project)
                .await?;
            let ws = api
                .create_workspace(pb::CreateWorkspaceRequest {
                    request_id: request_id(),
                    project_id,
                    name: name.clone(),
                    labels: labels.into_iter().collect(),
                    protected,
                    working_directory: working_directory.unwrap_or_default(),
                    owner: owner.owner(),
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
            recurring,
        } => {
            let (id, workspace) = (workspace.id(&ctx.channel).await?, workspace.workspace);
            let at = super::at_or_in(at, in_)?;
            let recurring = recurring.schedule();
            if at.is_none() && inactivity.is_none() && recurring.is_none() {
                return Err(CliError::Usage(
                    "give --at, --in, --inactivity or --recurring with --time-zone (or several)"
                        .into(),
                ));
            }
            let ws = api
                .set_auto_destroy(pb::SetAutoDestroyRequest {
                    request_id: request_id(),
                    workspace_id: id.clone(),
                    auto_destroy_at: at.map(timestamp),
                    auto_destroy_inactivity: inactivity.unwrap_or_default(),
                    recurring,
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
            let (id, workspace) = (workspace.id(&ctx.channel).await?, workspace.workspace);
            let ws = api
                .clear_auto_destroy(pb::ClearAutoDestroyRequest {
                    request_id: request_id(),
                    workspace_id: id.clone(),
                    clear_auto_destroy_at: only.is_none_or(|p| p == Part::At),
                    clear_auto_destroy_inactivity: only.is_none_or(|p| p == Part::Inactivity),
                    inherit_project_default,
                    clear_recurring: only.is_none_or(|p| p == Part::Recurring),
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
            let (id, workspace) = (workspace.id(&ctx.channel).await?, workspace.workspace);
            let ws = api
                .extend_auto_destroy(pb::ExtendAutoDestroyRequest {
                    request_id: request_id(),
                    workspace_id: id.clone(),
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
            let (org, project) = org_and_project(ctx, &organization, project).await?;
            let request = pb::ListWorkspacesRequest {
                organization_id: org,
                project_id: project,
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
            recurring,
        } => {
            let at = super::at_or_in(at, in_)?;
            let recurring = recurring.schedule();
            if at.is_none() && inactivity.is_none() && recurring.is_none() {
                return Err(CliError::Usage(
                    "give the proposed setting: --at, --in, --inactivity or --recurring with \
                     --time-zone"
                        .into(),
                ));
            }
            let (org, project) = org_and_project(ctx, &organization, project).await?;
            let answer = api
                .preview_auto_destroy(pb::PreviewAutoDestroyRequest {
                    organization_id: org,
                    project_id: project,
                    auto_destroy_inactivity: inactivity.unwrap_or_default(),
                    auto_destroy_at: at.map(timestamp),
                    label_selector: labels.into_iter().collect(),
                    recurring,
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
        Command::Update {
            workspace,
            name,
            labels,
            clear_labels,
            protected,
            working_directory,
            owner,
        } => {
            let (id, workspace) = (workspace.id(&ctx.channel).await?, workspace.workspace);
            let mut paths = Vec::new();
            let mut change = pb::Workspace {
                id: id.clone(),
                ..Default::default()
            };
            if let Some(name) = name {
                change.name = name;
                paths.push("name");
            }
            if clear_labels || !labels.is_empty() {
                change.labels = labels.into_iter().collect();
                paths.push("labels");
            }
            if let Some(p) = protected {
                change.protected = p;
                paths.push("protected");
            }
            if let Some(d) = working_directory {
                change.working_directory = d;
                paths.push("working_directory");
            }
            if let Some(o) = owner.owner() {
                change.owner = Some(o);
                paths.push("owner");
            }
            if paths.is_empty() {
                return Err(CliError::Usage(
                    "give what to change: --name, --label, --clear-labels, --protected, \
                     --working-directory, --owner-email or --owner-slack (empty to remove)"
                        .into(),
                ));
            }
            let ws = api
                .update_workspace(pb::UpdateWorkspaceRequest {
                    request_id: request_id(),
                    workspace: Some(change),
                    update_mask: Some(prost_types::FieldMask {
                        paths: paths.into_iter().map(str::to_owned).collect(),
                    }),
                })
                .await
                .map_err(|s| CliError::status(format!("update workspace {workspace}"), s))?
                .into_inner()
                .workspace
                .unwrap_or_default();
            ctx.print(&ws, WORKSPACE, &|w| workspace_fields(w))
        }
        Command::Archive { workspace } => {
            let (id, workspace) = (workspace.id(&ctx.channel).await?, workspace.workspace);
            let ws = api
                .archive_workspace(pb::ArchiveWorkspaceRequest {
                    request_id: request_id(),
                    workspace_id: id.clone(),
                })
                .await
                .map_err(|s| CliError::status(format!("archive workspace {workspace}"), s))?
                .into_inner()
                .workspace
                .unwrap_or_default();
            ctx.print(&ws, WORKSPACE, &|w| workspace_fields(w))
        }
        Command::Restore { workspace } => {
            let (id, workspace) = (workspace.id(&ctx.channel).await?, workspace.workspace);
            let ws = api
                .restore_workspace(pb::RestoreWorkspaceRequest {
                    request_id: request_id(),
                    workspace_id: id.clone(),
                })
                .await
                .map_err(|s| CliError::status(format!("restore workspace {workspace}"), s))?
                .into_inner()
                .workspace
                .unwrap_or_default();
            ctx.print(&ws, WORKSPACE, &|w| workspace_fields(w))
        }
        Command::Lock { workspace, reason } => {
            let (id, workspace) = (workspace.id(&ctx.channel).await?, workspace.workspace);
            let ws = api
                .lock_workspace(pb::LockWorkspaceRequest {
                    request_id: request_id(),
                    workspace_id: id.clone(),
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
            let (id, workspace) = (workspace.id(&ctx.channel).await?, workspace.workspace);
            let ws = api
                .unlock_workspace(pb::UnlockWorkspaceRequest {
                    request_id: request_id(),
                    workspace_id: id.clone(),
                })
                .await
                .map_err(|s| CliError::status(format!("unlock workspace {workspace}"), s))?
                .into_inner()
                .workspace
                .unwrap_or_default();
            ctx.print(&ws, WORKSPACE, &|w| workspace_fields(w))
        }
        Command::WhyDeferred { workspace } => {
            let id = workspace.id(&ctx.channel).await?;
            why_deferred(ctx, &mut api, &id).await
        }
        Command::History { workspace, limit } => {
            let (id, workspace) = (workspace.id(&ctx.channel).await?, workspace.workspace);
            let ws = get(&mut api, &id).await?;
            let mut audit = AuditServiceClient::new(ctx.channel.clone());
            let answer = audit
                .list_events(audit::ListEventsRequest {
                    organization_id: ws.organization_id.clone(),
                    action_prefix: "workspace.auto_destroy.".into(),
                    subject_id: id.clone(),
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

/// The ids of `--org` and `--project` (empty without one), each an id or a name.
async fn org_and_project(
    ctx: &Ctx,
    organization: &str,
    project: Option<String>,
) -> Result<(String, String), CliError> {
    let mut names = Names::new(&ctx.channel, Some(organization));
    let org = names.organization_id().await?;
    let project = match project {
        Some(p) => names.project(&p).await?,
        None => String::new(),
    };
    Ok((org, project))
}
