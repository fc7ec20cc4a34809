//! lifecycle-svc: the source of truth for organizations, projects, workspaces, state versions,
//! runs and auto-destroy schedules, with a transactional outbox of domain events.

mod actor;
mod api;
mod approval;
mod auth;
mod auto_destroy;
pub mod config;
mod core;
mod deprovision;
mod events;
mod finish;
mod gauges;
mod migrations;
mod runs;
#[cfg(test)]
mod safety_model;
mod secrets;
mod snooze;
mod store;
mod tenancy;
#[cfg(test)]
mod testing;
mod timing;
mod token_cache;
mod workspaces;

use std::sync::Arc;

use ebb_common::serving::{self, Component};
use ebb_proto::lifecycle::v1::deprovision_service_server::DeprovisionServiceServer;
use ebb_proto::lifecycle::v1::lifecycle_service_server::LifecycleServiceServer;
use ebb_proto::lifecycle::v1::runner_service_server::RunnerServiceServer;
use ebb_proto::lifecycle::v1::scheduling_service_server::SchedulingServiceServer;
use ebb_proto::lifecycle::v1::token_service_server::TokenServiceServer;
use tokio_util::sync::CancellationToken;

pub use config::Config;
/// The catalog document, whose JSON Schema `ebb reference catalog-schema` prints.
pub use deprovision::catalog::Catalog;

/// What the benchmarks measure from inside: one outbox relay round and the outbox pruning.
#[doc(hidden)]
pub mod bench {
    pub use crate::events::relay::{probe as relay_probe, prune as outbox_prune};
}

/// Connects, migrates and assembles the service.
pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Component> {
    let db = serving::connect_database(&config.server, &shutdown).await?;
    db.migrate::<migrations::Migrator>().await?;
    let relay = events::relay::run(&config, db.clone(), shutdown.clone());
    let mut component = Component::new();
    let configured = ebb_common::auth::StaticTokens::new(
        &config.server.admin_token,
        &config.server.auth.service_token,
    );
    if !config.catalog_file.is_empty() {
        load_catalog_file(&db, &config.catalog_file).await?;
    }
    let keys = ebb_common::sealing::Keyring::from_config(&config.server.encryption)?
        .ok_or_else(|| anyhow::anyhow!("encryption.key is required"))?;
    let secret = deprovision::webhooks::callback_secret(&db.conn, &keys).await?;
    let snooze_server = if config.snooze.listen.is_empty() {
        None
    } else {
        let listener = snooze::http::bind(&config.snooze.listen).await?;
        let base = if config.snooze.public_url.is_empty() {
            format!("http://{}", listener.local_addr()?)
        } else {
            config.snooze.public_url.clone()
        };
        let key = secrets::shared_key(&db.conn, &keys, "snooze_links").await?;
        Some((listener, timing::snooze_links::Links::new(key, &base), base))
    };
    let gauges = Arc::new(gauges::LifecycleMetrics::new(db.clone(), &config));
    let mut core = core::Lifecycle::new(db.clone(), config).with_callback_secret(secret);
    if let Some((listener, links, base)) = snooze_server {
        core = core.with_snooze_links(links.clone());
        tracing::info!(url = %base, "snooze links on {base}/v1/snooze/");
        component.spawn(snooze::http::serve(
            listener,
            core.clone(),
            links,
            shutdown.clone(),
        ));
    }
    component.spawn(relay);
    component.spawn(ebb_common::idempotency::sweep_periodically(
        db.clone(),
        core.config.idempotency.clone(),
        shutdown.clone(),
    ));
    component.add_metrics_source(gauges);
    component.set_authority(
        serving::Authority::Local,
        Arc::new(auth::LocalAuthority::new(db.clone(), core.tokens.clone())),
    );
    component.add_resolver(Arc::new(auth::resolver(db.clone())));
    component.add_denial_sink(auth::DeniedEvents::new(
        core.clone(),
        core.config.denied_events_window,
    ));
    component.add_service(
        TokenServiceServer::new(api::TokenApi::new(core.clone(), configured)),
        &db,
    );
    component.add_service(
        LifecycleServiceServer::new(api::LifecycleApi::new(core.clone())),
        &db,
    );
    component.add_service(
        RunnerServiceServer::new(api::RunnerApi::new(core.clone())),
        &db,
    );
    component.add_service(
        DeprovisionServiceServer::new(api::DeprovisionApi::new(core.clone())),
        &db,
    );
    component.spawn(deprovision::webhooks::run(core.clone(), shutdown.clone()));
    if deprovision::progress::may_queue(core.db.backend()) {
        component.spawn(deprovision::settling::run(core.clone(), shutdown.clone()));
    }
    component.add_service(
        SchedulingServiceServer::new(api::SchedulingApi::new(core)),
        &db,
    );
    Ok(component)
}

/// Loads the catalog file; a bad catalog stops the service naming the file, path and reason.
async fn load_catalog_file(db: &ebb_common::db::Db, path: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("catalog {path}: {e}"))?;
    let catalog =
        deprovision::catalog::parse(&text).map_err(|e| anyhow::anyhow!("catalog {path}: {e}"))?;
    deprovision::catalog::store(&db.conn, &catalog, "file", ebb_common::time::now_ms())
        .await
        .map_err(|e| anyhow::anyhow!("catalog {path}: {e}"))?;
    tracing::info!(
        catalog = path,
        kinds = catalog.kinds.len(),
        "catalog loaded"
    );
    Ok(())
}
