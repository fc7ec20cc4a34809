//! `ebb notifier`: failed (dead-lettered) deliveries and their attempts, redelivery, and the
//! notification configurations they go to.

use std::time::Duration;

use chrono::Utc;
use ebb_proto::notifier::v1 as pb;
use ebb_proto::notifier::v1::notifier_service_client::NotifierServiceClient;

use super::names::org_id;
use super::output::{fields, label, or_none, table, text, time, when, yes_no};
use super::{CliError, Connection, Ctx, enum_parser, parse_duration, request_id, timestamp};

/// `ebb notifier`.
#[derive(Debug, clap::Args)]
pub struct NotifierArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List deliveries, newest first: by default the failed (dead-lettered) ones.
    Deliveries {
        /// Organization whose deliveries are listed: its id or name.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Only these statuses (pending, succeeded, failed, cancelled); repeatable. Default:
        /// failed.
        #[arg(long = "status", value_parser = enum_parser("DELIVERY_STATUS_", pb::DeliveryStatus::from_str_name))]
        statuses: Vec<pb::DeliveryStatus>,
        /// Only deliveries to this configuration.
        #[arg(long)]
        configuration: Option<String>,
        /// Only this event type, or a pattern such as `workspace.auto_destroy.*`.
        #[arg(long)]
        event_type: Option<String>,
        /// At most this many deliveries.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..=1000))]
        limit: i32,
    },
    /// What the endpoint answered to each attempt of a delivery.
    Attempts {
        /// Delivery id.
        delivery: String,
    },
    /// Deliver a delivery again (same `webhook-id`, so receivers can deduplicate).
    Redeliver {
        /// Delivery id.
        delivery: String,
    },
    /// Deliver again every delivery created in a time window (default: the failed ones).
    RedeliverWindow {
        /// Organization whose deliveries are redelivered: its id or name.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Start of the window, this long ago (e.g. 1d).
        #[arg(long, value_parser = parse_duration)]
        since: Duration,
        /// End of the window, this long ago (default: now).
        #[arg(long, value_parser = parse_duration)]
        until: Option<Duration>,
        /// Only deliveries to this configuration.
        #[arg(long)]
        configuration: Option<String>,
        /// Which statuses to redeliver; repeatable. Default: failed.
        #[arg(long = "status", value_parser = enum_parser("DELIVERY_STATUS_", pb::DeliveryStatus::from_str_name))]
        statuses: Vec<pb::DeliveryStatus>,
        /// List the deliveries that would be sent again; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation (needed when standard input is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// List an organization's notification configurations.
    Configs {
        /// Organization whose configurations are listed: its id or name.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
    },
    /// Show one configuration, with why it is disabled if it is.
    Config {
        /// Configuration id.
        configuration: String,
    },
    /// Send a configuration a verification message; it is enabled when accepted.
    Verify {
        /// Configuration id.
        configuration: String,
    },
}

type Notifier = NotifierServiceClient<ebb_common::client::TracedChannel>;

/// Runs `ebb notifier`.
pub fn main(args: NotifierArgs) -> std::process::ExitCode {
    super::run("notifier", async move {
        let ctx = super::connect(&args.conn)?;
        run(&ctx, args.command).await
    })
}

fn statuses_or_failed(statuses: Vec<pb::DeliveryStatus>) -> Vec<i32> {
    if statuses.is_empty() {
        vec![pb::DeliveryStatus::Failed as i32]
    } else {
        statuses.into_iter().map(|s| s as i32).collect()
    }
}

fn ago(d: Duration, flag: &str) -> Result<prost_types::Timestamp, CliError> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .map(timestamp)
        .ok_or_else(|| CliError::Usage(format!("{flag} is too long")))
}

