//! scheduler-svc: periodic tasks with database-row leasing, safe with any number of replicas
//! and no leader election.

pub mod config;

use ebb_common::serving::Component;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Connects, migrates and assembles the service.
pub async fn build(_config: Config, _shutdown: CancellationToken) -> anyhow::Result<Component> {
    Ok(Component::new())
}
