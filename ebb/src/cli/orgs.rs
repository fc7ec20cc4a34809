//! `ebb orgs` and `ebb projects`: create and look at organizations and projects, and set a
//! project's default inactivity period.

use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;

use super::names::{Names, Scope};
use super::output::{fields, span, text, when};
use super::{CliError, Connection, Ctx, duration_text, request_id};

/// `ebb orgs`.
#[derive(Debug, clap::Args)]
pub struct OrgsArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: OrgsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum OrgsCommand {
    /// Create an organization with default settings.
    Create {
        /// Organization name.
        name: String,
    },
    /// Show an organization and its auto-destroy settings.
    Show {
        /// Organization: its id or name.
        #[arg(value_name = "ORG")]
        organization: String,
    },
    /// List the organizations the token sees (the bootstrap admin: every one), oldest first.
    List {
        /// Only organizations with this exact name.
        #[arg(long)]
        name: Option<String>,
    },
}

/// `ebb projects`.
#[derive(Debug, clap::Args)]
pub struct ProjectsArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: ProjectsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ProjectsCommand {
    /// List an organization's projects, oldest first.
    List {
        /// Organization whose projects are listed: its id or name.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Only the project with exactly this name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Create a project in an organization.
    Create {
        /// Organization the project belongs to: its id or name.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Project name.
        name: String,
        /// Inactivity period inherited by its workspaces, e.g. 14d.
        #[arg(long, value_parser = duration_text)]
        default_inactivity: Option<String>,
    },
    /// Show a project.
    Show {
        /// Project: its id, or ORG/PROJECT, or a name in --org.
        #[arg(value_name = "PROJECT")]
        project: String,
        #[command(flatten)]
        scope: Scope,
    },
    /// Set (or with --none clear) the inactivity period its workspaces inherit.
    SetDefaultInactivity {
        /// Project: its id, or ORG/PROJECT, or a name in --org.
        #[arg(value_name = "PROJECT")]
        project: String,
        #[command(flatten)]
        scope: Scope,
        /// The period, e.g. 7d.
        #[arg(value_parser = duration_text, required_unless_present = "none")]
        period: Option<String>,
        /// Clear the default instead.
        #[arg(long, conflicts_with = "period")]
        none: bool,
    },
}

type Lifecycle = LifecycleServiceClient<ebb_common::client::TracedChannel>;

/// Runs `ebb orgs`.
pub fn orgs(args: OrgsArgs) -> std::process::ExitCode {
    super::run("orgs", async move {
        let ctx = super::connect(&args.conn)?;
        let mut api = Lifecycle::new(ctx.channel.clone());
        let org = match args.command {
            OrgsCommand::List { name } => {
                return list_orgs(&ctx, &mut api, name.as_deref().unwrap_or_default()).await;
            }
            OrgsCommand::Create { name } => {
                api.create_organization(pb::CreateOrganizationRequest {
                    request_id: request_id(),
                    name: name.clone(),
                    settings: None,
                })
                .await
                .map_err(|s| CliError::status(format!("create organization {name}"), s))?
                .into_inner()
                .organization
            }
            OrgsCommand::Show { organization } => {
                let organization_id = Names::new(&ctx.channel, None)
                    .organization(&organization)
                    .await?;
                api.get_organization(pb::GetOrganizationRequest { organization_id })
                    .await
                    .map_err(|s| CliError::status(format!("organization {organization}"), s))?
                    .into_inner()
                    .organization
            }
        };
        print_org(&ctx, &org.unwrap_or_default())
    })
}

/// Every page of `ListOrganizations`, printed as one table (or one JSON answer).
async fn list_orgs(ctx: &Ctx, api: &mut Lifecycle, name: &str) -> Result<(), CliError> {
    let mut all = pb::ListOrganizationsResponse::default();
    loop {
        let page = api
            .list_organizations(pb::ListOrganizationsRequest {
                name: name.to_owned(),
                page_size: 1000,
                page_token: all.next_page_token.clone(),
            })
            .await
            .map_err(|s| CliError::status("list organizations", s))?
            .into_inner();
        all.organizations.extend(page.organizations);
        all.next_page_token = page.next_page_token;
        if all.next_page_token.is_empty() {
            break;
        }
    }
    ctx.print(&all, "ebb.lifecycle.v1.ListOrganizationsResponse", &|r| {
        let mut t = super::output::table(&["id", "name", "created"]);
        for o in &r.organizations {
            t.add_row(vec![
                o.id.clone(),
                o.name.clone(),
                when(o.create_time.as_ref()),
            ]);
        }
        t.to_string()
    })
}

fn print_org(ctx: &Ctx, org: &pb::Organization) -> Result<(), CliError> {
    ctx.print(org, "ebb.lifecycle.v1.Organization", &|o| {
        let s = o.settings.clone().unwrap_or_default();
        let mut protected: Vec<String> = s
            .protected_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        protected.sort();
        fields(vec![
            ("id", o.id.clone()),
            ("name", o.name.clone()),
            (
                "reminders before",
                text(
                    &s.reminder_lead_times
                        .iter()
                        .map(|d| span(Some(d)))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            ),
            ("destroy retries", s.destroy_retry_limit.to_string()),
            ("max inactivity", span(s.max_inactivity.as_ref())),
            ("protected labels", text(&protected.join(", "))),
            ("snooze step", span(s.snooze_step.as_ref())),
            (
                "destroy windows",
                super::windows::summary(s.destroy_windows.as_ref()),
            ),
            (
                "approval",
                if s.require_approval {
                    let mut scope: Vec<String> = s
                        .approval_labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    scope.sort();
                    let workspaces = if scope.is_empty() {
                        "every auto-destroy".to_owned()
                    } else {
                        format!(
                            "auto-destroys of workspaces labelled {}",
                            scope.join(" or ")
                        )
                    };
                    let cascades = s
                        .approval_cascade_threshold
                        .map(|n| format!(", cascades over {n} entities"))
                        .unwrap_or_default();
                    format!(
                        "required for {workspaces}{cascades}, within {}",
                        span(s.approval_window.as_ref())
                    )
                } else {
                    "not required".to_owned()
                },
            ),
            ("created", when(o.create_time.as_ref())),
        ])
    })
}

async fn list_projects(
    ctx: &Ctx,
    api: &mut Lifecycle,
    organization: &str,
    shown: &str,
    name: &str,
) -> Result<(), CliError> {
    let mut all = pb::ListProjectsResponse::default();
    loop {
        let page = api
            .list_projects(pb::ListProjectsRequest {
                organization_id: organization.to_owned(),
                name: name.to_owned(),
                page_size: 1000,
                page_token: all.next_page_token.clone(),
            })
            .await
            .map_err(|s| CliError::status(format!("projects of organization {shown}"), s))?
            .into_inner();
        all.projects.extend(page.projects);
        all.next_page_token = page.next_page_token;
        if all.next_page_token.is_empty() {
            break;
        }
    }
    ctx.print(&all, "ebb.lifecycle.v1.ListProjectsResponse", &|r| {
        let mut t = super::output::table(&["id", "name", "default inactivity", "created"]);
        for p in &r.projects {
            t.add_row(vec![
                p.id.clone(),
                p.name.clone(),
                span(p.default_auto_destroy_inactivity.as_ref()),
                when(p.create_time.as_ref()),
            ]);
        }
        t.to_string()
    })
}

/// Runs `ebb projects`.
pub fn projects(args: ProjectsArgs) -> std::process::ExitCode {
    super::run("projects", async move {
        let ctx = super::connect(&args.conn)?;
        let mut api = Lifecycle::new(ctx.channel.clone());
        let project = match args.command {
            ProjectsCommand::List { organization, name } => {
                let id = Names::new(&ctx.channel, Some(&organization))
                    .organization_id()
                    .await?;
                return list_projects(&ctx, &mut api, &id, &organization, &name).await;
            }
            ProjectsCommand::Create {
                organization,
                name,
                default_inactivity,
            } => {
                let organization_id = Names::new(&ctx.channel, Some(&organization))
                    .organization_id()
                    .await?;
                api.create_project(pb::CreateProjectRequest {
                    request_id: request_id(),
                    organization_id,
                    name: name.clone(),
                    default_auto_destroy_inactivity: default_inactivity.unwrap_or_default(),
                    destroy_windows: None,
                })
                .await
                .map_err(|s| {
                    CliError::status(
                        format!("create project {name} in organization {organization}"),
                        s,
                    )
                })?
                .into_inner()
                .project
            }
            ProjectsCommand::Show { project, scope } => {
                let project_id = Names::new(&ctx.channel, scope.organization.as_deref())
                    .project(&project)
                    .await?;
                api.get_project(pb::GetProjectRequest { project_id })
                    .await
                    .map_err(|s| CliError::status(format!("project {project}"), s))?
                    .into_inner()
                    .project
            }
            ProjectsCommand::SetDefaultInactivity {
                project,
                scope,
                period,
                none: _,
            } => {
                let project_id = Names::new(&ctx.channel, scope.organization.as_deref())
                    .project(&project)
                    .await?;
                api.update_project(pb::UpdateProjectRequest {
                    request_id: request_id(),
                    project_id,
                    default_auto_destroy_inactivity: period.unwrap_or_default(),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["default_auto_destroy_inactivity".into()],
                    }),
                    ..Default::default()
                })
                .await
                .map_err(|s| CliError::status(format!("update project {project}"), s))?
                .into_inner()
                .project
            }
        };
        ctx.print(
            &project.unwrap_or_default(),
            "ebb.lifecycle.v1.Project",
            &|p| {
                fields(vec![
                    ("id", p.id.clone()),
                    ("name", p.name.clone()),
                    ("organization", p.organization_id.clone()),
                    (
                        "default inactivity",
                        span(p.default_auto_destroy_inactivity.as_ref()),
                    ),
                    ("created", when(p.create_time.as_ref())),
                ])
            },
        )
    })
}
