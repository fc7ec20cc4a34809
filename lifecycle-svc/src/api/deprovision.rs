//! `ebb.lifecycle.v1.DeprovisionService`: thin handlers over entities, relationships, the
//! catalog and action runs.

use ebb_common::error::Violations;
use ebb_common::time::{to_timestamp, to_timestamp_opt};
use ebb_common::{Error, Result, page};
use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::deprovision_service_server::DeprovisionService;
use sea_orm::ConnectionTrait;
use serde_json::{Map, Value as Json};
use tonic::{Request, Response, Status};

use super::convert::{json_to_struct, json_to_value};
use super::validate as check;
use crate::core::Lifecycle;
use crate::deprovision::action_runs::ActionRunRow;
use crate::deprovision::action_runs::ActionRunStatus;
use crate::deprovision::action_runs::StepStatus;
use crate::deprovision::catalog::{KindDef, TriggerDef};
use crate::deprovision::entities::EntityRow;
use crate::deprovision::relationships::{RelationshipFilter, RelationshipRow};
use crate::deprovision::scheduled::ScheduledRow;
use crate::deprovision::trigger;
use crate::deprovision::{
    action_runs, callbacks, catalog, entities, plan, relationships, scheduled, steps,
};
use crate::finish;
use crate::store::{decode_json, query_all};

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
    Ok(pb::ActionRun {
        id: r.id.clone(),
        organization_id: r.organization_id.clone(),
        entity_id: r.entity_id.clone(),
        action: r.action.clone(),
        parameters: Some(json_to_struct(&Json::Object(r.parameters()?))),
        plan: plan_pb(&r.plan()?),
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
        status: s.status.to_string(),
        action_run_id: s.action_run_id.clone().unwrap_or_default(),
        error: s.error.clone(),
        create_time: Some(to_timestamp(s.created_at)),
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
        let req = request.into_inner();
        let catalog =
            catalog::parse(&req.yaml).map_err(|e| Error::invalid("yaml", e.to_string()))?;
        let now = self.core.now();
        ok(self
            .core
            .mutate("ApplyCatalog", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    catalog::store(txn, &catalog, "api", now).await?;
                    Ok(pb::ApplyCatalogResponse {
                        kinds: catalog.kinds.iter().map(kind_pb).collect(),
                    })
                })
            })
            .await)
    }

    async fn list_entity_kinds(
        &self,
        _request: Request<pb::ListEntityKindsRequest>,
    ) -> Reply<pb::ListEntityKindsResponse> {
        let kinds = catalog::kinds(&self.core.db.conn).await?;
        ok(Ok(pb::ListEntityKindsResponse {
            kinds: kinds.iter().map(kind_pb).collect(),
        }))
    }

    async fn get_entity_kind(
        &self,
        request: Request<pb::GetEntityKindRequest>,
    ) -> Reply<pb::GetEntityKindResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let name = short_name(&mut v, "name", &req.name);
        v.finish()?;
        let kind = catalog::kind(&self.core.db.conn, &name).await?;
        ok(Ok(pb::GetEntityKindResponse {
            kind: Some(kind_pb(&kind)),
        }))
    }

    async fn create_entity(
        &self,
        request: Request<pb::CreateEntityRequest>,
    ) -> Reply<pb::CreateEntityResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = check::id(&mut v, "organization_id", &req.organization_id);
        let kind = short_name(&mut v, "kind", &req.kind);
        let name = check::name(&mut v, "name", &req.name);
        let attributes = check::labels(&mut v, "attributes", &req.attributes);
        let workspace = check::optional_id(&mut v, "workspace_id", &req.workspace_id);
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate("CreateEntity", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let e = entities::create_entity(
                        txn,
                        &org,
                        &kind,
                        &name,
                        &attributes,
                        workspace.as_deref(),
                        ACTOR,
                        now,
                    )
                    .await?;
                    Ok(pb::CreateEntityResponse {
                        entity: Some(entity_pb(&e)?),
                    })
                })
            })
            .await)
    }

    async fn get_entity(
        &self,
        request: Request<pb::GetEntityRequest>,
    ) -> Reply<pb::GetEntityResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "entity_id", &req.entity_id);
        v.finish()?;
        let e = entities::get_entity(&self.core.db.conn, &id).await?;
        ok(Ok(pb::GetEntityResponse {
            entity: Some(entity_pb(&e)?),
        }))
    }

    async fn list_entities(
        &self,
        request: Request<pb::ListEntitiesRequest>,
    ) -> Reply<pb::ListEntitiesResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = check::id(&mut v, "organization_id", &req.organization_id);
        let kind = (!req.kind.is_empty()).then(|| short_name(&mut v, "kind", &req.kind));
        let state = (!req.state.is_empty()).then(|| short_name(&mut v, "state", &req.state));
        let size = v.check("page_size", page::page_size(req.page_size));
        v.finish()?;
        let size = size.unwrap_or(page::DEFAULT_PAGE_SIZE);
        let fh = page::filter_hash(&[
            "entities",
            &org,
            kind.as_deref().unwrap_or_default(),
            state.as_deref().unwrap_or_default(),
        ]);
        let pos = match page::decode(&req.page_token, &fh)? {
            Some(p) => Some(after(&p)?),
            None => None,
        };
        let rows = entities::list_entities(
            &self.core.db.conn,
            &org,
            kind.as_deref(),
            state.as_deref(),
            pos,
            size + 1,
        )
        .await?;
        let (rows, next_page_token) = page::split(rows, size, &fh, |l| {
            vec![l.created_at.to_string(), l.id.clone()]
        });
        ok(Ok(pb::ListEntitiesResponse {
            entities: rows.iter().map(entity_pb).collect::<Result<_>>()?,
            next_page_token,
        }))
    }

    async fn update_entity(
        &self,
        request: Request<pb::UpdateEntityRequest>,
    ) -> Reply<pb::UpdateEntityResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let Some(e) = req.entity.clone() else {
            return Err(Error::invalid("entity", "is required").into());
        };
        let id = check::id(&mut v, "entity.id", &e.id);
        let paths = req
            .update_mask
            .as_ref()
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        if paths.is_empty() {
            v.add(
                "update_mask",
                "name at least one path: name, attributes, workspace_id",
            );
        }
        let (mut name, mut attributes, mut workspace) = (None, None, None);
        for p in &paths {
            match p.as_str() {
                "name" => name = Some(check::name(&mut v, "entity.name", &e.name)),
                "attributes" => {
                    attributes = Some(check::labels(&mut v, "entity.attributes", &e.attributes))
                }
                "workspace_id" => {
                    workspace = Some(check::optional_id(
                        &mut v,
                        "entity.workspace_id",
                        &e.workspace_id,
                    ))
                }
                other => v.add(
                    "update_mask",
                    format!(
                        "unknown or read-only path `{other}` (state changes only through actions)"
                    ),
                ),
            }
        }
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate("UpdateEntity", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let e =
                        entities::update_entity(txn, &id, name, attributes, workspace, ACTOR, now)
                            .await?;
                    Ok(pb::UpdateEntityResponse {
                        entity: Some(entity_pb(&e)?),
                    })
                })
            })
            .await)
    }

    async fn create_relationship(
        &self,
        request: Request<pb::CreateRelationshipRequest>,
    ) -> Reply<pb::CreateRelationshipResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let rel_type = short_name(&mut v, "type", &req.r#type);
        let from = check::id(&mut v, "from_entity_id", &req.from_entity_id);
        let to = check::id(&mut v, "to_entity_id", &req.to_entity_id);
        if !from.is_empty() && from == to {
            v.add("to_entity_id", "an entity cannot relate to itself");
        }
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate("CreateRelationship", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let r =
                        relationships::create_relationship(txn, &rel_type, &from, &to, ACTOR, now)
                            .await?;
                    Ok(pb::CreateRelationshipResponse {
                        relationship: Some(relationship_pb(&r)),
                    })
                })
            })
            .await)
    }

    async fn get_relationship(
        &self,
        request: Request<pb::GetRelationshipRequest>,
    ) -> Reply<pb::GetRelationshipResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "relationship_id", &req.relationship_id);
        v.finish()?;
        let r = relationships::get_relationship(&self.core.db.conn, &id).await?;
        ok(Ok(pb::GetRelationshipResponse {
            relationship: Some(relationship_pb(&r)),
        }))
    }

    async fn list_relationships(
        &self,
        request: Request<pb::ListRelationshipsRequest>,
    ) -> Reply<pb::ListRelationshipsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let state = match pb::RelationshipState::try_from(req.state) {
            Ok(pb::RelationshipState::Unspecified) => None,
            Ok(pb::RelationshipState::Active) => Some("active"),
            Ok(pb::RelationshipState::Removing) => Some("removing"),
            Ok(pb::RelationshipState::Removed) => Some("removed"),
            Err(_) => {
                v.add("state", format!("unknown relationship state {}", req.state));
                None
            }
        };
        let filter = RelationshipFilter {
            organization_id: check::id(&mut v, "organization_id", &req.organization_id),
            state,
            overdue: req.overdue,
            entity_id: check::optional_id(&mut v, "entity_id", &req.entity_id),
        };
        let size = v.check("page_size", page::page_size(req.page_size));
        v.finish()?;
        let size = size.unwrap_or(page::DEFAULT_PAGE_SIZE);
        let fh = page::filter_hash(&[
            "relationships",
            &filter.organization_id,
            filter.state.unwrap_or_default(),
            &filter.overdue.to_string(),
            filter.entity_id.as_deref().unwrap_or_default(),
        ]);
        let pos = match page::decode(&req.page_token, &fh)? {
            Some(p) => Some(after(&p)?),
            None => None,
        };
        let rows = relationships::list_relationships(
            &self.core.db.conn,
            &filter,
            pos,
            size + 1,
            self.core.now(),
        )
        .await?;
        let (rows, next_page_token) = page::split(rows, size, &fh, |l| {
            vec![l.created_at.to_string(), l.id.clone()]
        });
        ok(Ok(pb::ListRelationshipsResponse {
            relationships: rows.iter().map(relationship_pb).collect(),
            next_page_token,
        }))
    }

    async fn force_finalize_relationship(
        &self,
        request: Request<pb::ForceFinalizeRelationshipRequest>,
    ) -> Reply<pb::ForceFinalizeRelationshipResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "relationship_id", &req.relationship_id);
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate(
                "ForceFinalizeRelationship",
                &req.request_id,
                &req,
                move |txn| {
                    Box::pin(async move {
                        let r = relationships::force_finalize(txn, &id, ACTOR, now).await?;
                        Ok(pb::ForceFinalizeRelationshipResponse {
                            relationship: Some(relationship_pb(&r)),
                        })
                    })
                },
            )
            .await)
    }

    async fn trigger_action(
        &self,
        request: Request<pb::TriggerActionRequest>,
    ) -> Reply<pb::TriggerActionResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let entity = check::id(&mut v, "entity_id", &req.entity_id);
        let action = short_name(&mut v, "action", &req.action);
        let params = parameters(&mut v, &req.parameters);
        v.finish()?;
        let (dry_run, now, engine) = (req.dry_run, self.core.now(), steps::Engine::of(&self.core));
        let resp = self
            .core
            .mutate("TriggerAction", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let t = trigger::trigger(
                        txn, &engine, &entity, &action, &params, dry_run, None, ACTOR, now,
                    )
                    .await?;
                    let run = match &t.run {
                        Some(r) => Some(action_run_pb(txn, r).await?),
                        None => None,
                    };
                    Ok(pb::TriggerActionResponse {
                        action_run: run,
                        plan: plan_pb(&t.plan),
                    })
                })
            })
            .await;
        self.core.runs_queued.notify_waiters();
        ok(resp)
    }

    async fn get_action_run(
        &self,
        request: Request<pb::GetActionRunRequest>,
    ) -> Reply<pb::GetActionRunResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "action_run_id", &req.action_run_id);
        v.finish()?;
        let r = action_runs::get_action_run(&self.core.db.conn, &id).await?;
        ok(Ok(pb::GetActionRunResponse {
            action_run: Some(action_run_pb(&self.core.db.conn, &r).await?),
        }))
    }

    async fn list_action_runs(
        &self,
        request: Request<pb::ListActionRunsRequest>,
    ) -> Reply<pb::ListActionRunsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = check::id(&mut v, "organization_id", &req.organization_id);
        let entity = check::optional_id(&mut v, "entity_id", &req.entity_id);
        let status = match pb::ActionRunStatus::try_from(req.status) {
            Ok(pb::ActionRunStatus::Unspecified) => None,
            Ok(pb::ActionRunStatus::Running) => Some("running"),
            Ok(pb::ActionRunStatus::Succeeded) => Some("succeeded"),
            Ok(pb::ActionRunStatus::Failed) => Some("failed"),
            Ok(pb::ActionRunStatus::Canceled) => Some("canceled"),
            Err(_) => {
                v.add(
                    "status",
                    format!("unknown action run status {}", req.status),
                );
                None
            }
        };
        let size = v.check("page_size", page::page_size(req.page_size));
        v.finish()?;
        let size = size.unwrap_or(page::DEFAULT_PAGE_SIZE);
        let fh = page::filter_hash(&[
            "action_runs",
            &org,
            entity.as_deref().unwrap_or_default(),
            status.unwrap_or_default(),
        ]);
        let mut sql = format!(
            "SELECT {} FROM action_runs WHERE organization_id = $1",
            action_runs::ACTION_RUN_COLUMNS
        );
        let mut values: Vec<sea_orm::Value> = vec![org.clone().into()];
        if let Some(e) = entity {
            values.push(e.into());
            sql.push_str(&format!(" AND entity_id = ${}", values.len()));
        }
        if let Some(s) = status {
            values.push(s.into());
            sql.push_str(&format!(" AND status = ${}", values.len()));
        }
        if let Some(p) = page::decode(&req.page_token, &fh)? {
            let (t, id) = after(&p)?;
            values.push(t.into());
            let a = values.len();
            values.push(id.into());
            sql.push_str(&format!(
                " AND (created_at < ${a} OR (created_at = ${a} AND id < ${}))",
                values.len()
            ));
        }
        sql.push_str(&format!(
            " ORDER BY created_at DESC, id DESC LIMIT {}",
            size + 1
        ));
        let rows: Vec<ActionRunRow> = query_all(&self.core.db.conn, &sql, values).await?;
        let (rows, next_page_token) = page::split(rows, size, &fh, |l| {
            vec![l.created_at.to_string(), l.id.clone()]
        });
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(action_run_pb(&self.core.db.conn, r).await?);
        }
        ok(Ok(pb::ListActionRunsResponse {
            action_runs: out,
            next_page_token,
        }))
    }

    async fn retry_action_run(
        &self,
        request: Request<pb::RetryActionRunRequest>,
    ) -> Reply<pb::RetryActionRunResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "action_run_id", &req.action_run_id);
        v.finish()?;
        let (now, engine) = (self.core.now(), steps::Engine::of(&self.core));
        let resp = self
            .core
            .mutate("RetryActionRun", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let (r, _) = trigger::retry(txn, &engine, &id, ACTOR, now).await?;
                    Ok(pb::RetryActionRunResponse {
                        action_run: Some(action_run_pb(txn, &r).await?),
                    })
                })
            })
            .await;
        self.core.runs_queued.notify_waiters();
        ok(resp)
    }

    async fn cancel_action_run(
        &self,
        request: Request<pb::CancelActionRunRequest>,
    ) -> Reply<pb::CancelActionRunResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "action_run_id", &req.action_run_id);
        v.finish()?;
        let (now, _policy) = (self.core.now(), finish::Policy::of(&self.core));
        ok(self
            .core
            .mutate("CancelActionRun", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let r = trigger::cancel(txn, &id, ACTOR, now).await?;
                    Ok(pb::CancelActionRunResponse {
                        action_run: Some(action_run_pb(txn, &r).await?),
                    })
                })
            })
            .await)
    }

    async fn complete_action_step(
        &self,
        request: Request<pb::CompleteActionStepRequest>,
    ) -> Reply<pb::CompleteActionStepResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let step = check::id(&mut v, "step_id", &req.step_id);
        if req.callback_token.is_empty() || req.callback_token.len() > 200 {
            v.add(
                "callback_token",
                "is required (the token sent with the webhook)",
            );
        }
        let succeeded = match pb::StepOutcome::try_from(req.outcome) {
            Ok(pb::StepOutcome::Succeeded) => true,
            Ok(pb::StepOutcome::Failed) => false,
            _ => {
                v.add(
                    "outcome",
                    "must be STEP_OUTCOME_SUCCEEDED or STEP_OUTCOME_FAILED",
                );
                false
            }
        };
        let message = check::text(&mut v, "message", &req.message, 4096);
        v.finish()?;
        let (now, engine, token) = (
            self.core.now(),
            steps::Engine::of(&self.core),
            req.callback_token.clone(),
        );
        let resp = self
            .core
            .mutate("CompleteActionStep", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let (r, _) = callbacks::complete_step(
                        txn, &engine, &step, &token, succeeded, &message, now,
                    )
                    .await?;
                    Ok(pb::CompleteActionStepResponse {
                        action_run: Some(action_run_pb(txn, &r).await?),
                    })
                })
            })
            .await;
        self.core.runs_queued.notify_waiters();
        ok(resp)
    }

    async fn schedule_action(
        &self,
        request: Request<pb::ScheduleActionRequest>,
    ) -> Reply<pb::ScheduleActionResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let entity = check::id(&mut v, "entity_id", &req.entity_id);
        let action = short_name(&mut v, "action", &req.action);
        let params = parameters(&mut v, &req.parameters);
        let at = check::timestamp(&mut v, "scheduled_time", &req.scheduled_time);
        if req.scheduled_time.is_none() {
            v.add("scheduled_time", "is required");
        }
        v.finish()?;
        let (now, at) = (self.core.now(), at.unwrap_or_default());
        ok(self
            .core
            .mutate("ScheduleAction", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let s =
                        scheduled::schedule_action(txn, &entity, &action, &params, at, ACTOR, now)
                            .await?;
                    Ok(pb::ScheduleActionResponse {
                        scheduled_action: Some(scheduled_pb(&s)?),
                    })
                })
            })
            .await)
    }

    async fn list_scheduled_actions(
        &self,
        request: Request<pb::ListScheduledActionsRequest>,
    ) -> Reply<pb::ListScheduledActionsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = check::id(&mut v, "organization_id", &req.organization_id);
        let entity = check::optional_id(&mut v, "entity_id", &req.entity_id);
        let size = v.check("page_size", page::page_size(req.page_size));
        v.finish()?;
        let size = size.unwrap_or(page::DEFAULT_PAGE_SIZE);
        let fh = page::filter_hash(&[
            "scheduled_actions",
            &org,
            entity.as_deref().unwrap_or_default(),
        ]);
        let mut sql = format!(
            "SELECT {} FROM scheduled_actions WHERE organization_id = $1",
            scheduled::SCHEDULED_COLUMNS
        );
        let mut values: Vec<sea_orm::Value> = vec![org.clone().into()];
        if let Some(e) = entity {
            values.push(e.into());
            sql.push_str(&format!(" AND entity_id = ${}", values.len()));
        }
        if let Some(p) = page::decode(&req.page_token, &fh)? {
            let (t, id) = after(&p)?;
            values.push(t.into());
            let a = values.len();
            values.push(id.into());
            sql.push_str(&format!(
                " AND (scheduled_at > ${a} OR (scheduled_at = ${a} AND id > ${}))",
                values.len()
            ));
        }
        sql.push_str(&format!(" ORDER BY scheduled_at, id LIMIT {}", size + 1));
        let rows: Vec<ScheduledRow> = query_all(&self.core.db.conn, &sql, values).await?;
        let (rows, next_page_token) = page::split(rows, size, &fh, |l| {
            vec![l.scheduled_at.to_string(), l.id.clone()]
        });
        ok(Ok(pb::ListScheduledActionsResponse {
            scheduled_actions: rows.iter().map(scheduled_pb).collect::<Result<_>>()?,
            next_page_token,
        }))
    }

    async fn cancel_scheduled_action(
        &self,
        request: Request<pb::CancelScheduledActionRequest>,
    ) -> Reply<pb::CancelScheduledActionResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = check::id(&mut v, "scheduled_action_id", &req.scheduled_action_id);
        v.finish()?;
        let now = self.core.now();
        ok(self
            .core
            .mutate("CancelScheduledAction", &req.request_id, &req, move |txn| {
                Box::pin(async move {
                    let s = scheduled::cancel_scheduled(txn, &id, ACTOR, now).await?;
                    Ok(pb::CancelScheduledActionResponse {
                        scheduled_action: Some(scheduled_pb(&s)?),
                    })
                })
            })
            .await)
    }
}
