//! The gRPC surface of notifier-svc: thin handlers that check input, call the domain, and map
//! the result.

use std::sync::Arc;

use ebb_common::db::Db;
use ebb_common::error::Violations;
use ebb_common::idempotency::{self, RequestKey};
use ebb_common::page::Page;
use ebb_common::time::{from_timestamp, now_ms};
use ebb_common::{Error, Result};
use ebb_proto::notifier::v1::{self as pb, notifier_service_server::NotifierService};
use prost::Message;
use sea_orm::{DatabaseTransaction, TransactionTrait};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::configurations::{self, Checks, Scope, Spec};
use crate::deliveries::{self, Filter};
use crate::payload::{self, Recipient};
use crate::publish::{self, EventRecord};
use crate::signing;
use crate::transport::{AttemptResult, Outcome, Sender, Target};

/// NotifierService over the notifier database.
pub struct NotifierApi {
    db: Db,
    sender: Arc<Sender>,
    wake: Arc<Notify>,
}

fn reply<T>(r: Result<T>) -> std::result::Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

fn required(v: &mut Violations, field: &str, value: &str) {
    if value.trim().is_empty() {
        v.add(field, "is required");
    } else if value.len() > 200 {
        v.add(field, "must be at most 200 characters");
    }
}

impl NotifierApi {
    /// Serves `db`, sending through `sender` and waking the local worker through `wake`.
    pub fn new(db: Db, sender: Arc<Sender>, wake: Arc<Notify>) -> Self {
        Self { db, sender, wake }
    }

