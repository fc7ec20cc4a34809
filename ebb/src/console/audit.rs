//! `GET /audit`: an organization's audit chain — its head, a button that verifies it, and
//! its events with the filters of `ListEvents`.

use axum::extract::{Form, Query};
use axum::response::{IntoResponse, Redirect, Response};
use ebb_proto::audit::v1 as au;
use maud::{Markup, html};
use serde::Deserialize;

use super::api::failure;
use super::layout::{self, Nav, Org, enc, when};
use super::session::{Session, Signed};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Filters {
    org: String,
    action: String,
    action_prefix: String,
    subject_type: String,
    subject_id: String,
    actor: String,
    start: String,
    end: String,
    order: String,
    page_token: String,
}

impl Filters {
    /// The query string of these filters, with `page_token` as given.
    fn query(&self, org: &str, page_token: &str) -> String {
        let pairs = [
            ("org", org),
            ("action", &self.action),
            ("action_prefix", &self.action_prefix),
            ("subject_type", &self.subject_type),
            ("subject_id", &self.subject_id),
            ("actor", &self.actor),
            ("start", &self.start),
            ("end", &self.end),
            ("order", &self.order),
            ("page_token", page_token),
        ];
        pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", enc(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

fn time(what: &str, text: &str) -> Result<Option<prost_types::Timestamp>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    crate::cli::parse_time(text)
        .map(|t| Some(crate::cli::timestamp(t)))
        .map_err(|e| format!("{what}: {e}"))
}

pub async fn page(Signed(session): Signed, Query(f): Query<Filters>) -> Response {
    layout::org_page(&session, &f.org, Nav::Audit, "Audit", async |org| {
        body(&session, org, &f).await
    })
    .await
}

async fn body(session: &Session, org: &Org, f: &Filters) -> Result<Markup, String> {
    let mut api = session.api.audit();
    let head = api
        .list_events(au::ListEventsRequest {
            organization_id: org.id.clone(),
            order: au::Order::NewestFirst as i32,
            page_size: 1,
            ..Default::default()
        })
        .await
        .map_err(|s| failure("Reading the chain's head", &s))?
        .into_inner()
        .events
        .into_iter()
        .next();
    let newest = f.order != "oldest";
    let listed = match (time("From", &f.start), time("Until", &f.end)) {
        (Ok(start_time), Ok(end_time)) => api
            .list_events(au::ListEventsRequest {
                organization_id: org.id.clone(),
                page_size: 50,
                page_token: f.page_token.clone(),
                action: f.action.trim().to_owned(),
                action_prefix: f.action_prefix.trim().to_owned(),
                subject_type: f.subject_type.trim().to_owned(),
                subject_id: f.subject_id.trim().to_owned(),
                actor: f.actor.trim().to_owned(),
                start_time,
                end_time,
                order: if newest {
                    au::Order::NewestFirst
                } else {
                    au::Order::OldestFirst
                } as i32,
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| failure("Listing events", &s)),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let system = session.caller.organization_id.is_none();
    let input = |name: &'static str, label: &'static str, value: &str, hint: &'static str| {
        html! { div.field { label for=(name) { (label) } input #(name) name=(name) value=(value) placeholder=(hint); } }
    };
    Ok(html! {
        div.cards {
            div.card #head {
                "Chain head"
                @match &head {
                    Some(h) => {
                        div.big { "#" (h.sequence) }
                        code title="hash" { (h.hash) }
                        div.muted { (when(h.record_time.as_ref())) }
                    }
                    None => div.big { "empty" },
                }
            }
            form.card.stack #verify method="post" action="/audit/verify" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="org" value=(org.id);
                p { "Recompute every hash of the chain and check each links to the one before." }
                button type="submit" { "Verify the chain" }
            }
        }
        h2 { "Events" }
        form.filters method="get" action="/audit" {
            @if system { input type="hidden" name="org" value=(org.id); }
            (input("action", "Action", &f.action, "workspace.auto_destroy.queued"))
            (input("action_prefix", "Action prefix", &f.action_prefix, "deprovision."))
            (input("subject_type", "Subject type", &f.subject_type, "workspace"))
            (input("subject_id", "Subject id", &f.subject_id, ""))
            (input("actor", "Actor", &f.actor, ""))
            (input("start", "From (RFC 3339)", &f.start, "2030-01-01T00:00:00Z"))
            (input("end", "Until (RFC 3339)", &f.end, ""))
            div.field {
                label for="order" { "Order" }
                select #order name="order" {
                    option value="newest" selected[newest] { "newest first" }
                    option value="oldest" selected[!newest] { "oldest first" }
                }
            }
            button type="submit" { "Filter" }
        }
        @match listed {
            Err(e) => p.flash.error role="alert" { (e) },
            Ok(page) => {
                @if page.events.is_empty() { p.muted { "No events match." } } @else {
                    div.scroll { table #events.wide {
                        thead { tr { th { "#" } th { "When" } th { "Action" } th { "Subject" } th { "Actor" } th.opt { "Hash" } } }
                        tbody { @for e in &page.events { @if let Some(i) = &e.event {
                            tr {
                                td.num { (e.sequence) }
                                td { (when(i.occur_time.as_ref())) }
                                td { code { (i.action) } }
                                td { (i.subject_type) " " code { (i.subject_id) } }
                                td.actor { (i.actor) }
                                td.opt { code title=(e.hash) { (e.hash.chars().take(12).collect::<String>()) "…" } }
                            }
                        } } }
                    } }
                    @if !page.next_page_token.is_empty() {
                        p { a #next href=(format!("/audit?{}", f.query(&org.id, &page.next_page_token))) { "Next page" } }
                    }
                }
            }
        }
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct VerifyForm {
    csrf: String,
    org: String,
}

/// `POST /audit/verify`: verifies the whole chain and says how it went.
pub async fn verify(Signed(session): Signed, Form(form): Form<VerifyForm>) -> Response {
    if let Some(r) = layout::stale_form(&session, &form.csrf) {
        return r;
    }
    let org = session
        .caller
        .organization_id
        .clone()
        .unwrap_or_else(|| form.org.clone());
    let answer = session
        .api
        .audit()
        .verify_chain(au::VerifyChainRequest {
            organization_id: org.clone(),
            ..Default::default()
        })
        .await;
    match answer {
        Ok(r) => {
            let r = r.into_inner();
            if r.intact {
                session.flash(
                    true,
                    format!(
                        "Intact: {} events verified; head #{} with hash {}.",
                        r.verified_count, r.head_sequence, r.head_hash
                    ),
                );
            } else {
                session.flash(
                    false,
                    format!(
                        "Broken at #{} ({}): {}. {} events verified before it.",
                        r.first_bad_sequence,
                        crate::cli::output::label(
                            r.break_reason,
                            "CHAIN_BREAK_",
                            au::ChainBreak::as_str_name
                        ),
                        r.detail,
                        r.verified_count
                    ),
                );
            }
        }
        Err(s) => session.flash(false, failure("Verifying the chain", &s)),
    }
    Redirect::to(&format!("/audit?org={}", enc(&org))).into_response()
}
