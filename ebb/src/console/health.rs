//! `GET /health`: the services' health, the scheduler's tasks with their leases and last
//! outcomes, deliveries that failed for good, and grace periods past their end.

use axum::extract::Query;
use axum::response::Response;
use ebb_proto::lifecycle::v1 as lc;
use ebb_proto::notifier::v1 as nt;
use ebb_proto::scheduler::v1 as sc;
use maud::{Markup, html};
use serde::Deserialize;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use super::api::failure;
use super::layout::{self, Frame, Nav, Org, when};
use super::session::{Session, Signed};
use crate::cli::output::{label, span};

/// The services, by their gRPC names.
const SERVICES: [&str; 4] = [
    "ebb.lifecycle.v1.LifecycleService",
    "ebb.scheduler.v1.SchedulerService",
    "ebb.notifier.v1.NotifierService",
    "ebb.audit.v1.AuditService",
];

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Params {
    org: String,
}

pub async fn page(Signed(session): Signed, Query(p): Query<Params>) -> Response {
    let orgs = layout::org(&session, &p.org).await;
    let frame = Frame::new(&session, orgs.as_ref().ok(), Nav::Health);
    let body = body(&session, orgs.as_ref().ok().map(|(o, _)| o)).await;
    layout::page(&frame, "Health", body)
}

async fn body(session: &Session, org: Option<&Org>) -> Markup {
    let mut health = session.api.health();
    let mut services = Vec::new();
    for name in SERVICES {
        let state = match health
            .check(HealthCheckRequest {
                service: name.to_owned(),
            })
            .await
        {
            Ok(r) => ServingStatus::try_from(r.into_inner().status)
                .unwrap_or(ServingStatus::Unknown)
                .as_str_name()
                .to_owned(),
            Err(s) => format!("UNKNOWN ({})", crate::cli::describe_status(&s)),
        };
        services.push((name.rsplit('.').next().unwrap_or(name), state));
    }
    let tasks = session
        .api
        .scheduler()
        .list_tasks(sc::ListTasksRequest {})
        .await
        .map(|r| r.into_inner().tasks)
        .map_err(|s| failure("Listing the scheduler's tasks", &s));
    let (deliveries, overdue) = match org {
        Some(o) => (
            Some(failed_deliveries(session, &o.id).await),
            Some(overdue_edges(session, &o.id).await),
        ),
        None => (None, None),
    };
    html! {
        h2 { "Services" }
        div.cards #services {
            @for (name, state) in &services {
                div.card data-service=(name) {
                    div { (name) }
                    span.badge.good[state == "SERVING"].bad[state != "SERVING"] { (state) }
                }
            }
        }
        h2 { "Scheduler tasks" }
        @match &tasks {
            Err(e) => p.flash.error { (e) },
            Ok(tasks) => div.scroll { table #tasks.wide {
                thead { tr { th { "Task" } th { "Shard" } th { "Lease held by" } th.opt { "Lease until" } th { "Last run" } th { "Last outcome" } th.opt { "Takeovers" } } }
                tbody { @for t in tasks { @for s in &t.shards {
                    tr.failing[s.last_outcome.starts_with("error")] {
                        td { (t.name) @if t.paused { " " span.badge.warn { "paused" } } br; span.muted { "every " (span(t.interval.as_ref())) } }
                        td.num { (s.shard) }
                        td { code { (if s.owner.is_empty() { "—" } else { &s.owner }) } }
                        td.opt { (when(s.lease_expire_time.as_ref())) }
                        td { (when(s.last_run_time.as_ref())) br; span.muted { (span(s.last_duration.as_ref())) } }
                        td { span.badge.bad[s.last_outcome.starts_with("error")] { (if s.last_outcome.is_empty() { "—" } else { &s.last_outcome }) } }
                        td.opt.num { (s.takeovers) }
                    }
                } } }
            } },
        }
        @if let Some(d) = deliveries {
            h2 { "Failing deliveries" }
            @match d {
                Err(e) => p.flash.error { (e) },
                Ok(list) if list.is_empty() => p.muted #no-failed-deliveries { "No delivery has failed for good." },
                Ok(list) => div.scroll { table #deliveries {
                    thead { tr { th { "Delivery" } th { "Event" } th { "Attempts" } th { "Last error" } th.opt { "Since" } } }
                    tbody { @for x in &list { tr {
                        td { code { (x.id) } }
                        td { code { (x.event_type) } }
                        td.num { (x.attempt_count) }
                        td { (x.last_error) @if x.last_response_status > 0 { " (HTTP " (x.last_response_status) ")" } }
                        td.opt { (when(x.create_time.as_ref())) }
                    } } }
                } },
            }
        }
        @if let Some(o) = overdue {
            h2 { "Overdue grace periods" }
            @match o {
                Err(e) => p.flash.error { (e) },
                Ok(list) if list.is_empty() => p.muted #no-overdue { "No grace period is past its end." },
                Ok(list) => div.scroll { table #overdue {
                    thead { tr { th { "Relationship" } th { "Type" } th { "From → to" } th { "Grace ended" } } }
                    tbody { @for r in &list { tr {
                        td { code { (r.id) } }
                        td { (r.r#type) }
                        td { code { (r.from_entity_id) } " → " code { (r.to_entity_id) } }
                        td { (when(r.deletion_scheduled_time.as_ref())) " · " (label(r.state, "RELATIONSHIP_STATE_", lc::RelationshipState::as_str_name)) }
                    } } }
                } },
            }
        }
    }
}

async fn failed_deliveries(session: &Session, org: &str) -> Result<Vec<nt::Delivery>, String> {
    session
        .api
        .notifier()
        .list_deliveries(nt::ListDeliveriesRequest {
            organization_id: org.to_owned(),
            statuses: vec![nt::DeliveryStatus::Failed as i32],
            page_size: 100,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().deliveries)
        .map_err(|s| failure("Listing failed deliveries", &s))
}

async fn overdue_edges(session: &Session, org: &str) -> Result<Vec<lc::Relationship>, String> {
    session
        .api
        .deprovision()
        .list_relationships(lc::ListRelationshipsRequest {
            organization_id: org.to_owned(),
            overdue: true,
            page_size: 100,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().relationships)
        .map_err(|s| failure("Listing overdue grace periods", &s))
}
