//! Serving a component: health, reflection, the layers, TLS, and ordered, graceful shutdown.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;

use super::component::Component;
use super::limits::LimitsLayer;
use super::observe::ObserveLayer;
use super::readiness::watch_readiness;
use crate::auth::{AuthLayer, Guard, StaticTokens};
use crate::config::ServerConfig;

/// What reflection serves: Ebb's services and messages, health and reflection themselves, and
/// the `google.rpc` error details (`BadRequest`, `ErrorInfo`, …) that statuses carry, so that
/// `grpcurl` can print them.
pub const REFLECTED_DESCRIPTOR_SETS: [&[u8]; 5] = [
    ebb_proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    tonic_types::pb::FILE_DESCRIPTOR_SET,
];

/// Serves `component` on `listener` until `shutdown` is cancelled, then stops accepting,
/// drains in-flight calls (at most `server.shutdown_grace`), and waits for background tasks.
/// Every call but health and reflection is authenticated and authorized; TLS, tokens and
/// limits come from `server`.
pub async fn serve(
    mut component: Component,
    listener: TcpListener,
    shutdown: CancellationToken,
    server: &ServerConfig,
) -> anyhow::Result<()> {
    let grace = server.shutdown_grace;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let names = component.service_names();
    for name in &names {
        reporter
            .set_service_status(*name, ServingStatus::NotServing)
            .await;
    }
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;

    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure();
        for set in REFLECTED_DESCRIPTOR_SETS {
            builder = builder.register_encoded_file_descriptor_set(set);
        }
        builder = builder
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for name in &names {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let mut routes = RoutesBuilder::default();
    routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    for adder in component.adders.drain(..) {
        adder(&mut routes);
    }

    let readiness = std::mem::take(&mut component.readiness);
    let monitor = tokio::spawn(watch_readiness(readiness, reporter, shutdown.clone()));
    let metrics = component.metrics_listener.take().map(|listener| {
        let sources = std::mem::take(&mut component.metrics_sources);
        tokio::spawn(crate::metrics::serve(listener, sources, shutdown.clone()))
    });

    let guard = Guard {
        static_tokens: StaticTokens::new(&server.admin_token, &server.auth.service_token),
        authority: component.authority.take().map(|(_, a)| a),
        resolvers: std::mem::take(&mut component.resolvers),
        denials: std::mem::take(&mut component.denials),
    };
    if server.admin_token.is_empty() && guard.authority.is_none() {
        tracing::warn!("no admin token and no token store: only the service token is accepted");
    }
    let limits = &server.limits;
    let builder = tonic::transport::Server::builder();
    let tls = crate::tls::ServerTls::load(&server.tls)?;
    if let Some(tls) = &tls {
        tokio::spawn(
            tls.clone()
                .watch(crate::tls::RELOAD_INTERVAL, shutdown.clone()),
        );
        tracing::info!(mtls = !server.tls.client_ca_path.is_empty(), "serving TLS");
    }
    let streams =
        u32::try_from(limits.concurrency_per_connection.saturating_mul(2)).unwrap_or(u32::MAX);
    let incoming = super::connections::incoming(listener, limits, tls, shutdown.clone());
    let stop = shutdown.clone();
    let server = builder
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        // HTTP/2 rapid reset (CVE-2023-44487): streams a client opens and cancels at once
        // still count against it.
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_max_local_error_reset_streams(Some(256))
        .concurrency_limit_per_connection(limits.concurrency_per_connection)
        .load_shed(true)
        .max_concurrent_streams(streams)
        .http2_max_header_list_size(64 * 1024)
        // gRPC-Web (HTTP/1.1 too) for browsers, translated to gRPC before anything else looks.
        .accept_http1(true)
        .layer(super::web::cors(&server.grpc_web))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(ObserveLayer)
        .layer(LimitsLayer::new(limits))
        .layer(AuthLayer::new(guard))
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await });
    tokio::pin!(server);

    // Serve until shutdown; then give in-flight calls `grace` to finish.
    tokio::select! {
        result = &mut server => result?,
        () = shutdown.cancelled() => {
            match tokio::time::timeout(grace, &mut server).await {
                Ok(result) => result?,
                Err(_) => tracing::warn!(grace = ?grace, "in-flight calls did not finish in time"),
            }
        }
    }
    monitor.abort();
    if let Some(metrics) = metrics {
        let _ = tokio::time::timeout(Duration::from_secs(1), metrics).await;
    }
    let tasks = std::mem::take(&mut component.tasks);
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    if tokio::time::timeout(grace, futures::future::join_all(tasks))
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop in time");
        aborts.iter().for_each(|a| a.abort());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflection_serves_the_error_details() {
        let mut pool = prost_reflect::DescriptorPool::new();
        for set in REFLECTED_DESCRIPTOR_SETS {
            pool.decode_file_descriptor_set(set)
                .expect("every reflected file and its imports resolve");
        }
        for name in [
            "google.rpc.ErrorInfo",
            "google.rpc.BadRequest",
            "google.rpc.PreconditionFailure",
            "google.rpc.Status",
            "grpc.health.v1.HealthCheckRequest",
        ] {
            assert!(pool.get_message_by_name(name).is_some(), "{name}");
        }
        assert!(
            pool.get_service_by_name("ebb.notifier.v1.NotifierService")
                .is_some()
        );
    }
}
