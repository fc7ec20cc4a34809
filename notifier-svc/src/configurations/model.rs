//! What a notification configuration is: destination, scope, what a client sets, what is stored.

use ebb_common::error::Violations;
use ebb_common::time::{EpochMs, to_timestamp, to_timestamp_opt};
use ebb_common::{Error, Result};
use ebb_proto::notifier::v1 as pb;

/// The kind of destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Generic signed webhook.
    Webhook,
    /// Slack incoming webhook.
    Slack,
    /// SMTP.
    Email,
    /// Microsoft Teams webhook.
    Teams,
}

impl Destination {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Slack => "slack",
            Self::Email => "email",
            Self::Teams => "teams",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "webhook" => Self::Webhook,
            "slack" => Self::Slack,
            "email" => Self::Email,
            "teams" => Self::Teams,
            other => return Err(Error::Internal(format!("stored destination `{other}`"))),
        })
    }

    pub(super) fn from_proto(v: i32) -> Option<Self> {
        match pb::DestinationType::try_from(v).ok()? {
            pb::DestinationType::Webhook => Some(Self::Webhook),
            pb::DestinationType::Slack => Some(Self::Slack),
            pb::DestinationType::Email => Some(Self::Email),
            pb::DestinationType::Teams => Some(Self::Teams),
            pb::DestinationType::Unspecified => None,
        }
    }

    pub(super) fn to_proto(self) -> pb::DestinationType {
        match self {
            Self::Webhook => pb::DestinationType::Webhook,
            Self::Slack => pb::DestinationType::Slack,
            Self::Email => pb::DestinationType::Email,
            Self::Teams => pb::DestinationType::Teams,
        }
    }
}

/// Where a configuration applies inside its organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every event of the organization.
    Organization,
    /// Events about one project.
    Project(String),
    /// Events about one workspace.
    Workspace(String),
    /// Events about one entity.
    Entity(String),
}

impl Scope {
    pub(super) fn columns(&self) -> (&'static str, String) {
        match self {
            Self::Organization => ("organization", String::new()),
            Self::Project(id) => ("project", id.clone()),
            Self::Workspace(id) => ("workspace", id.clone()),
            Self::Entity(id) => ("entity", id.clone()),
        }
    }

    pub(super) fn from_columns(kind: &str, id: String) -> Result<Self> {
        Ok(match kind {
            "organization" => Self::Organization,
            "project" => Self::Project(id),
            "workspace" => Self::Workspace(id),
            "entity" => Self::Entity(id),
            other => return Err(Error::Internal(format!("stored scope `{other}`"))),
        })
    }

    /// Parses the proto pair, recording violations.
    pub fn from_proto(kind: i32, id: &str, v: &mut Violations) -> Option<Self> {
        let id = id.trim().to_owned();
        let needs_id = |v: &mut Violations, s: Scope| {
            if id.is_empty() || id.len() > 200 {
                v.add(
                    "scope_id",
                    "must name the project, workspace or entity (1 to 200 characters)",
                );
                None
            } else {
                Some(s)
            }
        };
        match pb::ScopeType::try_from(kind) {
            Ok(pb::ScopeType::Organization) | Ok(pb::ScopeType::Unspecified) => {
                if id.is_empty() {
                    Some(Self::Organization)
                } else {
                    v.add("scope_id", "must be empty for organization scope");
                    None
                }
            }
            Ok(pb::ScopeType::Project) => needs_id(v, Self::Project(id.clone())),
            Ok(pb::ScopeType::Workspace) => needs_id(v, Self::Workspace(id.clone())),
            Ok(pb::ScopeType::Entity) => needs_id(v, Self::Entity(id.clone())),
            Err(_) => {
                v.add("scope_type", format!("unknown scope type {kind}"));
                None
            }
        }
    }

    /// The proto pair.
    pub fn to_proto(&self) -> (pb::ScopeType, String) {
        match self {
            Self::Organization => (pb::ScopeType::Organization, String::new()),
            Self::Project(id) => (pb::ScopeType::Project, id.clone()),
            Self::Workspace(id) => (pb::ScopeType::Workspace, id.clone()),
            Self::Entity(id) => (pb::ScopeType::Entity, id.clone()),
        }
    }
}

/// What a client may set on a configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Display name.
    pub name: String,
    /// Scope.
    pub scope: Scope,
    /// Destination type.
    pub destination: Destination,
    /// URL of webhook, Slack and Teams destinations.
    pub url: String,
    /// Recipients of email destinations.
    pub email_addresses: Vec<String>,
    /// Event type patterns.
    pub event_types: Vec<String>,
}

/// A stored configuration.
#[derive(Debug, Clone)]
pub struct Configuration {
    /// Id.
    pub id: String,
    /// Owner.
    pub organization_id: String,
    /// What the client set.
    pub spec: Spec,
    /// Deliveries flow only when enabled.
    pub enabled: bool,
    /// Why it is disabled.
    pub disabled_reason: String,
    /// When a verification last succeeded.
    pub verify_ms: Option<EpochMs>,
    /// What the endpoint answered to the last failed verification.
    pub last_verification_error: String,
    /// Created.
    pub created_ms: EpochMs,
    /// Last changed.
    pub updated_ms: EpochMs,
    /// Secret metadata.
    pub secrets: Vec<SecretInfo>,
}

/// A secret's metadata.
#[derive(Debug, Clone)]
pub struct SecretInfo {
    /// Id.
    pub id: String,
    /// Created.
    pub created_ms: EpochMs,
    /// When it stops signing.
    pub expires_ms: Option<EpochMs>,
}

impl Configuration {
    /// The proto view; never carries a secret.
    pub fn to_proto(&self) -> pb::NotificationConfiguration {
        let (scope_type, scope_id) = self.spec.scope.to_proto();
        pb::NotificationConfiguration {
            id: self.id.clone(),
            organization_id: self.organization_id.clone(),
            name: self.spec.name.clone(),
            scope_type: scope_type as i32,
            scope_id,
            destination_type: self.spec.destination.to_proto() as i32,
            url: self.spec.url.clone(),
            email_addresses: self.spec.email_addresses.clone(),
            event_types: self.spec.event_types.clone(),
            enabled: self.enabled,
            disabled_reason: self.disabled_reason.clone(),
            verify_time: to_timestamp_opt(self.verify_ms),
            last_verification_error: self.last_verification_error.clone(),
            signing_secrets: self
                .secrets
                .iter()
                .map(|s| pb::SigningSecretInfo {
                    id: s.id.clone(),
                    create_time: Some(to_timestamp(s.created_ms)),
                    expire_time: to_timestamp_opt(s.expires_ms),
                })
                .collect(),
            create_time: Some(to_timestamp(self.created_ms)),
            update_time: Some(to_timestamp(self.updated_ms)),
        }
    }
}
