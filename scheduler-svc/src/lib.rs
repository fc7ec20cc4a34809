//! scheduler-svc: periodic tasks with database-row leasing, safe with any number of replicas
//! and no leader election.

pub mod api;
pub mod config;
pub mod gauges;
pub mod leases;
pub mod migrations;
pub mod tasks;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use ebb_common::serving::{self, Component};
use ebb_proto::lifecycle::v1::scheduling_service_client::SchedulingServiceClient;
use ebb_proto::scheduler::v1::scheduler_service_server::SchedulerServiceServer;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Connects, migrates, seeds the lease rows and assembles the service with its claim loop.
pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Component> {
    let db = serving::connect_database(&config.server, &shutdown).await?;
    db.migrate::<migrations::Migrator>().await?;
    let owner = if config.replica_id.is_empty() {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "scheduler".into());
        format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
    } else {
        config.replica_id.clone()
    };
    let leases = leases::Leases::new(db.clone(), owner.clone());
    let specs = tasks::specs(&config);
    for spec in &specs {
        for outcome in ["ok", "error", "lease_lost"] {
            metrics::counter!("ebb_scheduler_task_runs_total", "task" => spec.name, "outcome" => outcome)
                .increment(0);
        }
        let interval_ms = i64::try_from(spec.interval.as_millis()).unwrap_or(i64::MAX);
        leases.ensure(spec.name, spec.shards, interval_ms).await?;
    }
    let channel = ebb_common::client::channel(&config.lifecycle_url, Duration::from_secs(60))
        .map_err(|e| anyhow::anyhow!("lifecycle_url: {e}"))?;
    let lifecycle =
        SchedulingServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    tracing::info!(replica = %owner, lifecycle = %config.lifecycle_url, "scheduler replica starting");

    let mut component = Component::new();
    component.add_metrics_source(Arc::new(gauges::SchedulerMetrics::new(db.clone())));
    component.ask_lifecycle_for_tokens(&config.server, &config.lifecycle_url)?;
    component.add_service(
        SchedulerServiceServer::new(api::SchedulerApi::new(leases.clone(), specs)),
        &db,
    );
    component.spawn(worker::run(leases, lifecycle, Arc::new(config), shutdown));
    Ok(component)
}
