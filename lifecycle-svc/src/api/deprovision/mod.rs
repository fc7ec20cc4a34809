//! `ebb.lifecycle.v1.DeprovisionService`: thin handlers over entities, relationships, the
//! catalog and action runs.

mod actions;
mod entities;
mod relationships;
mod scheduled;

use ebb_common::error::Violations;
use ebb_common::time::{to_timestamp, to_timestamp_opt};
use ebb_common::{Error, Result};
use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::deprovision_service_server::DeprovisionService;
use sea_orm::ConnectionTrait;
use serde_json::{Map, Value as Json};
use tonic::{Request, Response, Status};

use super::convert::{json_to_struct, json_to_value};
use crate::core::Lifecycle;
use crate::deprovision::action_runs::{ActionRunRow, ActionRunStatus, StepStatus};
use crate::deprovision::catalog::{KindDef, TriggerDef};
use crate::deprovision::entities::EntityRow;
use crate::deprovision::relationships::RelationshipRow;
use crate::deprovision::scheduled::ScheduledRow;
use crate::deprovision::{action_runs, plan};
use crate::store::decode_json;

const ACTOR: &str = super::lifecycle::API_ACTOR;

/// DeprovisionService over the domain.
#[derive(Clone)]
pub struct DeprovisionApi {
    core: Lifecycle,
}

