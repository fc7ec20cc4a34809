//! Prometheus metrics: one recorder per process (the `metrics` facade with the Prometheus text
//! renderer), a `GET /metrics` endpoint on its own listener, gRPC call counts and latencies by
//! the grpc-ecosystem names ([`crate::observe`]), the process collector's `process_*` series
//! and `ebb_build_info` ([`process`]), and gauges read from the database at scrape time by
//! each service's [`MetricsSource`].
//!
//! Gauges that describe the whole deployment (due backlog, outbox backlog, chain heads) are read
//! from the database when Prometheus scrapes, so every replica reports the same value; take
//! `max` over replicas in dashboards. Counters (`*_total`) count what this process did; take
//! `sum`.

pub mod process;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long one source may take to refresh its gauges during a scrape.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);

/// Histogram buckets for latencies in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same handle) and returns its
/// handle; `None` when another recorder was installed first (metrics are then rendered by that
/// one). The application calls it before services register their counters, which a recorder
/// installed later would not see.
pub fn install_recorder() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe_common();
            Some(handle)
        })
        .as_ref()
}

/// The handle of the installed recorder, if [`install_recorder`] installed one.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE.get().and_then(Option::as_ref)
}

fn describe_common() {
    crate::observe::describe();
    crate::coalesce::describe();
    process::describe();
    metrics::describe_counter!(
        "ebb_metrics_refresh_failures_total",
        "Scrapes in which a source could not read its gauges (they keep their last values)."
    );
}

/// Gauges a service reads when Prometheus scrapes (usually from its database).
#[async_trait::async_trait]
pub trait MetricsSource: Send + Sync + 'static {
    /// A short name for logs and the refresh-failure counter.
    fn name(&self) -> &'static str;

    /// Reads the current values and sets the gauges.
    async fn refresh(&self) -> anyhow::Result<()>;
}

/// The `GET /metrics` endpoint on `listener`, bound by the application, until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    sources: Vec<Arc<dyn MetricsSource>>,
    shutdown: CancellationToken,
) {
    let Some(handle) = install_recorder() else {
        tracing::warn!("another metrics recorder is installed: /metrics is not served");
        return;
    };
    let sources = Arc::new(sources);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let sources = sources.clone();
            async move { scrape(handle, &sources).await }
        }),
    );
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "metrics endpoint stopped");
    }
}

async fn scrape(
    handle: &PrometheusHandle,
    sources: &[Arc<dyn MetricsSource>],
) -> ([(http::HeaderName, &'static str); 1], String) {
    let refreshes = sources.iter().map(|source| async move {
        let outcome = tokio::time::timeout(REFRESH_TIMEOUT, source.refresh()).await;
        let error = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("took longer than {REFRESH_TIMEOUT:?}"),
        };
        tracing::warn!(source = source.name(), error = %error, "reading metrics failed");
        metrics::counter!("ebb_metrics_refresh_failures_total", "source" => source.name())
            .increment(1);
    });
    futures::future::join_all(refreshes).await;
    process::collect();
    handle.run_upkeep();
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}

/// Seconds from `oldest` (epoch milliseconds) to `now_ms`; 0 when there is none.
pub fn age_seconds(oldest: Option<i64>, now_ms: i64) -> f64 {
    oldest.map_or(0.0, |t| (now_ms.saturating_sub(t)).max(0) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_never_negative() {
        assert_eq!(age_seconds(None, 10_000), 0.0);
        assert_eq!(age_seconds(Some(4_000), 10_000), 6.0);
        assert_eq!(age_seconds(Some(20_000), 10_000), 0.0);
    }
}
