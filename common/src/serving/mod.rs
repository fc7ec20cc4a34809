//! Serving gRPC: mounting services with health and reflection, authentication, limits, TLS,
//! readiness, and ordered, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tonic::Status;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::auth::{
    AuthLayer, DenialSink, Guard, OrganizationResolver, StaticTokens, TokenAuthority,
};
use crate::config::{LimitsConfig, ServerConfig};
use crate::db::{Db, PoolOptions};
use crate::metrics::{MetricsLayer, MetricsSource};

type Adder = Box<dyn FnOnce(&mut RoutesBuilder) + Send>;

/// The gRPC services of one or more Ebb services, the databases their readiness depends on,
/// and their background tasks. `ebb serve` merges the components of all four services and
/// serves them on one port.
#[derive(Default)]
pub struct Component {
    adders: Vec<Adder>,
    readiness: Vec<(&'static str, Db)>,
    tasks: Vec<JoinHandle<()>>,
    /// Where tokens are looked up; a local store beats asking a peer.
    authority: Option<(Authority, Arc<dyn TokenAuthority>)>,
    resolvers: Vec<Arc<dyn OrganizationResolver>>,
    denials: Vec<Arc<dyn DenialSink>>,
    metrics_sources: Vec<Arc<dyn MetricsSource>>,
    metrics_listener: Option<TcpListener>,
}

/// Whether a token authority reads the token store itself or asks lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Authority {
    /// Asks lifecycle-svc over gRPC.
    Remote,
    /// Reads the token store (lifecycle-svc itself).
    Local,
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component")
            .field(
                "services",
                &self.readiness.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Component {
    /// An empty component.
    pub fn new() -> Self {
        Self::default()
    }

    /// Mounts a generated tonic server; its health follows whether `db` answers.
    pub fn add_service<S>(&mut self, service: S, db: &Db)
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.readiness.push((S::NAME, db.clone()));
        self.adders
            .push(Box::new(move |routes: &mut RoutesBuilder| {
                routes.add_service(service);
            }));
    }

    /// Runs a background task until shutdown; `serve` waits for it after the server drained.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    /// Looks tokens up with `authority`. When components merge (`ebb serve`), a local
    /// authority wins over one that asks a peer.
    pub fn set_authority(&mut self, kind: Authority, authority: Arc<dyn TokenAuthority>) {
        if self.authority.as_ref().is_none_or(|(k, _)| *k <= kind) {
            self.authority = Some((kind, authority));
        }
    }

    /// Checks tokens that are not in the configuration with lifecycle-svc at
    /// `server.auth.lifecycle_url`, or `fallback_url` when that is empty; with neither, only
    /// configured tokens are accepted.
    pub fn ask_lifecycle_for_tokens(
        &mut self,
        server: &ServerConfig,
        fallback_url: &str,
    ) -> anyhow::Result<()> {
        let url = if server.auth.lifecycle_url.is_empty() {
            fallback_url
        } else {
            &server.auth.lifecycle_url
        };
        if url.is_empty() {
            return Ok(());
        }
        let remote = crate::auth::RemoteAuthority::new(url, server.auth.cache_ttl)
            .map_err(|e| anyhow::anyhow!("auth.lifecycle_url: {e}"))?;
        self.set_authority(Authority::Remote, Arc::new(remote));
        Ok(())
    }

    /// Holds organization-bound callers to their organization's resources.
    pub fn add_resolver(&mut self, resolver: Arc<dyn OrganizationResolver>) {
        self.resolvers.push(resolver);
    }

    /// Records refusals in `sink` besides the log.
    pub fn add_denial_sink(&mut self, sink: Arc<dyn DenialSink>) {
        self.denials.push(sink);
    }

    /// Reads gauges from `source` whenever the metrics endpoint is scraped.
    pub fn add_metrics_source(&mut self, source: Arc<dyn MetricsSource>) {
        metrics::counter!("ebb_metrics_refresh_failures_total", "source" => source.name())
            .increment(0);
        self.metrics_sources.push(source);
    }

    /// Serves `GET /metrics` on `listener` alongside the gRPC server.
    pub fn set_metrics_listener(&mut self, listener: TcpListener) {
        self.metrics_listener = Some(listener);
    }

    /// Takes over the services, tasks, metrics and authorization parts of `other`.
    pub fn merge(&mut self, mut other: Component) {
        self.metrics_sources.append(&mut other.metrics_sources);
        if other.metrics_listener.is_some() {
            self.metrics_listener = other.metrics_listener.take();
        }
        self.adders.append(&mut other.adders);
        self.readiness.append(&mut other.readiness);
        self.tasks.append(&mut other.tasks);
        if let Some((kind, authority)) = other.authority.take() {
            self.set_authority(kind, authority);
        }
        self.resolvers.append(&mut other.resolvers);
        self.denials.append(&mut other.denials);
    }

    /// Fully-qualified names of the mounted services.
    pub fn service_names(&self) -> Vec<&'static str> {
        self.readiness.iter().map(|(n, _)| *n).collect()
    }
}

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