    fn checks(&self) -> Checks<'_> {
        Checks {
            smtp_configured: self.sender.smtp_configured(),
            guard: self.sender.guard(),
        }
    }

    /// The stored answer of an earlier call with `key`. Checked before anything else, and
    /// before the transaction: some calls send a verification message first, which a replay
    /// must not send again.
    async fn replay<R: Message + Default>(&self, key: &Option<RequestKey>) -> Result<Option<R>> {
        idempotency::replay(&self.db.conn, key.as_ref()).await
    }

    /// Commits `txn` with `response` remembered under `key`. A concurrent call with the same
    /// request id that remembered its answer first makes this one ABORTED; a retry replays it.
    async fn finish<R: Message>(
        &self,
        txn: DatabaseTransaction,
        key: &Option<RequestKey>,
        response: R,
    ) -> Result<R> {
        idempotency::remember(&txn, key.as_ref(), &response, now_ms()).await?;
        txn.commit().await?;
        Ok(response)
    }

    /// Sends a verification message to a destination.
    async fn verify_destination(
        &self,
        id: &str,
        org: &str,
        spec: &Spec,
        secrets: &[String],
    ) -> AttemptResult {
        let event = EventRecord {
            id: format!("evt_verify_{}", uuid::Uuid::now_v7().simple()),
            organization_id: org.to_owned(),
            event_type: "notification.verification".into(),
            subject_type: "notification_configuration".into(),
            subject_id: id.to_owned(),
            subject_name: spec.name.clone(),
            actor: "notifier".into(),
            project_id: String::new(),
            workspace_id: String::new(),
            entity_id: String::new(),
            data: serde_json::json!({
                "message": "Ebb sends this message to verify a notification configuration.",
            }),
            occur_ms: now_ms(),
        };
        let message = payload::render(
            spec.destination,
            &event,
            &Recipient {
                id: id.to_owned(),
                name: spec.name.clone(),
            },
        );
        let target = match spec.destination {
            configurations::Destination::Email => Target::Mail(&spec.email_addresses),
            _ => Target::Url(&spec.url),
        };
        let msg_id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        self.sender.send(target, &message, &msg_id, secrets).await
    }

    async fn create(
        &self,
        key: Option<RequestKey>,
        req: pb::CreateNotificationConfigurationRequest,
    ) -> Result<pb::CreateNotificationConfigurationResponse> {
        if let Some(r) = self.replay(&key).await? {
            return Ok(r);
        }
        let Some(input) = &req.configuration else {
            return Err(Error::invalid("configuration", "is required"));
        };
        let (org, spec) = configurations::spec_from_proto(input, &self.checks())?;
        let id = format!("nc_{}", uuid::Uuid::now_v7().simple());
        let secret = signing::generate_secret();
        if input.enabled {
            let answer = self
                .verify_destination(&id, &org, &spec, std::slice::from_ref(&secret))
                .await;
            if answer.outcome != Outcome::Succeeded {
                return Err(Error::precondition(format!(
                    "verification failed, nothing was created: {}",
                    answer.describe()
                )));
            }
        }
        let txn = self.db.conn.begin().await?;
        configurations::insert(&txn, &id, &org, &spec, input.enabled, &secret, now_ms()).await?;
        let configuration = configurations::get(&txn, &id).await?.to_proto();
        let response = pb::CreateNotificationConfigurationResponse {
            configuration: Some(configuration),
            signing_secret: secret,
        };
        self.finish(txn, &key, response).await
    }

    async fn update(
        &self,
        key: Option<RequestKey>,
        req: pb::UpdateNotificationConfigurationRequest,
    ) -> Result<pb::UpdateNotificationConfigurationResponse> {
        if let Some(r) = self.replay(&key).await? {
            return Ok(r);
        }
        let Some(input) = &req.configuration else {
            return Err(Error::invalid("configuration", "is required"));
        };
        let paths = req
            .update_mask
            .as_ref()
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        if paths.is_empty() {
            return Err(Error::invalid(
                "update_mask",
                "must name at least one field",
            ));
        }
        if input.id.trim().is_empty() {
            return Err(Error::invalid("configuration.id", "is required"));
        }
        let current = configurations::get(&self.db.conn, &input.id).await?;
        let mut spec = current.spec.clone();
        let mut enabled = current.enabled;
        let mut v = Violations::new();
        for path in &paths {
            match path.as_str() {
                "name" => spec.name = configurations::check_name(&input.name, &mut v),
                "scope" | "scope_type" | "scope_id" => {
                    let mut inner = Violations::new();
                    if let Some(s) = Scope::from_proto(input.scope_type, &input.scope_id, &mut inner) {
                        spec.scope = s;
                    }
                    configurations::prefix_into(inner, "configuration.", &mut v);
                }
                "url" => spec.url = input.url.clone(),
                "email_addresses" => spec.email_addresses = input.email_addresses.clone(),
                "event_types" => {
                    configurations::check_event_types(&input.event_types, &mut v);
                    spec.event_types = input.event_types.clone();
                }
                "enabled" => enabled = input.enabled,
                other => v.add(
                    "update_mask",
                    format!(
                        "`{other}` cannot be updated; use name, scope, url, email_addresses, event_types or enabled"
                    ),
                ),
            }
        }
        configurations::check_destination(
            spec.destination,
            &spec.url,
            &spec.email_addresses,
            &self.checks(),
            &mut v,
        );
        v.finish()?;
        let destination_changed =
            spec.url != current.spec.url || spec.email_addresses != current.spec.email_addresses;
        let verify = enabled && (!current.enabled || destination_changed);
        if verify {
            let secrets = configurations::signing_secrets(&self.db, &current.id).await?;
            let answer = self
                .verify_destination(&current.id, &current.organization_id, &spec, &secrets)
                .await;
            if answer.outcome != Outcome::Succeeded {
                let what = answer.describe();
                configurations::record_verification_failure(&self.db, &current.id, &what).await?;
                return Err(Error::precondition(format!(
                    "verification failed, nothing was changed: {what}"
                )));
            }
        }
        let txn = self.db.conn.begin().await?;
        configurations::update(&txn, &current.id, &spec, enabled, verify, now_ms()).await?;
        let configuration = configurations::get(&txn, &current.id).await?.to_proto();
        let response = pb::UpdateNotificationConfigurationResponse {
            configuration: Some(configuration),
        };
        self.finish(txn, &key, response).await
    }

    async fn verify(
        &self,
        key: Option<RequestKey>,
        req: pb::VerifyNotificationConfigurationRequest,
    ) -> Result<pb::VerifyNotificationConfigurationResponse> {
        if let Some(r) = self.replay(&key).await? {
            return Ok(r);
        }
        let mut v = Violations::new();
        required(&mut v, "id", &req.id);
        v.finish()?;
        let current = configurations::get(&self.db.conn, &req.id).await?;
        let secrets = configurations::signing_secrets(&self.db, &current.id).await?;
        let answer = self
            .verify_destination(
                &current.id,
                &current.organization_id,
                &current.spec,
                &secrets,
            )
            .await;
        if answer.outcome != Outcome::Succeeded {
            let what = answer.describe();
            configurations::record_verification_failure(&self.db, &current.id, &what).await?;
            return Err(Error::precondition(format!("verification failed: {what}")));
        }
        let txn = self.db.conn.begin().await?;
        configurations::update(&txn, &current.id, &current.spec, true, true, now_ms()).await?;
        let configuration = configurations::get(&txn, &current.id).await?.to_proto();
        let response = pb::VerifyNotificationConfigurationResponse {
            configuration: Some(configuration),
            response_status: answer.status,
        };
        let response = self.finish(txn, &key, response).await?;
        // Deliveries held while the configuration was disabled can flow again.
        self.wake.notify_one();
        Ok(response)
    }
}

