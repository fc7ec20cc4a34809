//! NotificationConfiguration calls: create, get, list, update, delete, verify, rotate a secret.

use ebb_common::error::Violations;
use ebb_common::page::Page;
use ebb_common::time::now_ms;
use ebb_common::{Error, Result};
use ebb_proto::notifier::v1 as pb;
use sea_orm::TransactionTrait;
use tonic::Request;

use super::service::{NotifierApi, call_key, required};
use crate::configurations::{self, Checks, Scope, Spec};
use crate::payload::{self, Recipient};
use crate::publish::EventRecord;
use crate::signing;
use crate::transport::{AttemptResult, Outcome, Target};

impl NotifierApi {
    fn checks(&self) -> Checks<'_> {
        Checks {
            smtp_configured: self.sender.smtp_configured(),
            guard: self.sender.guard(),
        }
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

    pub(super) async fn create_notification_configuration(
        &self,
        request: Request<pb::CreateNotificationConfigurationRequest>,
    ) -> Result<pb::CreateNotificationConfigurationResponse> {
        let key = call_key(
            &request,
            "CreateNotificationConfiguration",
            &request.get_ref().request_id,
        )?;
        let req = request.into_inner();
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
        let now = now_ms();
        configurations::insert(&txn, &id, &org, &spec, input.enabled, now).await?;
        configurations::insert_secret(&txn, &self.keys, &id, &secret, now).await?;
        let configuration = configurations::get(&txn, &id).await?.to_proto();
        let response = pb::CreateNotificationConfigurationResponse {
            configuration: Some(configuration),
            signing_secret: secret,
        };
        self.finish(txn, &key, response).await
    }

    pub(super) async fn get_notification_configuration(
        &self,
        request: Request<pb::GetNotificationConfigurationRequest>,
    ) -> Result<pb::GetNotificationConfigurationResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        required(&mut v, "id", &req.id);
        v.finish()?;
        let c = configurations::get(&self.db.conn, &req.id).await?;
        Ok(pb::GetNotificationConfigurationResponse {
            configuration: Some(c.to_proto()),
        })
    }

    pub(super) async fn list_notification_configurations(
        &self,
        request: Request<pb::ListNotificationConfigurationsRequest>,
    ) -> Result<pb::ListNotificationConfigurationsResponse> {
        let req = request.into_inner();
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
        } else if req.scope_type == pb::ScopeType::Organization as i32 || req.scope_id.is_empty() {
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

    pub(super) async fn update_notification_configuration(
        &self,
        request: Request<pb::UpdateNotificationConfigurationRequest>,
    ) -> Result<pb::UpdateNotificationConfigurationResponse> {
        let key = call_key(
            &request,
            "UpdateNotificationConfiguration",
            &request.get_ref().request_id,
        )?;
        let req = request.into_inner();
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
            let secrets =
                configurations::signing_secrets(&self.db, &self.keys, &current.id).await?;
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

    pub(super) async fn delete_notification_configuration(
        &self,
        request: Request<pb::DeleteNotificationConfigurationRequest>,
    ) -> Result<pb::DeleteNotificationConfigurationResponse> {
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

    pub(super) async fn verify_notification_configuration(
        &self,
        request: Request<pb::VerifyNotificationConfigurationRequest>,
    ) -> Result<pb::VerifyNotificationConfigurationResponse> {
        let key = call_key(
            &request,
            "VerifyNotificationConfiguration",
            &request.get_ref().request_id,
        )?;
        let req = request.into_inner();
        if let Some(r) = self.replay(&key).await? {
            return Ok(r);
        }
        let mut v = Violations::new();
        required(&mut v, "id", &req.id);
        v.finish()?;
        let current = configurations::get(&self.db.conn, &req.id).await?;
        let secrets = configurations::signing_secrets(&self.db, &self.keys, &current.id).await?;
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

    pub(super) async fn rotate_signing_secret(
        &self,
        request: Request<pb::RotateSigningSecretRequest>,
    ) -> Result<pb::RotateSigningSecretResponse> {
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
        configurations::expire_secrets(&txn, &req.configuration_id, now + overlap_ms).await?;
        let secret = signing::generate_secret();
        configurations::insert_secret(&txn, &self.keys, &req.configuration_id, &secret, now)
            .await?;
        let configuration = configurations::get(&txn, &req.configuration_id)
            .await?
            .to_proto();
        let response = pb::RotateSigningSecretResponse {
            configuration: Some(configuration),
            signing_secret: secret,
        };
        self.finish(txn, &key, response).await
    }
}