/// How often readiness is re-checked.
const READINESS_INTERVAL: Duration = Duration::from_secs(1);

/// How long a readiness ping may take, waiting for a pooled connection included. With the
/// interval, the health status turns NOT_SERVING within about 3 seconds of losing a database
/// and SERVING again within about 1 second of its return.
pub const READINESS_PING_TIMEOUT: Duration = Duration::from_secs(2);

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
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = crate::tls::server_tls(&server.tls)? {
        builder = builder.tls_config(tls)?;
        tracing::info!(mtls = !server.tls.client_ca_path.is_empty(), "serving TLS");
    }
    let streams =
        u32::try_from(limits.concurrency_per_connection.saturating_mul(2)).unwrap_or(u32::MAX);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let stop = shutdown.clone();
    let server = builder
        .concurrency_limit_per_connection(limits.concurrency_per_connection)
        .load_shed(true)
        .max_concurrent_streams(streams)
        .http2_max_header_list_size(64 * 1024)
        .trace_fn(crate::telemetry::server_span)
        .layer(MetricsLayer)
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

/// Keeps the health status of every mounted service, and the overall one (`""`), on whether
/// its database answers. Each distinct database is pinged once per round, all at once, each
/// ping bounded by [`READINESS_PING_TIMEOUT`], so one database that hangs neither delays the
/// verdict on the others nor holds the overall status.
async fn watch_readiness(
    readiness: Vec<(&'static str, Db)>,
    reporter: HealthReporter,
    shutdown: CancellationToken,
) {
    let mut databases: Vec<(Db, Vec<&'static str>, Option<bool>)> = Vec::new();
    for (name, db) in readiness {
        match databases.iter_mut().find(|(d, _, _)| d.same_database(&db)) {
            Some((_, names, _)) => names.push(name),
            None => databases.push((db, vec![name], None)),
        }
    }
    let mut last_overall: Option<bool> = None;
    loop {
        let pings = databases
            .iter()
            .map(|(db, _, _)| db.ping_within(READINESS_PING_TIMEOUT));
        let answers = futures::future::join_all(pings).await;
        let mut all = true;
        for ((db, names, last), ok) in databases.iter_mut().zip(answers) {
            all &= ok;
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in names.iter() {
                reporter.set_service_status(*name, status).await;
            }
            if *last != Some(ok) {
                if ok {
                    tracing::info!(database = %db.redacted_url(), services = ?names, "database answers");
                } else {
                    tracing::warn!(database = %db.redacted_url(), services = ?names, timeout = ?READINESS_PING_TIMEOUT, "database does not answer");
                }
                *last = Some(ok);
            }
        }
        if last_overall != Some(all) {
            if all {
                tracing::info!("ready: serving");
            } else {
                tracing::warn!("not ready: a database does not answer");
            }
            last_overall = Some(all);
        }
        let overall = if all {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter.set_service_status("", overall).await;
        tokio::select! {
            () = shutdown.cancelled() => {
                for (_, names, _) in &databases {
                    for name in names {
                        reporter.set_service_status(*name, ServingStatus::NotServing).await;
                    }
                }
                reporter.set_service_status("", ServingStatus::NotServing).await;
                return;
            }
            () = tokio::time::sleep(READINESS_INTERVAL) => {}
        }
    }
}

/// A token cancelled by the first SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("interrupt received: shutting down"),
            () = term => tracing::info!("SIGTERM received: shutting down"),
        }
        trigger.cancel();
    });
    token
}

/// Binds `addr`, naming it in the error.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Connects to the database with the default pool, retrying with backoff until it answers or
/// shutdown begins. [`connect_database`] also reads the pool settings.
pub async fn connect_db(url: &str, shutdown: &CancellationToken) -> anyhow::Result<Db> {
    connect_pool(url, &PoolOptions::default(), shutdown).await
}

