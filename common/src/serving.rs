//! Serving gRPC: mounting services with health and reflection, readiness, and ordered,
//! graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::db::Db;

type Adder = Box<dyn FnOnce(&mut RoutesBuilder) + Send>;

/// The gRPC services of one or more Ebb services, the databases their readiness depends on,
/// and their background tasks. `ebb serve` merges the components of all four services and
/// serves them on one port.
#[derive(Default)]
pub struct Component {
    adders: Vec<Adder>,
    readiness: Vec<(&'static str, Db)>,
    tasks: Vec<JoinHandle<()>>,
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

    /// Takes over the services and tasks of `other`.
    pub fn merge(&mut self, mut other: Component) {
        self.adders.append(&mut other.adders);
        self.readiness.append(&mut other.readiness);
        self.tasks.append(&mut other.tasks);
    }

    /// Fully-qualified names of the mounted services.
    pub fn service_names(&self) -> Vec<&'static str> {
        self.readiness.iter().map(|(n, _)| *n).collect()
    }
}

/// How often readiness is re-checked.
const READINESS_INTERVAL: Duration = Duration::from_secs(2);

/// Serves `component` on `listener` until `shutdown` is cancelled, then stops accepting,
/// drains in-flight calls (at most `grace`), and waits for background tasks.
pub async fn serve(
    mut component: Component,
    listener: TcpListener,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
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
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ebb_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
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

    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let stop = shutdown.clone();
    let server = tonic::transport::Server::builder()
        .trace_fn(crate::telemetry::server_span)
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

async fn watch_readiness(
    readiness: Vec<(&'static str, Db)>,
    reporter: HealthReporter,
    shutdown: CancellationToken,
) {
    let mut last: Option<bool> = None;
    loop {
        let mut all = true;
        for (name, db) in &readiness {
            let ok = db.ping().await;
            all &= ok;
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status(*name, status).await;
        }
        if last != Some(all) {
            if all {
                tracing::info!("ready: serving");
            } else {
                tracing::warn!("not ready: a database does not answer");
            }
            last = Some(all);
        }
        let overall = if all {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter.set_service_status("", overall).await;
        tokio::select! {
            () = shutdown.cancelled() => {
                for (name, _) in &readiness {
                    reporter.set_service_status(*name, ServingStatus::NotServing).await;
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

/// Connects to the database, retrying with backoff until it answers or shutdown begins.
pub async fn connect_db(url: &str, shutdown: &CancellationToken) -> anyhow::Result<Db> {
    let mut delay = Duration::from_millis(200);
    loop {
        match Db::connect(url, 16).await {
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