/// The request-id key of a call of NotifierService's `method`.
fn call_key<T: Message>(
    request: &Request<T>,
    method: &str,
    request_id: &str,
) -> Result<Option<RequestKey>> {
    RequestKey::for_call(
        request,
        &format!("/ebb.notifier.v1.NotifierService/{method}"),
        request_id,
    )
}

fn statuses(list: &[i32], field: &str, v: &mut Violations) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        match deliveries::status_name(*s) {
            Some(name) => out.push(name),
            None => v.add(
                format!("{field}[{i}]"),
                "must be PENDING, SUCCEEDED, FAILED or CANCELLED",
            ),
        }
    }
    out
}

#[tonic::async_trait]
impl NotifierService for NotifierApi {
    async fn publish_event(
        &self,
        request: Request<pb::PublishEventRequest>,
    ) -> std::result::Result<Response<pb::PublishEventResponse>, Status> {
        let req = request.into_inner();
        reply(
            async {
                let now = now_ms();
                let event = EventRecord::from_proto(req.event.as_ref(), now)?;
                let txn = self.db.conn.begin().await?;
                let created =
                    publish::publish(&txn, &event, std::time::Duration::ZERO, now).await?;
                txn.commit().await?;
                if created > 0 {
                    self.wake.notify_one();
                }
                Ok(pb::PublishEventResponse {
                    deliveries_created: created as i32,
                })
            }
            .await,
        )
    }

    async fn create_notification_configuration(
        &self,
        request: Request<pb::CreateNotificationConfigurationRequest>,
    ) -> std::result::Result<Response<pb::CreateNotificationConfigurationResponse>, Status> {
        reply(
            async {
                let key = call_key(
                    &request,
                    "CreateNotificationConfiguration",
                    &request.get_ref().request_id,
                )?;
                self.create(key, request.into_inner()).await
            }
            .await,
        )
    }

    async fn get_notification_configuration(
        &self,
        request: Request<pb::GetNotificationConfigurationRequest>,
    ) -> std::result::Result<Response<pb::GetNotificationConfigurationResponse>, Status> {
        let req = request.into_inner();
        reply(
            async {
                let mut v = Violations::new();
                required(&mut v, "id", &req.id);
                v.finish()?;
                let c = configurations::get(&self.db.conn, &req.id).await?;
                Ok(pb::GetNotificationConfigurationResponse {
                    configuration: Some(c.to_proto()),
                })
            }
            .await,
        )
    }

