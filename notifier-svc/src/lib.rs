//! notifier-svc: the notifier: notification configurations and deliveries.

mod api;
pub mod migrations;

use std::net::SocketAddr;

use ebb_common::app::ServiceConfig;
use ebb_common::config::{ConfigError, ServerConfig, Validate};
use ebb_common::serving::{self, Component};
use ebb_proto::notifier::v1::notifier_service_server::NotifierServiceServer;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// notifier-svc configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Shared server settings.
    #[serde(flatten)]
    pub server: ServerConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::with_defaults(
                SocketAddr::from(([127, 0, 0, 1], 50063)),
                "ebb-data/notifier.db",
            ),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()
    }
}

impl ServiceConfig for Config {
    fn server(&self) -> &ServerConfig {
        &self.server
    }
}

/// Connects, migrates and assembles the service.
pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Component> {
    let db = serving::connect_db(&config.server.database_url, &shutdown).await?;
    db.migrate::<migrations::Migrator>().await?;
    let mut component = Component::new();
    component.add_service(
        NotifierServiceServer::new(api::NotifierApi::new(db.clone())),
        &db,
    );
    Ok(component)
}