impl DeprovisionApi {
    /// Serves `core`.
    pub fn new(core: Lifecycle) -> Self {
        Self { core }
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

fn ok<T>(r: Result<T>) -> Reply<T> {
    r.map(Response::new).map_err(Status::from)
}

fn kind_pb(k: &KindDef) -> pb::EntityKind {
    pb::EntityKind {
        name: k.name.clone(),
        states: k.states.clone(),
        initial_state: k.initial().to_owned(),
        actions: k
            .actions
            .iter()
            .map(|a| pb::ActionDefinition {
                name: a.name.clone(),
                scope: a.scope.clone(),
                operation: a.operation.clone(),
                conditions: a.conditions.clone(),
                parameters: a
                    .parameters
                    .iter()
                    .map(|p| pb::ActionParameter {
                        name: p.name.clone(),
                        r#type: format!("{:?}", p.ty).to_lowercase(),
                        required: p.required,
                        minimum: p.minimum.unwrap_or_default(),
                        has_minimum: p.minimum.is_some(),
                        default_value: p.default.as_ref().map(json_to_value),
                    })
                    .collect(),
                on_trigger: a.on_trigger.clone(),
                on_success: a.on_success.clone(),
                on_failure: a.on_failure.clone(),
                cascade_rules: a
                    .cascade_rules
                    .iter()
                    .map(|r| pb::CascadeRule {
                        relationship_type: r.relationship_type.clone(),
                        shared_upstream: r.shared_upstream.as_str().to_owned(),
                    })
                    .collect(),
                trigger_type: a.trigger.name().to_owned(),
                webhook_url: match &a.trigger {
                    TriggerDef::Webhook { url } => url.clone(),
                    _ => String::new(),
                },
            })
            .collect(),
    }
}

fn entity_pb(e: &EntityRow) -> Result<pb::Entity> {
    Ok(pb::Entity {
        id: e.id.clone(),
        organization_id: e.organization_id.clone(),
        kind: e.kind.clone(),
        name: e.name.clone(),
        state: e.state.clone(),
        attributes: e.attributes()?.into_iter().collect(),
        workspace_id: e.workspace_id.clone().unwrap_or_default(),
        create_time: Some(to_timestamp(e.created_at)),
        update_time: Some(to_timestamp(e.updated_at)),
        owner: crate::api::convert::owner(&e.owner_email, &e.owner_slack_user_id),
    })
}

fn relationship_pb(r: &RelationshipRow) -> pb::Relationship {
    let state = match r.state.as_str() {
        "active" => pb::RelationshipState::Active,
        "removing" => pb::RelationshipState::Removing,
        "removed" => pb::RelationshipState::Removed,
        _ => pb::RelationshipState::Unspecified,
    };
    pb::Relationship {
        id: r.id.clone(),
        organization_id: r.organization_id.clone(),
        r#type: r.rel_type.clone(),
        from_entity_id: r.from_entity_id.clone(),
        to_entity_id: r.to_entity_id.clone(),
        state: state as i32,
        deletion_scheduled_time: to_timestamp_opt(r.deletion_scheduled_at),
        finalize_time: to_timestamp_opt(r.finalized_at),
        finalize_method: r.finalize_method.clone().unwrap_or_default(),
        action_run_id: r.action_run_id.clone().unwrap_or_default(),
        create_time: Some(to_timestamp(r.created_at)),
        update_time: Some(to_timestamp(r.updated_at)),
    }
}

fn plan_pb(plan: &plan::Plan) -> Vec<pb::PlanStep> {
    plan.nodes
        .iter()
        .map(|n| pb::PlanStep {
            order: n.order,
            entity_id: n.entity_id.clone(),
            entity_kind: n.kind.clone(),
            entity_name: n.name.clone(),
            waits_for_entity_ids: n.waits_for.clone(),
            shared_with: n.shared_with.clone(),
        })
        .collect()
}

fn kept_pb(plan: &plan::Plan) -> Vec<pb::KeptEntity> {
    plan.kept
        .iter()
        .map(|k| pb::KeptEntity {
            entity_id: k.entity_id.clone(),
            entity_kind: k.kind.clone(),
            entity_name: k.name.clone(),
            used_by: k.used_by.clone(),
        })
        .collect()
}

fn step_status(s: StepStatus) -> pb::ActionStepStatus {
    match s {
        StepStatus::Pending => pb::ActionStepStatus::Pending,
        StepStatus::Running => pb::ActionStepStatus::Running,
        StepStatus::Succeeded => pb::ActionStepStatus::Succeeded,
        StepStatus::Failed => pb::ActionStepStatus::Failed,
        StepStatus::Canceled => pb::ActionStepStatus::Canceled,
        StepStatus::Kept => pb::ActionStepStatus::Kept,
    }
}

fn run_status(s: ActionRunStatus) -> pb::ActionRunStatus {
    match s {
        ActionRunStatus::Running => pb::ActionRunStatus::Running,
        ActionRunStatus::Succeeded => pb::ActionRunStatus::Succeeded,
        ActionRunStatus::Failed => pb::ActionRunStatus::Failed,
        ActionRunStatus::Canceled => pb::ActionRunStatus::Canceled,
    }
}

async fn action_run_pb(conn: &impl ConnectionTrait, r: &ActionRunRow) -> Result<pb::ActionRun> {
    let steps = action_runs::steps(conn, &r.id).await?;
    let plan = plan::stored_plan(conn, &r.id).await?;
    Ok(pb::ActionRun {
        id: r.id.clone(),
        organization_id: r.organization_id.clone(),
        entity_id: r.entity_id.clone(),
        action: r.action.clone(),
        parameters: Some(json_to_struct(&Json::Object(r.parameters()?))),
        plan: plan_pb(&plan),
        kept: kept_pb(&plan),
        status: run_status(r.status) as i32,
        actor: r.actor.clone(),
        error: r.error.clone(),
        steps: steps
            .iter()
            .map(|s| {
                Ok(pb::ActionStep {
                    id: s.id.clone(),
                    order: s.step_order,
                    entity_id: s.entity_id.clone(),
                    status: step_status(s.status) as i32,
                    trigger_type: s.trigger_type.clone(),
                    run_id: s.run_id.clone().unwrap_or_default(),
                    error: s.error.clone(),
                    attempt: s.attempt,
                    start_time: to_timestamp_opt(s.started_at),
                    finish_time: to_timestamp_opt(s.finished_at),
                    deadline_time: to_timestamp_opt(s.deadline_at),
                    waits_for_step_ids: s.waits_for()?,
                })
            })
            .collect::<Result<_>>()?,
        scheduled_action_id: r.scheduled_action_id.clone().unwrap_or_default(),
        create_time: Some(to_timestamp(r.created_at)),
        finish_time: to_timestamp_opt(r.finished_at),
        approval_window: r.approval_window_ms.map(ebb_common::time::to_duration),
    })
}

fn scheduled_pb(s: &ScheduledRow) -> Result<pb::ScheduledAction> {
    let params: Map<String, Json> =
        decode_json("scheduled_actions", "parameters", &s.id, &s.parameters)?;
    Ok(pb::ScheduledAction {
        id: s.id.clone(),
        organization_id: s.organization_id.clone(),
        entity_id: s.entity_id.clone(),
        action: s.action.clone(),
        parameters: Some(json_to_struct(&Json::Object(params))),
        scheduled_time: Some(to_timestamp(s.scheduled_at)),
        fire_time: Some(to_timestamp(s.fires_at())),
        status: s.status.to_string(),
        action_run_id: s.action_run_id.clone().unwrap_or_default(),
        error: s.error.clone(),
        create_time: Some(to_timestamp(s.created_at)),
        recurring: s.recurrence().map(|r| pb::RecurringSchedule {
            cron: r.cron().to_owned(),
            time_zone: r.time_zone().to_owned(),
            next_occurrences: std::iter::once(s.scheduled_at)
                .chain(r.upcoming(s.scheduled_at, 4))
                .map(to_timestamp)
                .collect(),
        }),
        series_id: s.series_id.clone().unwrap_or_default(),
    })
}

/// Parameters from a protobuf `Struct`, refusing values JSON cannot carry.
fn parameters(v: &mut Violations, s: &Option<prost_types::Struct>) -> Map<String, Json> {
    let mut out = Map::new();
    if let Some(s) = s {
        if s.fields.len() > 50 {
            v.add("parameters", "at most 50 parameters");
        }
        for (k, value) in &s.fields {
            match struct_value_to_json(value) {
                Some(j) => {
                    out.insert(k.clone(), j);
                }
                None => v.add(
                    format!("parameters.{k}"),
                    "is not a finite number, string, boolean, list or object",
                ),
            }
        }
    }
    out
}

/// The well-known parameter that holds edges before their deletion (DP-6): a whole number of
/// seconds from 0 to `max`, so a due time is always a date the store and the API can carry.
fn grace_period(v: &mut Violations, params: &Map<String, Json>, max: std::time::Duration) {
    let Some(value) = params.get("gracePeriodSeconds") else {
        return;
    };
    let max = max.as_secs();
    let within = value
        .as_f64()
        .is_some_and(|s| s >= 0.0 && s.fract() == 0.0 && s <= max as f64);
    if !within {
        v.add(
            "parameters.gracePeriodSeconds",
            format!("must be a whole number of seconds from 0 to {max}"),
        );
    }
}

fn struct_value_to_json(v: &prost_types::Value) -> Option<Json> {
    use prost_types::value::Kind;
    Some(match v.kind.as_ref()? {
        Kind::NullValue(_) => Json::Null,
        Kind::BoolValue(b) => Json::Bool(*b),
        Kind::NumberValue(n) => serde_json::Number::from_f64(*n).map(Json::Number)?,
        Kind::StringValue(s) => Json::String(s.clone()),
        Kind::ListValue(l) => Json::Array(
            l.values
                .iter()
                .map(struct_value_to_json)
                .collect::<Option<_>>()?,
        ),
        Kind::StructValue(s) => Json::Object(
            s.fields
                .iter()
                .map(|(k, v)| Some((k.clone(), struct_value_to_json(v)?)))
                .collect::<Option<_>>()?,
        ),
    })
}

fn after(token: &[String]) -> Result<(i64, String)> {
    match token {
        [t, id] => Ok((
            t.parse()
                .map_err(|_| Error::invalid("page_token", "malformed"))?,
            id.clone(),
        )),
        _ => Err(Error::invalid("page_token", "malformed")),
    }
}

fn short_name(v: &mut Violations, field: &str, value: &str) -> String {
    if value.is_empty()
        || value.len() > 100
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        v.add(field, "must be 1-100 letters, digits, '_', '-' or '.'");
    }
    value.to_owned()
}

#[tonic::async_trait]
impl DeprovisionService for DeprovisionApi {
    async fn apply_catalog(
        &self,
        request: Request<pb::ApplyCatalogRequest>,
    ) -> Reply<pb::ApplyCatalogResponse> {
        DeprovisionApi::apply_catalog(self, request).await
    }