async fn run(ctx: &Ctx, command: Command) -> Result<(), CliError> {
    let mut api = Notifier::new(ctx.channel.clone());
    match command {
        Command::Deliveries {
            organization,
            statuses,
            configuration,
            event_type,
            limit,
        } => {
            let organization_id = org_id(&ctx.channel, &organization).await?;
            let answer = api
                .list_deliveries(pb::ListDeliveriesRequest {
                    organization_id,
                    configuration_id: configuration.unwrap_or_default(),
                    event_type: event_type.unwrap_or_default(),
                    statuses: statuses_or_failed(statuses),
                    page_size: limit,
                    ..Default::default()
                })
                .await
                .map_err(|s| {
                    CliError::status(format!("deliveries of organization {organization}"), s)
                })?
                .into_inner();
            ctx.print(&answer, "ebb.notifier.v1.ListDeliveriesResponse", &|r| {
                deliveries_table(&r.deliveries)
            })
        }
        Command::Attempts { delivery } => {
            let answer = api
                .list_delivery_attempts(pb::ListDeliveryAttemptsRequest {
                    delivery_id: delivery.clone(),
                    page_size: 100,
                    ..Default::default()
                })
                .await
                .map_err(|s| CliError::status(format!("attempts of delivery {delivery}"), s))?
                .into_inner();
            ctx.print(
                &answer,
                "ebb.notifier.v1.ListDeliveryAttemptsResponse",
                &|r| attempts_table(&r.attempts),
            )
        }
        Command::Redeliver { delivery } => {
            let d = api
                .redeliver_delivery(pb::RedeliverDeliveryRequest {
                    request_id: request_id(),
                    delivery_id: delivery.clone(),
                })
                .await
                .map_err(|s| CliError::status(format!("redeliver delivery {delivery}"), s))?
                .into_inner()
                .delivery
                .unwrap_or_default();
            ctx.print(&d, "ebb.notifier.v1.Delivery", &|d| {
                deliveries_table(std::slice::from_ref(d))
            })
        }
        Command::RedeliverWindow {
            organization,
            since,
            until,
            configuration,
            statuses,
            dry_run,
            yes,
        } => {
            let organization_id = org_id(&ctx.channel, &organization).await?;
            let start = ago(since, "--since")?;
            let end = ago(until.unwrap_or_default(), "--until")?;
            let statuses = statuses_or_failed(statuses);
            // The same window as a listing: what a dry run shows and the prompt counts.
            let window = in_window(
                &mut api,
                pb::ListDeliveriesRequest {
                    organization_id: organization_id.clone(),
                    configuration_id: configuration.clone().unwrap_or_default(),
                    statuses: statuses.clone(),
                    create_time_after: Some(start),
                    create_time_before: Some(end),
                    ..Default::default()
                },
            )
            .await?;
            let n = window.deliveries.len();
            if dry_run {
                return ctx.print(&window, "ebb.notifier.v1.ListDeliveriesResponse", &|r| {
                    format!(
                        "{}\n{n} deliveries would be sent again; nothing was sent (dry run)",
                        deliveries_table(&r.deliveries)
                    )
                });
            }
            // Nothing to send needs no confirmation.
            if n > 0 {
                super::confirm(
                    &format!(
                        "send {n} deliveries of organization {organization} again (created {} to {})?",
                        time(Some(&start)),
                        time(Some(&end))
                    ),
                    yes,
                )?;
            }
            let answer = api
                .redeliver_deliveries(pb::RedeliverDeliveriesRequest {
                    request_id: request_id(),
                    organization_id,
                    start_time: Some(start),
                    end_time: Some(end),
                    configuration_id: configuration.unwrap_or_default(),
                    statuses,
                })
                .await
                .map_err(|s| {
                    CliError::status(
                        format!("redeliver deliveries of organization {organization}"),
                        s,
                    )
                })?
                .into_inner();
            ctx.print(
                &answer,
                "ebb.notifier.v1.RedeliverDeliveriesResponse",
                &|r| format!("{} deliveries scheduled again", r.deliveries_scheduled),
            )
        }
        Command::Configs { organization } => {
            let organization_id = org_id(&ctx.channel, &organization).await?;
            let answer = api
                .list_notification_configurations(pb::ListNotificationConfigurationsRequest {
                    organization_id,
                    page_size: 500,
                    ..Default::default()
                })
                .await
                .map_err(|s| {
                    CliError::status(
                        format!("notification configurations of organization {organization}"),
                        s,
                    )
                })?
                .into_inner();
            ctx.print(
                &answer,
                "ebb.notifier.v1.ListNotificationConfigurationsResponse",
                &|r| configs_table(&r.configurations),
            )
        }
        Command::Config { configuration } => {
            let c = api
                .get_notification_configuration(pb::GetNotificationConfigurationRequest {
                    id: configuration.clone(),
                })
                .await
                .map_err(|s| CliError::status(format!("configuration {configuration}"), s))?
                .into_inner()
                .configuration
                .unwrap_or_default();
            ctx.print(&c, "ebb.notifier.v1.NotificationConfiguration", &|c| {
                config_fields(c, None)
            })
        }
        Command::Verify { configuration } => {
            let answer = api
                .verify_notification_configuration(pb::VerifyNotificationConfigurationRequest {
                    request_id: request_id(),
                    id: configuration.clone(),
                })
                .await
                .map_err(|s| CliError::status(format!("verify configuration {configuration}"), s))?
                .into_inner();
            ctx.print(
                &answer,
                "ebb.notifier.v1.VerifyNotificationConfigurationResponse",
                &|r| {
                    config_fields(
                        &r.configuration.clone().unwrap_or_default(),
                        Some(r.response_status),
                    )
                },
            )
        }
    }
}

/// Most deliveries a window lists before redelivering.
const MAX_WINDOW: usize = 10_000;

