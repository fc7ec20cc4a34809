//! `ebb windows`: when automated destroys may start — an organization's weekly destroy
//! windows, or a project's own, which replace its organization's.

use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;

use super::names::Names;
use super::output::{fields, text, when};
use super::{CliError, Connection, Ctx, request_id};

/// `ebb windows`.
#[derive(Debug, clap::Args)]
pub struct WindowsArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: WindowsCommand,
}

/// Whose windows: a project's, else an organization's.
#[derive(Debug, clap::Args)]
struct Owner {
    /// Organization (id or name) whose windows these are.
    #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
    organization: Option<String>,
    /// A project instead (id, or [ORG/]NAME): its own windows replace its organization's.
    #[arg(long)]
    project: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum WindowsCommand {
    /// Show the destroy windows of an organization or a project.
    Show {
        #[command(flatten)]
        owner: Owner,
    },
    /// Allow automated destroys only inside these windows; a destroy that comes due outside
    /// every window waits for the next opening.
    #[command(
        after_help = "Example: ebb windows set --org ORG --time-zone Europe/Berlin \
                            'mon-fri 09:00-17:00'"
    )]
    Set {
        #[command(flatten)]
        owner: Owner,
        /// IANA time zone of the windows, e.g. Europe/Berlin.
        #[arg(long)]
        time_zone: String,
        /// Each `[DAYS] HH:MM-HH:MM`: days such as `mon-fri` or `sat,sun` (every day when
        /// left out), local opening and closing times (`24:00` closes at midnight).
        #[arg(required = true, value_name = "WINDOW")]
        windows: Vec<String>,
        /// Echo of the number of workspaces the change brings within 7 days, when the
        /// server asks for it.
        #[arg(long, default_value_t = 0)]
        confirm_count: i32,
    },
    /// Remove the windows: any time for an organization, its organization's for a project.
    Clear {
        #[command(flatten)]
        owner: Owner,
        /// Echo of the number of workspaces the change brings within 7 days, when the
        /// server asks for it.
        #[arg(long, default_value_t = 0)]
        confirm_count: i32,
    },
}

type Lifecycle = LifecycleServiceClient<ebb_common::client::TracedChannel>;

/// Runs `ebb windows`.
pub fn main(args: WindowsArgs) -> std::process::ExitCode {
    super::run("windows", async move {
        let ctx = super::connect(&args.conn)?;
        let mut api = Lifecycle::new(ctx.channel.clone());
        match args.command {
            WindowsCommand::Show { owner } => show(&ctx, &mut api, &owner).await,
            WindowsCommand::Set {
                owner,
                time_zone,
                windows,
                confirm_count,
            } => {
                let windows = windows
                    .iter()
                    .enumerate()
                    .map(|(i, w)| parse_window(i, w))
                    .collect::<Result<Vec<_>, _>>()?;
                let set = pb::DestroyWindows { time_zone, windows };
                update(&ctx, &mut api, &owner, Some(set), confirm_count).await
            }
            WindowsCommand::Clear {
                owner,
                confirm_count,
            } => update(&ctx, &mut api, &owner, None, confirm_count).await,
        }
    })
}

/// `[DAYS] HH:MM-HH:MM` as the API takes it; the server checks days, times and zone.
fn parse_window(i: usize, given: &str) -> Result<pb::DestroyWindow, CliError> {
    let parts: Vec<&str> = given.split_whitespace().collect();
    let (days, hours) = match parts.as_slice() {
        [hours] => ("", *hours),
        [days, hours] => (*days, *hours),
        _ => {
            return Err(CliError::Usage(format!(
                "window {} {given:?}: expected `[DAYS] HH:MM-HH:MM`, e.g. 'mon-fri 09:00-17:00'",
                i + 1
            )));
        }
    };
    let Some((start, end)) = hours.split_once('-') else {
        return Err(CliError::Usage(format!(
            "window {} {given:?}: the hours {hours:?} are not `HH:MM-HH:MM`",
            i + 1
        )));
    };
    Ok(pb::DestroyWindow {
        days: days.to_owned(),
        start: start.to_owned(),
        end: end.to_owned(),
    })
}

/// Windows in one line each: `mon-fri 09:00–17:00 (Europe/Berlin)`.
fn describe(w: Option<&pb::DestroyWindows>) -> Vec<String> {
    let Some(w) = w else { return Vec::new() };
    w.windows
        .iter()
        .map(|x| {
            let days = if x.days.is_empty() {
                "every day"
            } else {
                &x.days
            };
            format!("{days} {}–{} ({})", x.start, x.end, w.time_zone)
        })
        .collect()
}

/// Windows as one field of a table: their lines, or `any time`.
pub(super) fn summary(w: Option<&pb::DestroyWindows>) -> String {
    match describe(w) {
        lines if lines.is_empty() => "any time".to_owned(),
        lines => text(&lines.join("\n")),
    }
}

