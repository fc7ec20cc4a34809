//! `ebb deprovision`: plan (dry run) and trigger catalog actions on entities, follow an action
//! run's steps with a progress bar until it ends, list overdue grace periods and force one.

mod api;
mod follow;
mod render;
mod scheduled;

use std::path::PathBuf;

use ebb_proto::lifecycle::v1 as pb;

use super::names::{Names, Scope};
use super::output::{self, fields, or_none, table, text, when};
use super::{CliError, Connection, Ctx, enum_parser, request_id};
use crate::cli::deprovision::api::{ACTION_RUN, Deprovision, get};
use crate::cli::deprovision::follow::{Waiting, finish};
use crate::cli::deprovision::render::{
    plan_table, relationships_table, run_report, runs_table, shared_lines,
};

/// `ebb deprovision`.
#[derive(Debug, clap::Args)]
pub struct DeprovisionArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: Command,
}

/// How an action is fired: on what, which action, with which parameters.
#[derive(Debug, clap::Args)]
struct ActionCall {
    /// Entity the action starts from (a tenant, an account, a stack): its id, KIND/NAME, or
    /// a NAME of any kind in --org.
    #[arg(value_name = "ENTITY")]
    entity: String,
    #[command(flatten)]
    scope: Scope,
    /// Action name from the catalog, e.g. DeprovisionTenant.
    #[arg(long)]
    action: String,
    /// A parameter, NAME=VALUE (VALUE read as JSON when it parses, else as text); repeatable.
    #[arg(long = "param", value_parser = super::parse_key_value)]
    params: Vec<(String, String)>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Dry run: the steps an action would take, leaves first. Changes nothing.
    Plan(ActionCall),
    /// Trigger an action; with --wait, follow its steps until the run ends.
    Trigger {
        #[command(flatten)]
        call: ActionCall,
        #[command(flatten)]
        waiting: Waiting,
        /// The number of entities the plan tears down (as `plan` prints it), required when it
        /// exceeds the organization's confirm_threshold.
        #[arg(long, default_value_t = 0)]
        confirm_count: i32,
    },
    /// Show an action run and its steps; with --wait, follow it until it ends.
    Status {
        /// Action run id.
        action_run: String,
        #[command(flatten)]
        waiting: Waiting,
    },
    /// Schedule an action: once (--at, --in) or at every occurrence of a recurring schedule
    /// (--recurring CRON --time-zone ZONE), with reminders before each.
    Schedule {
        #[command(flatten)]
        call: ActionCall,
        #[command(flatten)]
        when_: scheduled::WhenArgs,
    },
    /// List an organization's scheduled actions, soonest first.
    Scheduled {
        /// Organization whose scheduled actions are listed: its id or name.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Only those of this entity: its id, KIND/NAME or NAME.
        #[arg(long, value_name = "ENTITY")]
        entity: Option<String>,
    },
    /// Cancel a scheduled action; for a recurring one (any of its occurrences), the series.
    Unschedule {
        /// The scheduled action's id.
        scheduled_action: String,
    },
    /// List action runs of an organization, newest first.
    Runs {
        /// Organization whose runs are listed: its id or name.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Only runs that started from this entity: its id, KIND/NAME or NAME.
        #[arg(long, value_name = "ENTITY")]
        entity: Option<String>,
        /// Only runs in this status: running, succeeded, failed, canceled.
        #[arg(long, value_parser = enum_parser("ACTION_RUN_STATUS_", pb::ActionRunStatus::from_str_name))]
        status: Option<pb::ActionRunStatus>,
    },
    /// Resume a failed action run at its failed steps.
    Retry {
        /// Action run id.
        action_run: String,
        #[command(flatten)]
        waiting: Waiting,
    },
    /// Cancel an action run.
    Cancel {
        /// Action run id.
        action_run: String,
    },
    /// List an organization's entities.
    Entities {
        /// Organization whose entities are listed: its id or name.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Only this kind, e.g. tenant.
        #[arg(long)]
        kind: Option<String>,
        /// Only this state, e.g. active.
        #[arg(long)]
        state: Option<String>,
        /// Only entities whose owner has this email address or Slack user id.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Create an entity (a tenant, an account, a stack) of a catalog kind.
    CreateEntity {
        /// Organization the entity belongs to: its id or name.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Kind from the catalog, e.g. tenant.
        #[arg(long)]
        kind: String,
        /// Entity name.
        name: String,
        /// The workspace that materializes it, destroyed by `destroy_run` steps: its id, or
        /// [ORG/][PROJECT/]NAME.
        #[arg(long, value_name = "WORKSPACE")]
        workspace: Option<String>,
        /// An attribute, KEY=VALUE; repeatable.
        #[arg(long = "attribute", value_parser = super::parse_key_value)]
        attributes: Vec<(String, String)>,
        /// The owner's email address: the reminders of its scheduled actions and the results
        /// of its action runs reach the owner too.
        #[arg(long)]
        owner_email: Option<String>,
        /// The owner's Slack member id, e.g. U024BE7LH.
        #[arg(long)]
        owner_slack: Option<String>,
    },
    /// Create a relationship: FROM depends on TO (for `runs_on`, FROM runs on TO).
    Relate {
        /// The dependent entity: its id, KIND/NAME or NAME.
        #[arg(value_name = "FROM")]
        from: String,
        /// The entity it depends on: its id, KIND/NAME or NAME.
        #[arg(value_name = "TO")]
        to: String,
        #[command(flatten)]
        scope: Scope,
        /// Relationship type, e.g. runs_on.
        #[arg(long = "type", default_value = "runs_on")]
        kind: String,
    },
    /// List relationships (edges) of an organization or one entity.
    Relationships {
        /// Organization whose relationships are listed: its id or name.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Only edges from or to this entity: its id, KIND/NAME or NAME.
        #[arg(long, value_name = "ENTITY")]
        entity: Option<String>,
        /// Only this state: active, removing, removed.
        #[arg(long, value_parser = enum_parser("RELATIONSHIP_STATE_", pb::RelationshipState::from_str_name))]
        state: Option<pb::RelationshipState>,
    },
    /// Relationships still `removing` after their grace period ended (the sweep is behind).
    Overdue {
        /// Organization whose relationships are listed: its id or name.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
    },
    /// Finalize one relationship now, skipping the rest of its grace period.
    ForceFinalize {
        /// Relationship id.
        relationship: String,
    },
    /// Load a catalog of entity kinds and actions (YAML) into the server.
    ApplyCatalog {
        /// The catalog file.
        file: PathBuf,
    },
}

/// Runs `ebb deprovision`.
pub fn main(args: DeprovisionArgs) -> std::process::ExitCode {
    super::run("deprovision", async move {
        let ctx = super::connect(&args.conn)?;
        run(&ctx, args.command).await
    })
}

/// Parameters as a protobuf `Struct`.
fn parameters(params: &[(String, String)]) -> Option<prost_types::Struct> {
    if params.is_empty() {
        return None;
    }
    Some(prost_types::Struct {
        fields: params
            .iter()
            .map(|(k, v)| {
                let value = match serde_json::from_str::<serde_json::Value>(v) {
                    Ok(json) => output::from_json(&json),
                    Err(_) => output::from_json(&serde_json::Value::String(v.clone())),
                };
                (k.clone(), value)
            })
            .collect(),
    })
}

async fn run(ctx: &Ctx, command: Command) -> Result<(), CliError> {
    let mut api = Deprovision::new(ctx.channel.clone());
    match command {
        Command::Plan(call) => {
            let entity_id = call.entity_id(ctx).await?;
            let answer = api
                .trigger_action(pb::TriggerActionRequest {
                    request_id: request_id(),
                    entity_id,
                    action: call.action.clone(),
                    parameters: parameters(&call.params),
                    dry_run: true,
                    confirm_count: 0,
                })
                .await
                .map_err(|s| {
                    CliError::status(format!("plan {} on entity {}", call.action, call.entity), s)
                })?
                .into_inner();
            ctx.print(&answer, "ebb.lifecycle.v1.TriggerActionResponse", &|r| {
                format!(
                    "{}\n{}{} step(s), leaves first, tearing down {} entities; nothing was changed \
                     (dry run)",
                    plan_table(&r.plan),
                    shared_lines(&r.plan, &r.kept),
                    r.plan.len(),
                    r.destroy_count
                )
            })
        }
        Command::Trigger {
            call,
            waiting,
            confirm_count,
        } => {
            let entity_id = call.entity_id(ctx).await?;
            let answer = api
                .trigger_action(pb::TriggerActionRequest {
                    request_id: request_id(),
                    entity_id,
                    action: call.action.clone(),
                    parameters: parameters(&call.params),
                    dry_run: false,
                    confirm_count,
                })
                .await
                .map_err(|s| {
                    CliError::status(
                        format!("trigger {} on entity {}", call.action, call.entity),
                        s,
                    )
                })?
                .into_inner();
            let run = answer.action_run.ok_or_else(|| {
                CliError::Failed(format!(
                    "trigger {} on entity {}: the answer holds no action run",
                    call.action, call.entity
                ))
            })?;
            if !waiting.wait && ctx.output == super::Output::Table {
                eprintln!(
                    "action run {} started; follow it with `ebb deprovision status {} --wait`",
                    run.id, run.id
                );
            }
            finish(ctx, &mut api, run, &waiting).await
        }
        Command::Status {
            action_run,
            waiting,
        } => {
            let run = get(&mut api, &action_run).await?;
            finish(ctx, &mut api, run, &waiting).await
        }
        Command::Runs {
            organization,
            entity,
            status,
        } => {
            let (organization_id, entity_id) = org_and_entity(ctx, &organization, entity).await?;
            let answer = api
                .list_action_runs(pb::ListActionRunsRequest {
                    organization_id,
                    entity_id,
                    status: status.map_or(0, |s| s as i32),
                    page_size: 100,
                    ..Default::default()
                })
                .await
                .map_err(|s| {
                    CliError::status(format!("action runs of organization {organization}"), s)
                })?
                .into_inner();
            ctx.print(&answer, "ebb.lifecycle.v1.ListActionRunsResponse", &|r| {
                runs_table(&r.action_runs)
            })
        }
        Command::Schedule { call, when_ } => scheduled::schedule(ctx, &mut api, &call, when_).await,
        Command::Scheduled {
            organization,
            entity,
        } => {
            let (organization_id, entity_id) = org_and_entity(ctx, &organization, entity).await?;
            scheduled::list(ctx, &mut api, &organization_id, &entity_id).await
        }
        Command::Unschedule { scheduled_action } => {
            scheduled::unschedule(ctx, &mut api, &scheduled_action).await
        }
        Command::Retry {
            action_run,
            waiting,
        } => {
            let run = api
                .retry_action_run(pb::RetryActionRunRequest {
                    request_id: request_id(),
                    action_run_id: action_run.clone(),
                })
                .await
                .map_err(|s| CliError::status(format!("retry action run {action_run}"), s))?
                .into_inner()
                .action_run
                .unwrap_or_default();
            finish(ctx, &mut api, run, &waiting).await
        }
        Command::Cancel { action_run } => {
            let run = api
                .cancel_action_run(pb::CancelActionRunRequest {
                    request_id: request_id(),
                    action_run_id: action_run.clone(),
                })
                .await
                .map_err(|s| CliError::status(format!("cancel action run {action_run}"), s))?
                .into_inner()
                .action_run
                .unwrap_or_default();
            ctx.print(&run, ACTION_RUN, &|r| run_report(r))
        }
        Command::Entities {
            organization,
            kind,
            state,
            owner,
        } => {
            let organization_id = Names::new(&ctx.channel, Some(&organization))
                .organization_id()
                .await?;
            let answer = api
                .list_entities(pb::ListEntitiesRequest {
                    organization_id,
                    kind: kind.unwrap_or_default(),
                    state: state.unwrap_or_default(),
                    owner: owner.unwrap_or_default(),
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .map_err(|s| {
                    CliError::status(format!("entities of organization {organization}"), s)
                })?
                .into_inner();
            ctx.print(&answer, "ebb.lifecycle.v1.ListEntitiesResponse", &|r| {
                let mut t = table(&[
                    "id",
                    "kind",
                    "name",
                    "state",
                    "workspace",
                    "owner",
                    "updated",
                ]);
                for e in &r.entities {
                    let owner = e.owner.as_ref().map(|o| {
                        [o.email.as_str(), o.slack_user_id.as_str()]
                            .into_iter()
                            .filter(|s| !s.is_empty())
                            .collect::<Vec<_>>()
                            .join(" ")
                    });
                    t.add_row(vec![
                        e.id.clone(),
                        e.kind.clone(),
                        e.name.clone(),
                        e.state.clone(),
                        text(&e.workspace_id),
                        text(&owner.unwrap_or_default()),
                        when(e.update_time.as_ref()),
                    ]);
                }
                or_none(t, r.entities.len(), "no entities")
            })
        }
        Command::CreateEntity {
            organization,
            kind,
            name,
            workspace,
            attributes,
            owner_email,
            owner_slack,
        } => {
            let mut names = Names::new(&ctx.channel, Some(&organization));
            let organization_id = names.organization_id().await?;
            let workspace_id = match workspace {
                Some(w) => names.workspace(&w).await?,
                None => String::new(),
            };
            let entity = api
                .create_entity(pb::CreateEntityRequest {
                    request_id: request_id(),
                    organization_id,
                    kind: kind.clone(),
                    name: name.clone(),
                    attributes: attributes.into_iter().collect(),
                    workspace_id,
                    owner: (owner_email.is_some() || owner_slack.is_some()).then(|| pb::Owner {
                        email: owner_email.unwrap_or_default(),
                        slack_user_id: owner_slack.unwrap_or_default(),
                    }),
                })
                .await
                .map_err(|s| CliError::status(format!("create {kind} {name}"), s))?
                .into_inner()
                .entity
                .unwrap_or_default();
            ctx.print(&entity, "ebb.lifecycle.v1.Entity", &|e| {
                let mut attributes: Vec<String> = e
                    .attributes
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                attributes.sort();
                fields(vec![
                    ("id", e.id.clone()),
                    ("kind", e.kind.clone()),
                    ("name", e.name.clone()),
                    ("state", e.state.clone()),
                    ("organization", e.organization_id.clone()),
                    ("workspace", text(&e.workspace_id)),
                    ("attributes", text(&attributes.join(", "))),
                ])
            })
        }
        Command::Relate {
            from,
            to,
            scope,
            kind,
        } => {
            let mut names = Names::new(&ctx.channel, scope.organization.as_deref());
            let from_entity_id = names.entity(&from).await?;
            let to_entity_id = names.entity(&to).await?;
            let r = api
                .create_relationship(pb::CreateRelationshipRequest {
                    request_id: request_id(),
                    r#type: kind.clone(),
                    from_entity_id,
                    to_entity_id,
                })
                .await
                .map_err(|s| CliError::status(format!("relate {from} {kind} {to}"), s))?
                .into_inner()
                .relationship
                .unwrap_or_default();
            ctx.print(&r, "ebb.lifecycle.v1.Relationship", &|r| {
                relationships_table(std::slice::from_ref(r), "")
            })
        }
        Command::Relationships {
            organization,
            entity,
            state,
        } => {
            let (organization_id, entity_id) = org_and_entity(ctx, &organization, entity).await?;
            let request = pb::ListRelationshipsRequest {
                organization_id,
                entity_id,
                state: state.map_or(0, |s| s as i32),
                ..Default::default()
            };
            print_relationships(ctx, &mut api, request, "no relationships").await
        }
        Command::Overdue { organization } => {
            let organization_id = Names::new(&ctx.channel, Some(&organization))
                .organization_id()
                .await?;
            let request = pb::ListRelationshipsRequest {
                organization_id,
                overdue: true,
                ..Default::default()
            };
            print_relationships(ctx, &mut api, request, "no overdue grace periods").await
        }
        Command::ForceFinalize { relationship } => {
            let r = api
                .force_finalize_relationship(pb::ForceFinalizeRelationshipRequest {
                    request_id: request_id(),
                    relationship_id: relationship.clone(),
                })
                .await
                .map_err(|s| {
                    CliError::status(format!("force-finalize relationship {relationship}"), s)
                })?
                .into_inner()
                .relationship
                .unwrap_or_default();
            ctx.print(&r, "ebb.lifecycle.v1.Relationship", &|r| {
                relationships_table(std::slice::from_ref(r), "")
            })
        }
        Command::ApplyCatalog { file } => {
            let yaml = std::fs::read_to_string(&file)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
            let answer = api
                .apply_catalog(pb::ApplyCatalogRequest {
                    request_id: request_id(),
                    yaml,
                })
                .await
                .map_err(|s| CliError::status(format!("apply catalog {}", file.display()), s))?
                .into_inner();
            ctx.print(&answer, "ebb.lifecycle.v1.ApplyCatalogResponse", &|r| {
                let mut t = table(&["kind", "states", "actions"]);
                for k in &r.kinds {
                    t.add_row(vec![
                        k.name.clone(),
                        k.states.join(", "),
                        text(
                            &k.actions
                                .iter()
                                .map(|a| a.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                        ),
                    ]);
                }
                or_none(t, r.kinds.len(), "the catalog holds no kinds")
            })
        }
    }
}

impl ActionCall {
    /// The id of the entity the action starts from, looked up when a name was given.
    async fn entity_id(&self, ctx: &Ctx) -> Result<String, CliError> {
        Names::new(&ctx.channel, self.scope.organization.as_deref())
            .entity(&self.entity)
            .await
    }
}

/// The ids of `--org` and `--entity` (empty without one), each an id or a name.
async fn org_and_entity(
    ctx: &Ctx,
    organization: &str,
    entity: Option<String>,
) -> Result<(String, String), CliError> {
    let mut names = Names::new(&ctx.channel, Some(organization));
    let org = names.organization_id().await?;
    let entity = match entity {
        Some(e) => names.entity(&e).await?,
        None => String::new(),
    };
    Ok((org, entity))
}

/// Most relationships one listing prints.
const MAX_RELATIONSHIPS: usize = 10_000;

/// Prints every page of a relationship listing (at most [`MAX_RELATIONSHIPS`], saying so when
/// there are more); `none` when there is nothing.
async fn print_relationships(
    ctx: &Ctx,
    api: &mut Deprovision,
    mut request: pb::ListRelationshipsRequest,
    none: &str,
) -> Result<(), CliError> {
    let org = request.organization_id.clone();
    request.page_size = 1000;
    let mut all = pb::ListRelationshipsResponse::default();
    loop {
        let page = api
            .list_relationships(request.clone())
            .await
            .map_err(|s| CliError::status(format!("relationships of organization {org}"), s))?
            .into_inner();
        all.relationships.extend(page.relationships);
        if page.next_page_token.is_empty() {
            break;
        }
        if all.relationships.len() >= MAX_RELATIONSHIPS {
            eprintln!(
                "showing the first {} relationships; there are more",
                all.relationships.len()
            );
            break;
        }
        request.page_token = page.next_page_token;
    }
    ctx.print(&all, "ebb.lifecycle.v1.ListRelationshipsResponse", &|r| {
        relationships_table(&r.relationships, none)
    })
}