    async fn list_notification_configurations(
        &self,
        request: Request<pb::ListNotificationConfigurationsRequest>,
    ) -> std::result::Result<Response<pb::ListNotificationConfigurationsResponse>, Status> {
        let req = request.into_inner();
        reply(
            async {
                let mut v = Violations::new();
                required(&mut v, "organization_id", &req.organization_id);
                let page = Page::read(
                    &mut v,
                    req.page_size,
                    &req.page_token,
                    &[
                        "notification_configurations",
                        &req.organization_id,
                        &req.scope_type.to_string(),
                        &req.scope_id,
                    ],
                );
                let scope = if req.scope_type == pb::ScopeType::Unspecified as i32 {
                    if !req.scope_id.is_empty() {
                        v.add("scope_type", "is required with scope_id");
                    }
                    None
                } else if req.scope_type == pb::ScopeType::Organization as i32
                    || req.scope_id.is_empty()
                {
                    // A kind without an id lists every configuration of that kind.
                    match pb::ScopeType::try_from(req.scope_type) {
                        Ok(pb::ScopeType::Organization) => Some(Scope::Organization),
                        Ok(pb::ScopeType::Project) => Some(Scope::Project(String::new())),
                        Ok(pb::ScopeType::Workspace) => Some(Scope::Workspace(String::new())),
                        Ok(pb::ScopeType::Entity) => Some(Scope::Entity(String::new())),
                        _ => {
                            v.add("scope_type", "unknown scope type");
                            None
                        }
                    }
                } else {
                    Scope::from_proto(req.scope_type, &req.scope_id, &mut v)
                };
                v.finish()?;
                let after = page.after_key_id()?;
                let rows = configurations::list(
                    &self.db,
                    &req.organization_id,
                    scope.as_ref(),
                    after.as_ref(),
                    page.limit(),
                )
                .await?;
                let (rows, next_page_token) =
                    page.finish(rows, |c| vec![c.created_ms.to_string(), c.id.clone()]);
                Ok(pb::ListNotificationConfigurationsResponse {
                    configurations: rows.iter().map(|c| c.to_proto()).collect(),
                    next_page_token,
                })
            }
            .await,
        )
    }

    async fn update_notification_configuration(
        &self,
        request: Request<pb::UpdateNotificationConfigurationRequest>,
    ) -> std::result::Result<Response<pb::UpdateNotificationConfigurationResponse>, Status> {
        reply(
            async {
                let key = call_key(
                    &request,
                    "UpdateNotificationConfiguration",
                    &request.get_ref().request_id,
                )?;
                self.update(key, request.into_inner()).await
            }
            .await,
        )
    }

    async fn delete_notification_configuration(
        &self,
        request: Request<pb::DeleteNotificationConfigurationRequest>,
    ) -> std::result::Result<Response<pb::DeleteNotificationConfigurationResponse>, Status> {
        reply(
            async {
                let key = call_key(
                    &request,
                    "DeleteNotificationConfiguration",
                    &request.get_ref().request_id,
                )?;
                let req = request.into_inner();
                if let Some(r) = self.replay(&key).await? {
                    return Ok(r);
                }
                let mut v = Violations::new();
                required(&mut v, "id", &req.id);
                v.finish()?;
                let txn = self.db.conn.begin().await?;
                let cancelled = configurations::delete(&txn, &req.id, now_ms()).await?;
                let response = pb::DeleteNotificationConfigurationResponse {
                    deliveries_cancelled: cancelled as i32,
                };
                self.finish(txn, &key, response).await
            }
            .await,
        )
    }

    async fn verify_notification_configuration(
        &self,
        request: Request<pb::VerifyNotificationConfigurationRequest>,
    ) -> std::result::Result<Response<pb::VerifyNotificationConfigurationResponse>, Status> {
        reply(
            async {
                let key = call_key(
                    &request,
                    "VerifyNotificationConfiguration",
                    &request.get_ref().request_id,
                )?;
                self.verify(key, request.into_inner()).await
            }
            .await,
        )
    }