/// Whose windows, names looked up.
async fn owner_of(ctx: &Ctx, owner: &Owner) -> Result<Whose, CliError> {
    let mut names = Names::new(&ctx.channel, owner.organization.as_deref());
    match (&owner.project, &owner.organization) {
        (Some(p), _) => Ok(Whose::Project(names.project(p).await?)),
        (None, Some(o)) => Ok(Whose::Organization(names.organization(o).await?)),
        (None, None) => Err(CliError::Usage(
            "name an organization (--org, EBB_ORGANIZATION_ID or the context's) or a --project"
                .into(),
        )),
    }
}

enum Whose {
    Organization(String),
    Project(String),
}

async fn organization(api: &mut Lifecycle, id: &str) -> Result<pb::Organization, CliError> {
    Ok(api
        .get_organization(pb::GetOrganizationRequest {
            organization_id: id.to_owned(),
        })
        .await
        .map_err(|s| CliError::status(format!("organization {id}"), s))?
        .into_inner()
        .organization
        .unwrap_or_default())
}

async fn show(ctx: &Ctx, api: &mut Lifecycle, owner: &Owner) -> Result<(), CliError> {
    match owner_of(ctx, owner).await? {
        Whose::Organization(id) => print_org(ctx, &organization(api, &id).await?),
        Whose::Project(id) => {
            let project = api
                .get_project(pb::GetProjectRequest {
                    project_id: id.clone(),
                })
                .await
                .map_err(|s| CliError::status(format!("project {id}"), s))?
                .into_inner()
                .project
                .unwrap_or_default();
            let org = organization(api, &project.organization_id).await?;
            print_project(ctx, &project, &org)
        }
    }
}

async fn update(
    ctx: &Ctx,
    api: &mut Lifecycle,
    owner: &Owner,
    windows: Option<pb::DestroyWindows>,
    confirm_count: i32,
) -> Result<(), CliError> {
    let verb = if windows.is_some() { "set" } else { "clear" };
    match owner_of(ctx, owner).await? {
        Whose::Organization(id) => {
            let answer = api
                .update_organization_settings(pb::UpdateOrganizationSettingsRequest {
                    request_id: request_id(),
                    organization_id: id.clone(),
                    settings: Some(pb::OrganizationSettings {
                        destroy_windows: windows,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["destroy_windows".into()],
                    }),
                    confirm_count,
                    ..Default::default()
                })
                .await
                .map_err(|s| {
                    CliError::status(
                        format!("{verb} the destroy windows of organization {id}"),
                        s,
                    )
                })?
                .into_inner();
            moved(answer.scheduled.len());
            print_org(ctx, &answer.organization.unwrap_or_default())
        }
        Whose::Project(id) => {
            let answer = api
                .update_project(pb::UpdateProjectRequest {
                    request_id: request_id(),
                    project_id: id.clone(),
                    destroy_windows: windows,
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["destroy_windows".into()],
                    }),
                    confirm_count,
                    ..Default::default()
                })
                .await
                .map_err(|s| {
                    CliError::status(format!("{verb} the destroy windows of project {id}"), s)
                })?
                .into_inner();
            moved(answer.scheduled.len());
            let project = answer.project.unwrap_or_default();
            let org = organization(api, &project.organization_id).await?;
            print_project(ctx, &project, &org)
        }
    }
}

/// Says on stderr how many destroys the change brought within 7 days.
fn moved(n: usize) {
    if n > 0 {
        eprintln!("{n} workspace(s) now due within 7 days; `ebb workspaces upcoming` lists them");
    }
}

fn print_org(ctx: &Ctx, org: &pb::Organization) -> Result<(), CliError> {
    let windows = org
        .settings
        .as_ref()
        .and_then(|s| s.destroy_windows.as_ref());
    ctx.print(
        &windows.cloned().unwrap_or_default(),
        "ebb.lifecycle.v1.DestroyWindows",
        &|_| {
            fields(vec![
                ("organization", org.id.clone()),
                ("destroy windows", summary(windows)),
                ("updated", when(org.update_time.as_ref())),
            ])
        },
    )
}

fn print_project(ctx: &Ctx, p: &pb::Project, org: &pb::Organization) -> Result<(), CliError> {
    let own = p.destroy_windows.as_ref();
    let inherited = org
        .settings
        .as_ref()
        .and_then(|s| s.destroy_windows.as_ref());
    ctx.print(
        &own.cloned().unwrap_or_default(),
        "ebb.lifecycle.v1.DestroyWindows",
        &|_| {
            let (windows, from) = match own {
                Some(w) => (Some(w), "the project's own"),
                None => (inherited, "the organization's"),
            };
            fields(vec![
                ("project", p.id.clone()),
                ("destroy windows", summary(windows)),
                ("from", from.to_owned()),
            ])
        },
    )
}