/// Connects to `server.database_url` with the pool of `server.database`, retrying with backoff
/// until it answers or shutdown begins.
pub async fn connect_database(
    server: &ServerConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Db> {
    connect_pool(&server.database_url, &server.database.pool(), shutdown).await
}

async fn connect_pool(
    url: &str,
    pool: &PoolOptions,
    shutdown: &CancellationToken,
) -> anyhow::Result<Db> {
    let mut delay = Duration::from_millis(200);
    loop {
        match Db::connect_with(url, pool).await {
            Ok(db) => return Ok(db),
            Err(e) => {
                tracing::warn!(database = %crate::db::redact(url), error = %e, retry_in = ?delay, "database not reachable");
                tokio::select! {
                    () = shutdown.cancelled() => anyhow::bail!("shut down before the database answered"),
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Holds every call to a deadline (the client's `grpc-timeout` or the configured default,
/// whichever is sooner: DEADLINE_EXCEEDED) and its request to a size (RESOURCE_EXHAUSTED).
#[derive(Clone, Debug)]
pub struct LimitsLayer {
    timeout: Duration,
    max_request_bytes: usize,
}

impl LimitsLayer {
    /// The layer of `limits`.
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            timeout: limits.request_timeout,
            max_request_bytes: limits.max_request_bytes,
        }
    }
}

impl<S> tower::Layer<S> for LimitsLayer {
    type Service = Limits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limits {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service of [`LimitsLayer`].
#[derive(Clone, Debug)]
pub struct Limits<S> {
    layer: LimitsLayer,
    inner: S,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Limits<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map_or(self.layer.timeout, |t| t.min(self.layer.timeout));
        let max = self.layer.max_request_bytes;
        let request = request.map(|body| {
            tonic::body::Body::new(LimitedBody {
                inner: body,
                // A gRPC frame adds 5 bytes to the message.
                left: max + 5,
                max,
            })
        });
        Box::pin(async move {
            match tokio::time::timeout(timeout, inner.call(request)).await {
                Ok(response) => response,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the call did not finish within its deadline of {timeout:?}"
                ))
                .into_http()),
            }
        })
    }
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A request body that fails with RESOURCE_EXHAUSTED past `max` message bytes.
struct LimitedBody {
    inner: tonic::body::Body,
    left: usize,
    max: usize,
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if data.len() > this.left {
                        return Poll::Ready(Some(Err(Box::new(Status::resource_exhausted(
                            format!("the request exceeds {} bytes", this.max),
                        )))));
                    }
                    this.left -= data.len();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::copy_bidirectional;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_server::Health;
    use tonic_health::server::HealthService;

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

    async fn overall(reporter: &HealthReporter) -> i32 {
        HealthService::from_health_reporter(reporter.clone())
            .check(tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            }))
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or_default()
    }

    /// How long until the overall status is `want`, polled every 50 ms for at most `within`.
    async fn time_until(
        reporter: &HealthReporter,
        want: ServingStatus,
        within: Duration,
    ) -> Duration {
        let start = Instant::now();
        while overall(reporter).await != want as i32 {
            assert!(
                start.elapsed() < within,
                "health did not become {want:?} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        start.elapsed()
    }

    /// An address where nothing listens.
    async fn closed_port() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
    }

    #[tokio::test]
    async fn a_database_that_refuses_fails_calls_fast_and_is_not_ready() {
        let addr = closed_port().await;
        let db = Db::connect_lazy(
            &format!("postgres://ebb@{addr}/ebb"),
            &PoolOptions {
                max_connections: 2,
                acquire_timeout: Duration::from_secs(1),
            },
        )
        .await
        .expect("lazy pool");
        let started = Instant::now();
        let err = sea_orm::ConnectionTrait::execute_unprepared(&db.conn, "SELECT 1")
            .await
            .expect_err("nothing listens");
        let error = crate::Error::from(err);
        assert_eq!(error.code(), tonic::Code::Unavailable, "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        assert!(!db.ping_within(READINESS_PING_TIMEOUT).await);

        // A new reporter answers SERVING for the overall status until told otherwise.
        let (reporter, _) = tonic_health::server::health_reporter();
        assert_eq!(overall(&reporter).await, ServingStatus::Serving as i32);
        let shutdown = CancellationToken::new();
        let watcher = tokio::spawn(watch_readiness(
            vec![("ebb.test.v1.TestService", db)],
            reporter.clone(),
            shutdown.clone(),
        ));
        let down = time_until(&reporter, ServingStatus::NotServing, Duration::from_secs(5)).await;
        eprintln!("health: NOT_SERVING {down:?} after watching a database that refuses");
        shutdown.cancel();
        watcher.await.expect("watcher");
    }

    /// What a [`Relay`] does with traffic.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Mode {
        /// Relays.
        Open,
        /// Closes every connection, and new ones at once: a database that went away.
        Cut,
        /// Holds every connection open and silent: a database behind a dead network path.
        Frozen,
    }

    /// A TCP relay to `upstream` whose traffic can be cut or frozen, and restored.
    struct Relay {
        addr: std::net::SocketAddr,
        mode: Arc<tokio::sync::watch::Sender<Mode>>,
    }

    impl Relay {
        async fn start(upstream: String) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let mode = Arc::new(tokio::sync::watch::channel(Mode::Open).0);
            let modes = mode.clone();
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    tokio::spawn(relay(inbound, upstream.clone(), modes.subscribe()));
                }
            });
            Self { addr, mode }
        }

        fn set(&self, mode: Mode) {
            self.mode.send_replace(mode);
        }
    }

    async fn relay(
        mut inbound: tokio::net::TcpStream,
        upstream: String,
        mut mode: tokio::sync::watch::Receiver<Mode>,
    ) {
        let current = *mode.borrow_and_update();
        if current == Mode::Open
            && let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await
        {
            tokio::select! {
                _ = copy_bidirectional(&mut inbound, &mut outbound) => return,
                _ = mode.wait_for(|m| *m != Mode::Open) => {}
            }
            // Frozen: keep both ends open and silent until the mode changes again.
            let _ = mode.wait_for(|m| *m != Mode::Frozen).await;
            return;
        }
        if current == Mode::Frozen {
            let _ = mode.wait_for(|m| *m != Mode::Frozen).await;
        }
    }

    /// The host and port of a database URL.
    fn host_port(url: &str) -> String {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        rest[..end].to_owned()
    }

    #[tokio::test]
    async fn readiness_follows_a_database_that_goes_and_comes_back() {
        let Some(server) = std::env::var("EBB_TEST_DATABASE_URL")
            .ok()
            .filter(|u| u.starts_with("postgres"))
        else {
            eprintln!("skipping: EBB_TEST_DATABASE_URL is not set");
            return;
        };
        let upstream = host_port(&server);
        let relay = Relay::start(upstream.clone()).await;
        let url = server.replacen(&upstream, &relay.addr.to_string(), 1);
        let db = Db::connect_with(
            &url,
            &PoolOptions {
                max_connections: 4,
                acquire_timeout: crate::db::DEFAULT_ACQUIRE_TIMEOUT,
            },
        )
        .await
        .expect("connect through the relay");
        let (reporter, _) = tonic_health::server::health_reporter();
        let shutdown = CancellationToken::new();
        let watcher = tokio::spawn(watch_readiness(
            vec![
                ("ebb.test.v1.OneService", db.clone()),
                ("ebb.test.v1.OtherService", db.clone()),
            ],
            reporter.clone(),
            shutdown.clone(),
        ));
        let limit = Duration::from_secs(5);
        time_until(&reporter, ServingStatus::Serving, limit).await;

        // The database goes away: connections close, new ones are refused.
        relay.set(Mode::Cut);
        let cut_down = time_until(&reporter, ServingStatus::NotServing, limit).await;
        let started = Instant::now();
        let err = sea_orm::ConnectionTrait::execute_unprepared(&db.conn, "SELECT 1")
            .await
            .expect_err("the database is cut off");
        let cut_call = started.elapsed();
        assert_eq!(crate::Error::from(err).code(), tonic::Code::Unavailable);
        relay.set(Mode::Open);
        let cut_up = time_until(&reporter, ServingStatus::Serving, limit).await;

        // The network path dies: connections stay open and nothing answers.
        relay.set(Mode::Frozen);
        let frozen_down = time_until(&reporter, ServingStatus::NotServing, limit).await;
        let started = Instant::now();
        let err = sea_orm::ConnectionTrait::execute_unprepared(&db.conn, "SELECT 1")
            .await
            .expect_err("the database is silent");
        let frozen_call = started.elapsed();
        assert_eq!(crate::Error::from(err).code(), tonic::Code::Unavailable);
        assert!(frozen_call <= crate::db::DEFAULT_ACQUIRE_TIMEOUT + Duration::from_secs(1));
        relay.set(Mode::Open);
        let frozen_up = time_until(&reporter, ServingStatus::Serving, limit).await;
        eprintln!(
            "health after a cut: NOT_SERVING in {cut_down:?}, SERVING in {cut_up:?} after the \
             return, a call failed UNAVAILABLE in {cut_call:?}; after a freeze: NOT_SERVING in \
             {frozen_down:?}, SERVING in {frozen_up:?}, a call failed UNAVAILABLE in \
             {frozen_call:?}"
        );
        shutdown.cancel();
        watcher.await.expect("watcher");
    }
}
