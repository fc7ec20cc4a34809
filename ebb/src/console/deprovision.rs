//! `GET /deprovision`: pick an entity and an action, see the dry run's plan drawn leaves first
//! (with the shared upstreams it keeps and the blast radius), and trigger it with
//! confirmation; the action run is then followed on its own page.

use axum::extract::{Form, Query};
use axum::response::{IntoResponse, Redirect, Response};
use ebb_proto::lifecycle::v1 as lc;
use maud::{Markup, html};

use super::api::failure;
use super::graph::{self, Kept, Node};
use super::layout::{self, Nav, Org, enc};
use super::session::{Session, Signed};

/// Most entities offered in the picker.
const MAX_ENTITIES: i32 = 500;
/// Form fields of action parameters start with this.
const PARAM: &str = "param_";

/// The form's fields, in order.
type Fields = Vec<(String, String)>;

fn field<'a>(fields: &'a Fields, name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim())
        .unwrap_or("")
}

/// The action's parameters as given in the form: a `Struct`, or what is wrong.
fn parameters(
    def: &lc::ActionDefinition,
    fields: &Fields,
) -> Result<Option<prost_types::Struct>, String> {
    use prost_types::value::Kind;
    let mut out = prost_types::Struct::default();
    for p in &def.parameters {
        let given = field(fields, &format!("{PARAM}{}", p.name));
        if given.is_empty() && p.r#type != "boolean" {
            continue;
        }
        let kind = match p.r#type.as_str() {
            "integer" => Kind::NumberValue(
                given
                    .parse::<i64>()
                    .map_err(|_| format!("Parameter `{}` must be a whole number.", p.name))?
                    as f64,
            ),
            "boolean" => Kind::BoolValue(matches!(given, "on" | "true")),
            _ => Kind::StringValue(given.to_owned()),
        };
        out.fields
            .insert(p.name.clone(), prost_types::Value { kind: Some(kind) });
    }
    Ok((!out.fields.is_empty()).then_some(out))
}

pub async fn page(Signed(session): Signed, Query(fields): Query<Fields>) -> Response {
    let asked = field(&fields, "org");
    layout::org_page(
        &session,
        asked,
        Nav::Deprovision,
        "Deprovisioning",
        async |org| body(&session, org, &fields).await,
    )
    .await
}