    async fn list_entity_kinds(
        &self,
        request: Request<pb::ListEntityKindsRequest>,
    ) -> Reply<pb::ListEntityKindsResponse> {
        DeprovisionApi::list_entity_kinds(self, request).await
    }

    async fn get_entity_kind(
        &self,
        request: Request<pb::GetEntityKindRequest>,
    ) -> Reply<pb::GetEntityKindResponse> {
        DeprovisionApi::get_entity_kind(self, request).await
    }

    async fn create_entity(
        &self,
        request: Request<pb::CreateEntityRequest>,
    ) -> Reply<pb::CreateEntityResponse> {
        DeprovisionApi::create_entity(self, request).await
    }

    async fn get_entity(
        &self,
        request: Request<pb::GetEntityRequest>,
    ) -> Reply<pb::GetEntityResponse> {
        DeprovisionApi::get_entity(self, request).await
    }

    async fn list_entities(
        &self,
        request: Request<pb::ListEntitiesRequest>,
    ) -> Reply<pb::ListEntitiesResponse> {
        DeprovisionApi::list_entities(self, request).await
    }

    async fn update_entity(
        &self,
        request: Request<pb::UpdateEntityRequest>,
    ) -> Reply<pb::UpdateEntityResponse> {
        DeprovisionApi::update_entity(self, request).await
    }