    async fn rotate_signing_secret(
        &self,
        request: Request<pb::RotateSigningSecretRequest>,
    ) -> std::result::Result<Response<pb::RotateSigningSecretResponse>, Status> {
        reply(
            async {
                let key = call_key(
                    &request,
                    "RotateSigningSecret",
                    &request.get_ref().request_id,
                )?;
                let req = request.into_inner();
                if let Some(r) = self.replay(&key).await? {
                    return Ok(r);
                }
                let mut v = Violations::new();
                required(&mut v, "configuration_id", &req.configuration_id);
                if !(0..=7 * 86_400).contains(&req.overlap_seconds) {
                    v.add(
                        "overlap_seconds",
                        "must be between 0 (24 hours) and 604800 (7 days)",
                    );
                }
                v.finish()?;
                let overlap_ms = if req.overlap_seconds == 0 {
                    86_400_000
                } else {
                    req.overlap_seconds * 1000
                };
                let txn = self.db.conn.begin().await?;
                configurations::get(&txn, &req.configuration_id).await?;
                let now = now_ms();
                configurations::expire_secrets(&txn, &req.configuration_id, now + overlap_ms)
                    .await?;
                let secret = signing::generate_secret();
                configurations::insert_secret(&txn, &req.configuration_id, &secret, now).await?;
                let configuration = configurations::get(&txn, &req.configuration_id)
                    .await?
                    .to_proto();
                let response = pb::RotateSigningSecretResponse {
                    configuration: Some(configuration),
                    signing_secret: secret,
                };
                self.finish(txn, &key, response).await
            }
            .await,
        )
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> std::result::Result<Response<pb::ListDeliveriesResponse>, Status> {
        let req = request.into_inner();
        reply(
            async {
                let mut v = Violations::new();
                required(&mut v, "organization_id", &req.organization_id);
                let filter_key = format!(
                    "{:?}",
                    (
                        &req.configuration_id,
                        &req.event_id,
                        &req.event_type,
                        &req.statuses,
                        &req.create_time_after,
                        &req.create_time_before,
                    )
                );
                let page = Page::read(
                    &mut v,
                    req.page_size,
                    &req.page_token,
                    &["deliveries", &req.organization_id, &filter_key],
                );
                let statuses = statuses(&req.statuses, "statuses", &mut v);
                if !req.event_type.is_empty()
                    && let Err(e) = crate::patterns::validate(&req.event_type)
                {
                    v.add("event_type", e);
                }
                let after_ms = req
                    .create_time_after
                    .as_ref()
                    .and_then(|t| v.check("create_time_after", from_timestamp(t)));
                let before_ms = req
                    .create_time_before
                    .as_ref()
                    .and_then(|t| v.check("create_time_before", from_timestamp(t)));
                v.finish()?;
                let filter = Filter {
                    organization_id: req.organization_id.clone(),
                    configuration_id: req.configuration_id.clone(),
                    event_id: req.event_id.clone(),
                    event_type: req.event_type.clone(),
                    statuses,
                    after_ms,
                    before_ms,
                };
                let after = page.after_key_id()?;
                let rows =
                    deliveries::list(&self.db, &filter, after.as_ref(), page.limit()).await?;
                let (rows, next_page_token) =
                    page.finish(rows, |(k, d)| vec![k.to_string(), d.id.clone()]);
                Ok(pb::ListDeliveriesResponse {
                    deliveries: rows.into_iter().map(|(_, d)| d).collect(),
                    next_page_token,
                })
            }
            .await,
        )
    }

    async fn list_delivery_attempts(
        &self,
        request: Request<pb::ListDeliveryAttemptsRequest>,
    ) -> std::result::Result<Response<pb::ListDeliveryAttemptsResponse>, Status> {
        let req = request.into_inner();
        reply(
            async {
                let mut v = Violations::new();
                required(&mut v, "delivery_id", &req.delivery_id);
                let page = Page::read(
                    &mut v,
                    req.page_size,
                    &req.page_token,
                    &["delivery_attempts", &req.delivery_id],
                );
                v.finish()?;
                if !deliveries::exists(&self.db, &req.delivery_id).await? {
                    return Err(Error::not_found("delivery", req.delivery_id.clone()));
                }
                let after = page.after_int()?.unwrap_or(0);
                let rows =
                    deliveries::attempts(&self.db, &req.delivery_id, after, page.limit()).await?;
                let (rows, next_page_token) = page.finish(rows, |a| vec![a.number.to_string()]);
                Ok(pb::ListDeliveryAttemptsResponse {
                    attempts: rows,
                    next_page_token,
                })
            }
            .await,
        )
    }

    async fn redeliver_delivery(
        &self,
        request: Request<pb::RedeliverDeliveryRequest>,
    ) -> std::result::Result<Response<pb::RedeliverDeliveryResponse>, Status> {
        reply(
            async {
                let key = call_key(&request, "RedeliverDelivery", &request.get_ref().request_id)?;
                let req = request.into_inner();
                if let Some(r) = self.replay(&key).await? {
                    return Ok(r);
                }
                let mut v = Violations::new();
                required(&mut v, "delivery_id", &req.delivery_id);
                v.finish()?;
                let txn = self.db.conn.begin().await?;
                let delivery = deliveries::redeliver_one(&txn, &req.delivery_id).await?;
                let response = self
                    .finish(
                        txn,
                        &key,
                        pb::RedeliverDeliveryResponse {
                            delivery: Some(delivery),
                        },
                    )
                    .await?;
                self.wake.notify_one();
                Ok(response)
            }
            .await,
        )
    }

    async fn redeliver_deliveries(
        &self,
        request: Request<pb::RedeliverDeliveriesRequest>,
    ) -> std::result::Result<Response<pb::RedeliverDeliveriesResponse>, Status> {
        reply(
            async {
                let key = call_key(
                    &request,
                    "RedeliverDeliveries",
                    &request.get_ref().request_id,
                )?;
                let req = request.into_inner();
                if let Some(r) = self.replay(&key).await? {
                    return Ok(r);
                }
                let mut v = Violations::new();
                required(&mut v, "organization_id", &req.organization_id);
                let start = match &req.start_time {
                    Some(t) => v.check("start_time", from_timestamp(t)),
                    None => {
                        v.add("start_time", "is required");
                        None
                    }
                };
                let end = match &req.end_time {
                    Some(t) => v.check("end_time", from_timestamp(t)),
                    None => {
                        v.add("end_time", "is required");
                        None
                    }
                };
                if let (Some(s), Some(e)) = (start, end)
                    && s >= e
                {
                    v.add("end_time", "must be after start_time");
                }
                let mut statuses = statuses(&req.statuses, "statuses", &mut v);
                if statuses.contains(&"cancelled") {
                    v.add("statuses", "cancelled deliveries cannot be redelivered");
                }
                if statuses.is_empty() {
                    statuses.push("failed");
                }
                v.finish()?;
                let (Some(start), Some(end)) = (start, end) else {
                    return Err(Error::invalid("start_time", "is required"));
                };
                let txn = self.db.conn.begin().await?;
                let n = deliveries::redeliver_range(
                    &txn,
                    &req.organization_id,
                    start,
                    end,
                    &req.configuration_id,
                    &statuses,
                )
                .await?;
                let response = self
                    .finish(
                        txn,
                        &key,
                        pb::RedeliverDeliveriesResponse {
                            deliveries_scheduled: n as i32,
                        },
                    )
                    .await?;
                self.wake.notify_one();
                Ok(response)
            }
            .await,
        )
    }
}