async fn body(session: &Session, org: &Org, fields: &Fields) -> Result<Markup, String> {
    let mut api = session.api.deprovision();
    let entities = api
        .list_entities(lc::ListEntitiesRequest {
            organization_id: org.id.clone(),
            page_size: MAX_ENTITIES,
            ..Default::default()
        })
        .await
        .map_err(|s| failure("Listing entities", &s))?
        .into_inner();
    let mut list = entities.entities;
    list.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    let entity_id = field(fields, "entity");
    let action = field(fields, "action");
    let entity = match entity_id {
        "" => None,
        id => Some(
            api.get_entity(lc::GetEntityRequest {
                entity_id: id.to_owned(),
            })
            .await
            .map_err(|s| failure(&format!("Entity {id}"), &s))?
            .into_inner()
            .entity
            .unwrap_or_default(),
        ),
    };
    let kind = match &entity {
        Some(e) => Some(
            api.get_entity_kind(lc::GetEntityKindRequest {
                name: e.kind.clone(),
            })
            .await
            .map_err(|s| failure(&format!("Entity kind {}", e.kind), &s))?
            .into_inner()
            .kind
            .unwrap_or_default(),
        ),
        None => None,
    };
    let def = kind
        .as_ref()
        .and_then(|k| k.actions.iter().find(|a| a.name == action));
    // A dry run is part of triggering (TriggerAction): readers are told so rather than refused.
    let plan = match (&entity, def) {
        (Some(_), Some(_)) if !session.caller.may_change() => Some(Err(
            "Planning a cascade is a dry run of triggering it, which takes an operator or admin \
             token; your role reads entities and action runs only."
                .to_owned(),
        )),
        (Some(e), Some(d)) => Some(dry_run(session, e, d, fields).await),
        _ => None,
    };
    let recent = api
        .list_action_runs(lc::ListActionRunsRequest {
            organization_id: org.id.clone(),
            page_size: 10,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().action_runs)
        .map_err(|s| failure("Listing action runs", &s));
    let system = session.caller.organization_id.is_none();
    Ok(html! {
        form.filters method="get" action="/deprovision" {
            @if system { input type="hidden" name="org" value=(org.id); }
            div.field {
                label for="entity" { "Entity" }
                select #entity name="entity" required {
                    option value="" { "choose an entity" }
                    @for e in &list {
                        option value=(e.id) selected[e.id == entity_id] { (e.kind) "/" (e.name) " (" (e.state) ")" }
                    }
                }
            }
            @if let Some(k) = &kind {
                div.field {
                    label for="action" { "Action" }
                    select #action name="action" {
                        @for a in &k.actions { option value=(a.name) selected[a.name == action] { (a.name) } }
                    }
                }
                @if let Some(d) = def {
                    @for p in &d.parameters {
                        @let name = format!("{PARAM}{}", p.name);
                        div.field {
                            label for=(name) { (p.name) " (" (p.r#type) @if p.required { ", required" } ")" }
                            @if p.r#type == "boolean" {
                                input #(name) type="checkbox" name=(name) checked[matches!(field(fields, &name), "on" | "true")];
                            } @else {
                                input #(name) name=(name) value=(field(fields, &name))
                                    type=(if p.r#type == "integer" { "number" } else { "text" })
                                    min=[p.has_minimum.then_some(p.minimum)];
                            }
                        }
                    }
                }
            }
            button type="submit" { @if kind.is_some() { "Plan" } @else { "Choose" } }
        }
        @if !entities.next_page_token.is_empty() { p.muted { "The list shows the first " (MAX_ENTITIES) " entities." } }
        @if let (Some(e), Some(p)) = (&entity, plan) {
            @match p {
                Err(why) => p.flash.error role="alert" { (why) },
                Ok((answer, params)) => (plan_view(session, org, e, action, &answer, &params)),
            }
        }
        h2 { "Recent action runs" }
        @match recent {
            Err(e) => p.flash.error { (e) },
            Ok(runs) if runs.is_empty() => p.muted { "None yet." },
            Ok(runs) => div.scroll { table #action-runs {
                thead { tr { th { "Action run" } th { "Action" } th { "Status" } th { "Steps" } th { "Started" } } }
                tbody { @for r in &runs { tr {
                    td { a href=(format!("/action-runs/{}", enc(&r.id))) { code { (r.id) } } }
                    td { (r.action) }
                    td { (crate::cli::output::label(r.status, "ACTION_RUN_STATUS_", lc::ActionRunStatus::as_str_name)) }
                    td.num { (r.plan.len()) }
                    td { (layout::when(r.create_time.as_ref())) }
                } } }
            } },
        }
    })
}

async fn dry_run(
    session: &Session,
    entity: &lc::Entity,
    def: &lc::ActionDefinition,
    fields: &Fields,
) -> Result<(lc::TriggerActionResponse, Fields), String> {
    let parameters = parameters(def, fields)?;
    let answer = session
        .api
        .deprovision()
        .trigger_action(lc::TriggerActionRequest {
            entity_id: entity.id.clone(),
            action: def.name.clone(),
            parameters,
            dry_run: true,
            ..Default::default()
        })
        .await
        .map_err(|s| failure("The dry run", &s))?
        .into_inner();
    let params: Fields = fields
        .iter()
        .filter(|(k, _)| k.starts_with(PARAM))
        .cloned()
        .collect();
    Ok((answer, params))
}