    async fn create_relationship(
        &self,
        request: Request<pb::CreateRelationshipRequest>,
    ) -> Reply<pb::CreateRelationshipResponse> {
        DeprovisionApi::create_relationship(self, request).await
    }

    async fn get_relationship(
        &self,
        request: Request<pb::GetRelationshipRequest>,
    ) -> Reply<pb::GetRelationshipResponse> {
        DeprovisionApi::get_relationship(self, request).await
    }

    async fn list_relationships(
        &self,
        request: Request<pb::ListRelationshipsRequest>,
    ) -> Reply<pb::ListRelationshipsResponse> {
        DeprovisionApi::list_relationships(self, request).await
    }

    async fn force_finalize_relationship(
        &self,
        request: Request<pb::ForceFinalizeRelationshipRequest>,
    ) -> Reply<pb::ForceFinalizeRelationshipResponse> {
        DeprovisionApi::force_finalize_relationship(self, request).await
    }

    async fn trigger_action(
        &self,
        request: Request<pb::TriggerActionRequest>,
    ) -> Reply<pb::TriggerActionResponse> {
        DeprovisionApi::trigger_action(self, request).await
    }

    async fn get_action_run(
        &self,
        request: Request<pb::GetActionRunRequest>,
    ) -> Reply<pb::GetActionRunResponse> {
        DeprovisionApi::get_action_run(self, request).await
    }

    async fn list_action_runs(
        &self,
        request: Request<pb::ListActionRunsRequest>,
    ) -> Reply<pb::ListActionRunsResponse> {
        DeprovisionApi::list_action_runs(self, request).await
    }

    async fn retry_action_run(
        &self,
        request: Request<pb::RetryActionRunRequest>,
    ) -> Reply<pb::RetryActionRunResponse> {
        DeprovisionApi::retry_action_run(self, request).await
    }

    async fn cancel_action_run(
        &self,
        request: Request<pb::CancelActionRunRequest>,
    ) -> Reply<pb::CancelActionRunResponse> {
        DeprovisionApi::cancel_action_run(self, request).await
    }

    async fn complete_action_step(
        &self,
        request: Request<pb::CompleteActionStepRequest>,
    ) -> Reply<pb::CompleteActionStepResponse> {
        DeprovisionApi::complete_action_step(self, request).await
    }

    async fn schedule_action(
        &self,
        request: Request<pb::ScheduleActionRequest>,
    ) -> Reply<pb::ScheduleActionResponse> {
        DeprovisionApi::schedule_action(self, request).await
    }

    async fn list_scheduled_actions(
        &self,
        request: Request<pb::ListScheduledActionsRequest>,
    ) -> Reply<pb::ListScheduledActionsResponse> {
        DeprovisionApi::list_scheduled_actions(self, request).await
    }

    async fn cancel_scheduled_action(
        &self,
        request: Request<pb::CancelScheduledActionRequest>,
    ) -> Reply<pb::CancelScheduledActionResponse> {
        DeprovisionApi::cancel_scheduled_action(self, request).await
    }
}