/// Every page of a listing (at most [`MAX_WINDOW`] deliveries).
async fn in_window(
    api: &mut Notifier,
    mut request: pb::ListDeliveriesRequest,
) -> Result<pb::ListDeliveriesResponse, CliError> {
    let org = request.organization_id.clone();
    request.page_size = 1000;
    let mut all = pb::ListDeliveriesResponse::default();
    loop {
        let page = api
            .list_deliveries(request.clone())
            .await
            .map_err(|s| CliError::status(format!("deliveries of organization {org}"), s))?
            .into_inner();
        all.deliveries.extend(page.deliveries);
        if page.next_page_token.is_empty() || all.deliveries.len() >= MAX_WINDOW {
            return Ok(all);
        }
        request.page_token = page.next_page_token;
    }
}

fn delivery_status(d: &pb::Delivery) -> String {
    label(
        d.status,
        "DELIVERY_STATUS_",
        pb::DeliveryStatus::as_str_name,
    )
}

fn deliveries_table(list: &[pb::Delivery]) -> String {
    let mut t = table(&[
        "delivery",
        "created (UTC)",
        "event type",
        "configuration",
        "status",
        "attempts",
        "last answer",
        "last error",
        "next attempt",
    ])
    .wide_only(&["configuration", "next attempt"])
    .summarise(&["last error"]);
    for d in list {
        t.add_row(vec![
            d.id.clone(),
            time(d.create_time.as_ref()),
            d.event_type.clone(),
            d.configuration_id.clone(),
            delivery_status(d),
            d.attempt_count.to_string(),
            if d.last_response_status == 0 {
                "-".to_owned()
            } else {
                d.last_response_status.to_string()
            },
            text(&d.last_error),
            when(d.next_attempt_time.as_ref()),
        ]);
    }
    or_none(t, list.len(), "no deliveries")
}

fn attempts_table(list: &[pb::DeliveryAttempt]) -> String {
    let mut t = table(&[
        "#",
        "started (UTC)",
        "outcome",
        "status",
        "took",
        "redelivery",
        "error",
        "body",
    ])
    .wide_only(&["redelivery"])
    .summarise(&["error", "body"]);
    for a in list {
        let mut body: String = a.response_body.chars().take(60).collect();
        if a.response_body_truncated || a.response_body.chars().count() > 60 {
            body.push('…');
        }
        t.add_row(vec![
            a.number.to_string(),
            time(a.start_time.as_ref()),
            label(
                a.outcome,
                "ATTEMPT_OUTCOME_",
                pb::AttemptOutcome::as_str_name,
            ),
            if a.response_status == 0 {
                "-".to_owned()
            } else {
                a.response_status.to_string()
            },
            format!("{}ms", a.duration_ms),
            yes_no(a.redelivery),
            text(&a.error),
            text(body.trim()),
        ]);
    }
    or_none(t, list.len(), "no attempts yet")
}

fn configs_table(list: &[pb::NotificationConfiguration]) -> String {
    let mut t = table(&[
        "id",
        "name",
        "destination",
        "scope",
        "events",
        "enabled",
        "disabled because",
    ]);
    for c in list {
        t.add_row(vec![
            c.id.clone(),
            c.name.clone(),
            label(
                c.destination_type,
                "DESTINATION_TYPE_",
                pb::DestinationType::as_str_name,
            ),
            scope(c),
            c.event_types.join(", "),
            yes_no(c.enabled),
            text(&c.disabled_reason),
        ]);
    }
    or_none(t, list.len(), "no notification configurations")
}

fn scope(c: &pb::NotificationConfiguration) -> String {
    let kind = label(c.scope_type, "SCOPE_TYPE_", pb::ScopeType::as_str_name);
    if c.scope_id.is_empty() {
        kind
    } else {
        format!("{kind} {}", c.scope_id)
    }
}

fn config_fields(c: &pb::NotificationConfiguration, answered: Option<i32>) -> String {
    let mut rows = vec![
        ("id", c.id.clone()),
        ("name", c.name.clone()),
        ("organization", c.organization_id.clone()),
        (
            "destination",
            label(
                c.destination_type,
                "DESTINATION_TYPE_",
                pb::DestinationType::as_str_name,
            ),
        ),
        ("url", text(&c.url)),
        ("email addresses", text(&c.email_addresses.join(", "))),
        ("scope", scope(c)),
        ("events", c.event_types.join(", ")),
        ("enabled", yes_no(c.enabled)),
        ("disabled because", text(&c.disabled_reason)),
        ("verified", when(c.verify_time.as_ref())),
        ("last verification error", text(&c.last_verification_error)),
    ];
    if let Some(status) = answered {
        rows.push(("verification answered", status.to_string()));
    }
    fields(rows)
}
