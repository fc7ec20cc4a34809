//! Prometheus metrics: one recorder per process (the `metrics` facade with the Prometheus text
//! renderer), a `GET /metrics` endpoint on its own listener, gRPC call counts and latencies for
//! every server, and gauges read from the database at scrape time by each service's
//! [`MetricsSource`].
//!
//! Gauges that describe the whole deployment (due backlog, outbox backlog, chain heads) are read
//! from the database when Prometheus scrapes, so every replica reports the same value; take
//! `max` over replicas in dashboards. Counters (`*_total`) count what this process did; take
//! `sum`.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
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
    metrics::describe_counter!(
        "ebb_grpc_server_handled_total",
        "gRPC calls answered, by method and status code."
    );
    metrics::describe_histogram!(
        "ebb_grpc_server_handling_seconds",
        metrics::Unit::Seconds,
        "Time from a call's arrival to its response headers, by method."
    );
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

/// Counts and times every call by method and status code.
#[derive(Clone, Debug, Default)]
pub struct MetricsLayer;

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = CallMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallMetrics { inner }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Clone, Debug)]
pub struct CallMetrics<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for CallMetrics<S>
where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = method_label(request.uri().path());
        let started = Instant::now();
        Box::pin(async move {
            let response = inner.call(request).await?;
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or("OK", |code| {
                    crate::error::code_name(tonic::Code::from_i32(code))
                });
            metrics::counter!("ebb_grpc_server_handled_total", "method" => method.clone(), "code" => code)
                .increment(1);
            metrics::histogram!("ebb_grpc_server_handling_seconds", "method" => method)
                .record(started.elapsed().as_secs_f64());
            Ok(response)
        })
    }
}

/// The method path for known RPCs; anything else is one label, so that arbitrary paths cannot
/// grow the number of series.
fn method_label(path: &str) -> String {
    if crate::methods::access_for(path).is_some() || crate::methods::is_public(path) {
        path.to_owned()
    } else {
        "unknown".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paths_share_one_label() {
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/x.Y/Z"), "unknown");
        assert_eq!(
            method_label("/ebb.lifecycle.v1.LifecycleService/Nope"),
            "unknown"
        );
    }

    #[test]
    fn codes_have_their_canonical_names() {
        let name = |n| crate::error::code_name(tonic::Code::from_i32(n));
        assert_eq!(name(5), "NOT_FOUND");
        assert_eq!(name(16), "UNAUTHENTICATED");
        assert_eq!(name(99), "UNKNOWN");
    }

    #[test]
    fn ages_are_never_negative() {
        assert_eq!(age_seconds(None, 10_000), 0.0);
        assert_eq!(age_seconds(Some(4_000), 10_000), 6.0);
        assert_eq!(age_seconds(Some(20_000), 10_000), 0.0);
    }
}
