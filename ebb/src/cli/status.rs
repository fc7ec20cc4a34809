//! `ebb status`: one screen on how a server is doing: every service's health, the scheduler's
//! failing and paused tasks, and per organization the destroys already due (the backlog), the
//! grace periods past their end and the dead-lettered deliveries. Built from the ordinary
//! read RPCs; exits 1 when a service is not SERVING.

use ebb_proto::lifecycle::v1 as lc;
use ebb_proto::lifecycle::v1::deprovision_service_client::DeprovisionServiceClient;
use ebb_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use ebb_proto::notifier::v1 as nt;
use ebb_proto::notifier::v1::notifier_service_client::NotifierServiceClient;
use ebb_proto::scheduler::v1 as sc;
use ebb_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use serde_json::json;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::output::{self, fields, table};
use super::{CliError, Connection, Ctx, describe_status, timestamp};

/// The services `ebb serve` runs, by their gRPC names.
const SERVICES: [&str; 4] = [
    "ebb.lifecycle.v1.LifecycleService",
    "ebb.scheduler.v1.SchedulerService",
    "ebb.notifier.v1.NotifierService",
    "ebb.audit.v1.AuditService",
];

/// Most organizations looked at when none is given.
const MAX_ORGS: usize = 50;

/// Items counted per list; past it the count reads `1000+`.
const COUNT_CAP: i32 = 1000;

/// `ebb status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    conn: Connection,
    /// Only this organization, by id or name (default: the context's, else every one the
    /// token sees, at most 50).
    #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
    organization: Option<String>,
}

/// A count of a list, capped.
#[derive(Debug, Clone, Copy)]
struct Count {
    n: usize,
    more: bool,
}

impl Count {
    fn text(self) -> String {
        if self.more {
            format!("{}+", self.n)
        } else {
            self.n.to_string()
        }
    }

    fn json(self) -> serde_json::Value {
        json!({ "count": self.n, "more": self.more })
    }
}

/// One organization's numbers.
struct OrgStatus {
    id: String,
    name: String,
    due: Count,
    overdue_grace: Count,
    dead_letters: Count,
}

/// Runs `ebb status`.
pub fn main(args: StatusArgs) -> std::process::ExitCode {
    super::run("status", async move {
        let ctx = super::connect(&args.conn)?;
        run(&ctx, args.organization).await
    })
}

async fn run(ctx: &Ctx, organization: Option<String>) -> Result<(), CliError> {
    let mut health = HealthClient::new(ctx.channel.clone());
    let mut services = Vec::new();
    for service in SERVICES {
        let state = match health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
        {
            Ok(r) => ServingStatus::try_from(r.into_inner().status)
                .unwrap_or(ServingStatus::Unknown)
                .as_str_name()
                .to_owned(),
            Err(s) => format!("UNKNOWN ({})", describe_status(&s)),
        };
        services.push((service, state));
    }
    let unhealthy: Vec<&str> = services
        .iter()
        .filter(|(_, s)| s != "SERVING")
        .map(|(n, _)| *n)
        .collect();
    let tasks = SchedulerServiceClient::new(ctx.channel.clone())
        .list_tasks(sc::ListTasksRequest {})
        .await
        .map_err(|s| CliError::status("list scheduler tasks", s))?
        .into_inner()
        .tasks;
    let failing: Vec<String> = tasks
        .iter()
        .flat_map(|t| {
            t.shards
                .iter()
                .filter(|s| s.last_outcome.starts_with("error"))
                .map(|s| format!("{} shard {}: {}", t.name, s.shard, s.last_outcome))
        })
        .collect();
    let paused: Vec<&str> = tasks
        .iter()
        .filter(|t| t.paused)
        .map(|t| t.name.as_str())
        .collect();
    let orgs = organizations(ctx, organization).await?;
    let mut per_org = Vec::new();
    for (id, name) in &orgs.0 {
        per_org.push(org_status(ctx, id, name).await?);
    }

    let value = json!({
        "server": super::SERVER.get(),
        "services": services.iter().map(|(n, s)| json!({"service": n, "status": s})).collect::<Vec<_>>(),
        "scheduler": {
            "tasks": tasks.len(),
            "failing": failing,
            "paused": paused,
        },
        "organizations": per_org.iter().map(|o| json!({
            "id": o.id,
            "name": o.name,
            "dueDestroys": o.due.json(),
            "overdueGracePeriods": o.overdue_grace.json(),
            "deadLetters": o.dead_letters.json(),
        })).collect::<Vec<_>>(),
        "organizationsLeftOut": orgs.1,
    });
    let names: Vec<String> = per_org
        .iter()
        .map(|o| format!("organization/{}", o.id))
        .collect();
    let mode = output::mode();
    output::print_value(mode.output, &value, &names, &|| {
        let mut out = fields(vec![
            ("server", super::SERVER.get().cloned().unwrap_or_default()),
            (
                "services",
                services
                    .iter()
                    .map(|(n, s)| format!("{}: {s}", short(n)))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            (
                "scheduler tasks",
                format!(
                    "{} task(s); {} failing shard(s); paused: {}",
                    tasks.len(),
                    failing.len(),
                    if paused.is_empty() {
                        "none".to_owned()
                    } else {
                        paused.join(", ")
                    }
                ),
            ),
        ]);
        for f in &failing {
            out.push_str(&format!("\nfailing: {f}"));
        }
        let mut t = table(&[
            "organization",
            "id",
            "due destroys",
            "overdue grace periods",
            "dead letters",
        ])
        .wide_only(&["id"]);
        for o in &per_org {
            t.add_row(vec![
                o.name.clone(),
                o.id.clone(),
                o.due.text(),
                o.overdue_grace.text(),
                o.dead_letters.text(),
            ]);
        }
        out.push('\n');
        out.push_str(&output::or_none(t, per_org.len(), "no organizations"));
        if orgs.1 > 0 {
            out.push_str(&format!(
                "\n{} more organization(s) not shown: name one with --org",
                orgs.1
            ));
        }
        out
    })?;
    if unhealthy.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "not serving: {}",
            unhealthy.join(", ")
        )))
    }
}

