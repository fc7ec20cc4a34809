//! `ebb deprovision schedule`, `scheduled` and `unschedule`: actions fired at a set time, or
//! at every occurrence of a recurring schedule, with reminders before each.

use std::time::Duration;

use chrono::Utc;
use ebb_proto::lifecycle::v1 as pb;

use super::api::Deprovision;
use super::{ActionCall, parameters};
use crate::cli::names::Names;
use crate::cli::output::{fields, or_none, table, text, when};
use crate::cli::{CliError, Ctx, at_or_in, parse_duration, parse_time, request_id, timestamp};

const SCHEDULED: &str = "ebb.lifecycle.v1.ScheduledAction";

/// When a scheduled action fires.
#[derive(Debug, clap::Args)]
pub(super) struct WhenArgs {
    /// Once, at this time (RFC 3339, e.g. 2030-01-01T00:00:00Z).
    #[arg(long, value_parser = parse_time, conflicts_with_all = ["in", "recurring"])]
    at: Option<chrono::DateTime<Utc>>,
    /// Once, this long from now (e.g. 2h, 3d).
    #[arg(id = "in", long = "in", value_name = "DURATION", value_parser = parse_duration,
          conflicts_with = "recurring")]
    in_: Option<Duration>,
    /// At every occurrence of this cron expression (minute hour day-of-month month
    /// day-of-week), e.g. "0 7 * * MON-FRI"; each occurrence fires once, with its reminders.
    #[arg(long, value_name = "CRON", requires = "time_zone")]
    recurring: Option<String>,
    /// The IANA time zone the cron expression is read in, e.g. Europe/Berlin.
    #[arg(long, value_name = "ZONE", requires = "recurring")]
    time_zone: Option<String>,
}

pub(super) async fn schedule(
    ctx: &Ctx,
    api: &mut Deprovision,
    call: &ActionCall,
    when_: WhenArgs,
) -> Result<(), CliError> {
    let entity_id = Names::new(&ctx.channel, call.scope.organization.as_deref())
        .entity(&call.entity)
        .await?;
    let at = at_or_in(when_.at, when_.in_)?;
    if at.is_none() && when_.recurring.is_none() {
        return Err(CliError::Usage(
            "say when: --at TIME, --in DURATION, or --recurring CRON --time-zone ZONE".into(),
        ));
    }
    let scheduled = api
        .schedule_action(pb::ScheduleActionRequest {
            request_id: request_id(),
            entity_id,
            action: call.action.clone(),
            parameters: parameters(&call.params),
            scheduled_time: at.map(timestamp),
            recurring: when_.recurring.map(|cron| pb::RecurringSchedule {
                cron,
                time_zone: when_.time_zone.unwrap_or_default(),
                ..Default::default()
            }),
        })
        .await
        .map_err(|s| {
            CliError::status(
                format!("schedule {} on entity {}", call.action, call.entity),
                s,
            )
        })?
        .into_inner()
        .scheduled_action
        .unwrap_or_default();
    ctx.print(&scheduled, SCHEDULED, &|s| report(s))
}

pub(super) async fn list(
    ctx: &Ctx,
    api: &mut Deprovision,
    organization: &str,
    entity: &str,
) -> Result<(), CliError> {
    let mut all = pb::ListScheduledActionsResponse::default();
    loop {
        let page = api
            .list_scheduled_actions(pb::ListScheduledActionsRequest {
                organization_id: organization.to_owned(),
                entity_id: entity.to_owned(),
                page_size: 1000,
                page_token: all.next_page_token.clone(),
            })
            .await
            .map_err(|s| {
                CliError::status(
                    format!("scheduled actions of organization {organization}"),
                    s,
                )
            })?
            .into_inner();
        all.scheduled_actions.extend(page.scheduled_actions);
        all.next_page_token = page.next_page_token;
        if all.next_page_token.is_empty() {
            break;
        }
    }
    ctx.print(
        &all,
        "ebb.lifecycle.v1.ListScheduledActionsResponse",
        &|r| {
            let mut t = table(&[
                "id",
                "entity",
                "action",
                "scheduled (UTC)",
                "fires",
                "recurring",
                "status",
            ]);
            for s in &r.scheduled_actions {
                t.add_row(vec![
                    s.id.clone(),
                    s.entity_id.clone(),
                    s.action.clone(),
                    when(s.scheduled_time.as_ref()),
                    fires(s),
                    text(&recurring(s)),
                    s.status.clone(),
                ]);
            }
            or_none(t, r.scheduled_actions.len(), "no scheduled actions")
        },
    )
}

pub(super) async fn unschedule(ctx: &Ctx, api: &mut Deprovision, id: &str) -> Result<(), CliError> {
    let scheduled = api
        .cancel_scheduled_action(pb::CancelScheduledActionRequest {
            request_id: request_id(),
            scheduled_action_id: id.to_owned(),
        })
        .await
        .map_err(|s| CliError::status(format!("cancel scheduled action {id}"), s))?
        .into_inner()
        .scheduled_action
        .unwrap_or_default();
    ctx.print(&scheduled, SCHEDULED, &|s| report(s))
}

/// When it fires, when a destroy window moves it.
fn fires(s: &pb::ScheduledAction) -> String {
    if s.fire_time.is_some() && s.fire_time != s.scheduled_time {
        format!("{} (destroy window)", when(s.fire_time.as_ref()))
    } else {
        "-".into()
    }
}

fn recurring(s: &pb::ScheduledAction) -> String {
    s.recurring
        .as_ref()
        .map(|r| format!("{} ({})", r.cron, r.time_zone))
        .unwrap_or_default()
}

fn report(s: &pb::ScheduledAction) -> String {
    let next: Vec<String> = s
        .recurring
        .as_ref()
        .map(|r| r.next_occurrences.iter().map(|t| when(Some(t))).collect())
        .unwrap_or_default();
    fields(vec![
        ("id", s.id.clone()),
        ("entity", s.entity_id.clone()),
        ("action", s.action.clone()),
        ("scheduled", when(s.scheduled_time.as_ref())),
        ("fires", fires(s)),
        ("recurring", text(&recurring(s))),
        ("next occurrences", text(&next.join("\n"))),
        ("status", s.status.clone()),
        ("action run", text(&s.action_run_id)),
        ("error", text(&s.error)),
    ])
}
