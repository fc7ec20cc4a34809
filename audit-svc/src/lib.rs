//! audit-svc: the append-only, hash-chained audit store.

mod api;
pub mod chain;
pub mod data;
pub mod gauges;
pub mod migrations;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use ebb_common::app::ServiceConfig;
use ebb_common::config::{ConfigError, ServerConfig, Validate};
use ebb_common::serving::{self, Component};
use ebb_proto::audit::v1::audit_service_server::AuditServiceServer;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// audit-svc configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(default)]
pub struct Config {
    /// Shared server settings.
    #[serde(flatten)]
    pub server: ServerConfig,
    /// ExportEvents.
    pub export: ExportConfig,
}

/// ExportEvents streams (`EBB_EXPORT__MAX_STREAMS_PER_CALLER=8`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(default)]
pub struct ExportConfig {
    /// ExportEvents streams one token may have open at once; more answer RESOURCE_EXHAUSTED.
    /// Each open stream holds at most one page of events, read only as the client reads.
    pub max_streams_per_caller: usize,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            max_streams_per_caller: 4,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::with_defaults(
                SocketAddr::from(([127, 0, 0, 1], 50064)),
                "ebb-data/audit.db",
                "127.0.0.1:9464",
            ),
            export: ExportConfig::default(),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        if self.export.max_streams_per_caller == 0 {
            return Err(ConfigError::field(
                "export.max_streams_per_caller",
                "must be at least 1",
            ));
        }
        self.server.require_service_token("audit-svc")
    }
}

impl ServiceConfig for Config {
    fn server(&self) -> &ServerConfig {
        &self.server
    }
}

/// Connects, migrates and assembles the service.
pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Component> {
    let db = serving::connect_database(&config.server, &shutdown).await?;
    db.migrate::<migrations::Migrator>().await?;
    let mut component = Component::new();
    component.add_metrics_source(Arc::new(gauges::AuditMetrics::new(db.clone())));
    component.ask_lifecycle_for_tokens(&config.server, "")?;
    component.add_resolver(Arc::new(ebb_common::auth::TableResolver::new(
        db.clone(),
        &[("ebb.audit.v1.", "id", "audit event")],
        &[("audit event", "audit_events", "id")],
    )));
    let api = api::AuditApi::new(
        store::Store::new(db.clone()),
        config.export.max_streams_per_caller,
    );
    component.add_service(AuditServiceServer::new(api), &db);
    Ok(component)
}