/// `LifecycleService` for `ebb.lifecycle.v1.LifecycleService`.
fn short(service: &str) -> &str {
    service.rsplit('.').next().unwrap_or(service)
}

/// The organizations to look at (id, name), and how many more there are.
async fn organizations(
    ctx: &Ctx,
    organization: Option<String>,
) -> Result<(Vec<(String, String)>, usize), CliError> {
    let mut api = LifecycleServiceClient::new(ctx.channel.clone());
    if let Some(given) = organization.filter(|o| !o.is_empty()) {
        let id = super::names::org_id(&ctx.channel, &given).await?;
        let org = api
            .get_organization(lc::GetOrganizationRequest {
                organization_id: id.clone(),
            })
            .await
            .map_err(|s| CliError::status(format!("organization {given}"), s))?
            .into_inner()
            .organization
            .unwrap_or_default();
        return Ok((vec![(org.id, org.name)], 0));
    }
    let page = api
        .list_organizations(lc::ListOrganizationsRequest {
            page_size: MAX_ORGS as i32 + 1,
            ..Default::default()
        })
        .await
        .map_err(|s| CliError::status("list organizations", s))?
        .into_inner();
    let mut orgs: Vec<(String, String)> = page
        .organizations
        .into_iter()
        .map(|o| (o.id, o.name))
        .collect();
    let more = orgs.len().saturating_sub(MAX_ORGS) + usize::from(!page.next_page_token.is_empty());
    orgs.truncate(MAX_ORGS);
    Ok((orgs, more))
}

async fn org_status(ctx: &Ctx, id: &str, name: &str) -> Result<OrgStatus, CliError> {
    let now = timestamp(chrono::Utc::now());
    let due = LifecycleServiceClient::new(ctx.channel.clone())
        .list_workspaces(lc::ListWorkspacesRequest {
            organization_id: id.to_owned(),
            scheduled_only: true,
            next_auto_destroy_before: Some(now),
            page_size: COUNT_CAP,
            ..Default::default()
        })
        .await
        .map_err(|s| CliError::status(format!("due workspaces of organization {id}"), s))?
        .into_inner();
    let overdue = DeprovisionServiceClient::new(ctx.channel.clone())
        .list_relationships(lc::ListRelationshipsRequest {
            organization_id: id.to_owned(),
            overdue: true,
            page_size: COUNT_CAP,
            ..Default::default()
        })
        .await
        .map_err(|s| CliError::status(format!("overdue grace periods of organization {id}"), s))?
        .into_inner();
    let dead = NotifierServiceClient::new(ctx.channel.clone())
        .list_deliveries(nt::ListDeliveriesRequest {
            organization_id: id.to_owned(),
            statuses: vec![nt::DeliveryStatus::Failed as i32],
            page_size: COUNT_CAP,
            ..Default::default()
        })
        .await
        .map_err(|s| CliError::status(format!("failed deliveries of organization {id}"), s))?
        .into_inner();
    Ok(OrgStatus {
        id: id.to_owned(),
        name: name.to_owned(),
        due: Count {
            n: due.workspaces.len(),
            more: !due.next_page_token.is_empty(),
        },
        overdue_grace: Count {
            n: overdue.relationships.len(),
            more: !overdue.next_page_token.is_empty(),
        },
        dead_letters: Count {
            n: dead.deliveries.len(),
            more: !dead.next_page_token.is_empty(),
        },
    })
}
