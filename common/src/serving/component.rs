//! What a server serves: services, the databases their health follows, tasks, auth, metrics.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;

use crate::auth::{DenialSink, OrganizationResolver, TokenAuthority};
use crate::config::ServerConfig;
use crate::db::Db;
use crate::metrics::MetricsSource;

type Adder = Box<dyn FnOnce(&mut RoutesBuilder) + Send>;

/// The gRPC services of one or more Ebb services, the databases their readiness depends on,
/// and their background tasks. `ebb serve` merges the components of all four services and
/// serves them on one port.
#[derive(Default)]
pub struct Component {
    pub(super) adders: Vec<Adder>,
    pub(super) readiness: Vec<(&'static str, Db)>,
    pub(super) tasks: Vec<JoinHandle<()>>,
    /// Where tokens are looked up; a local store beats asking a peer.
    pub(super) authority: Option<(Authority, Arc<dyn TokenAuthority>)>,
    pub(super) resolvers: Vec<Arc<dyn OrganizationResolver>>,
    pub(super) denials: Vec<Arc<dyn DenialSink>>,
    pub(super) metrics_sources: Vec<Arc<dyn MetricsSource>>,
    pub(super) metrics_listener: Option<TcpListener>,
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
