//! lifecycle-svc: the source of truth for organizations, projects, workspaces, state versions,
//! runs and auto-destroy schedules, with a transactional outbox of domain events.

pub mod config;
pub mod migrations;

use ebb_common::serving::{self, Component};
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Connects, migrates and assembles the service.
pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Component> {
    let db = serving::connect_db(&config.server.database_url, &shutdown).await?;
    db.migrate::<migrations::Migrator>().await?;
    let component = Component::new();
    Ok(component)
}