fn plan_view(
    session: &Session,
    org: &Org,
    entity: &lc::Entity,
    action: &str,
    plan: &lc::TriggerActionResponse,
    params: &Fields,
) -> Markup {
    let nodes: Vec<Node> = plan
        .plan
        .iter()
        .map(|s| Node {
            entity_id: s.entity_id.clone(),
            kind: s.entity_kind.clone(),
            name: s.entity_name.clone(),
            order: s.order,
            waits_for: s.waits_for_entity_ids.clone(),
            status: None,
        })
        .collect();
    let kept: Vec<Kept> = plan.kept.iter().map(kept_of).collect();
    let waves = graph::waves(&nodes);
    html! {
        h2 { "Plan: " (action) " on " (entity.kind) "/" (entity.name) }
        div.cards {
            div.card { div.big #destroy-count { (plan.destroy_count) } "entities torn down" }
            div.card { div.big { (waves.values().max().map_or(0, |w| w + 1)) } "waves, leaves first" }
            div.card { div.big #kept-count { (plan.kept.len()) } "shared upstreams kept" }
        }
        div.scroll { (graph::draw(&nodes, &kept)) }
        details {
            summary { "Every step" }
            div.scroll { table #plan {
                thead { tr { th { "Step" } th { "Wave" } th { "Entity" } th { "Waits for" } th { "Shared with" } } }
                tbody { @for s in &plan.plan {
                    tr {
                        td.num { (s.order + 1) }
                        td.num { (waves.get(&s.entity_id).map_or(0, |w| w + 1)) }
                        td { (s.entity_kind) "/" (s.entity_name) }
                        td { (s.waits_for_entity_ids.len()) " step(s)" }
                        td { (s.shared_with.join(", ")) }
                    }
                } }
            } }
        }
        @if !plan.kept.is_empty() {
            h2 { "Kept" }
            ul #kept { @for k in &plan.kept { li { (k.entity_kind) "/" (k.entity_name) ": still used by " (k.used_by.join(", ")) } } }
        }
        @if session.caller.may_change() {
            form.stack.card #trigger method="post" action="/deprovision/trigger" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="org" value=(org.id);
                input type="hidden" name="entity" value=(entity.id);
                input type="hidden" name="action" value=(action);
                input type="hidden" name="confirm_count" value=(plan.destroy_count);
                @for (k, v) in params { input type="hidden" name=(k) value=(v); }
                label {
                    input #confirm type="checkbox" name="confirm" required;
                    " I have looked at this plan: it tears down " (plan.destroy_count) " entities."
                }
                button #fire.danger type="submit" { "Trigger " (action) }
            }
        } @else {
            p.muted { "Your role reads only: an operator or admin triggers actions." }
        }
    }
}

/// A kept upstream as drawn.
pub fn kept_of(k: &lc::KeptEntity) -> Kept {
    Kept {
        entity_id: k.entity_id.clone(),
        kind: k.entity_kind.clone(),
        name: k.entity_name.clone(),
        used_by: k.used_by.clone(),
    }
}

/// `POST /deprovision/trigger`: fires the action, echoing the count the operator saw.
pub async fn trigger(Signed(session): Signed, Form(fields): Form<Fields>) -> Response {
    if let Some(r) = layout::stale_form(&session, field(&fields, "csrf")) {
        return r;
    }
    let entity = field(&fields, "entity").to_owned();
    let action = field(&fields, "action").to_owned();
    let mut back = format!(
        "/deprovision?org={}&entity={}&action={}",
        enc(field(&fields, "org")),
        enc(&entity),
        enc(&action)
    );
    for (k, v) in fields.iter().filter(|(k, _)| k.starts_with(PARAM)) {
        back.push_str(&format!("&{}={}", enc(k), enc(v)));
    }
    let confirm_count = match field(&fields, "confirm_count").parse::<i32>() {
        Ok(n) => n,
        Err(_) => {
            session.flash(false, "The form lost the plan's count; plan again.");
            return Redirect::to(&back).into_response();
        }
    };
    let outcome = fire(&session, &entity, &action, confirm_count, &fields).await;
    match outcome {
        Ok(run) => {
            session.flash(true, format!("{action} triggered: action run {}.", run));
            Redirect::to(&format!("/action-runs/{}", enc(&run))).into_response()
        }
        Err(e) => {
            session.flash(false, e);
            Redirect::to(&back).into_response()
        }
    }
}

async fn fire(
    session: &Session,
    entity: &str,
    action: &str,
    confirm_count: i32,
    fields: &Fields,
) -> Result<String, String> {
    let mut api = session.api.deprovision();
    let e = api
        .get_entity(lc::GetEntityRequest {
            entity_id: entity.to_owned(),
        })
        .await
        .map_err(|s| failure(&format!("Entity {entity}"), &s))?
        .into_inner()
        .entity
        .unwrap_or_default();
    let kind = api
        .get_entity_kind(lc::GetEntityKindRequest { name: e.kind })
        .await
        .map_err(|s| failure("Reading the entity's kind", &s))?
        .into_inner()
        .kind
        .unwrap_or_default();
    let def = kind
        .actions
        .iter()
        .find(|a| a.name == action)
        .ok_or_else(|| format!("The entity's kind has no action `{action}`."))?;
    let parameters = parameters(def, fields)?;
    let run = api
        .trigger_action(lc::TriggerActionRequest {
            request_id: crate::cli::request_id(),
            entity_id: entity.to_owned(),
            action: action.to_owned(),
            parameters,
            dry_run: false,
            confirm_count,
        })
        .await
        .map_err(|s| failure(&format!("Could not trigger {action}"), &s))?
        .into_inner()
        .action_run
        .unwrap_or_default();
    Ok(run.id)
}
