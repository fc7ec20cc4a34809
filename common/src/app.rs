//! The shape every service binary shares: flags → layered config → telemetry → bind → build →
//! serve until a signal, then flush telemetry.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{self, LogFormat, ServerConfig, Validate};
use crate::serving::{self, Component};

/// Flags every service binary takes; they override file and environment values.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct ServerFlags {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "EBB_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:50061.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Database URL: sqlite://FILE?mode=rwc or postgres://USER@HOST/DB.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Log format.
    #[arg(long, value_enum)]
    #[serde(skip)]
    pub log_format: Option<LogFormat>,
    /// Address of the Prometheus endpoint, e.g. 0.0.0.0:9461; empty turns it off.
    #[arg(long)]
    #[serde(skip)]
    pub metrics_listen: Option<String>,
}

#[derive(Serialize)]
struct Overrides<'a> {
    #[serde(flatten)]
    flags: &'a ServerFlags,
    #[serde(skip_serializing_if = "Option::is_none")]
    telemetry: Option<TelemetryOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<MetricsOverride>,
}

/// `metrics.listen` from `--metrics-listen`.
#[derive(Serialize)]
pub struct MetricsOverride {
    /// The address, or empty for none.
    pub listen: String,
}

#[derive(Serialize)]
struct TelemetryOverride {
    log_format: LogFormat,
}

/// A service's configuration: its own settings around the shared server settings.
pub trait ServiceConfig: Serialize + DeserializeOwned + Validate + Send + 'static {
    /// The shared server settings.
    fn server(&self) -> &ServerConfig;
}

/// Runs a service binary to completion and maps the outcome to an exit code: 0 after a clean
/// shutdown, 2 for a configuration refusal, 1 for any other failure.
pub fn main<C, B, F>(name: &'static str, defaults: C, flags: ServerFlags, build: B) -> ExitCode
where
    C: ServiceConfig,
    B: FnOnce(C, CancellationToken) -> F,
    F: Future<Output = anyhow::Result<Component>>,
{
    let overrides = Overrides {
        flags: &flags,
        telemetry: flags
            .log_format
            .map(|log_format| TelemetryOverride { log_format }),
        metrics: flags
            .metrics_listen
            .clone()
            .map(|listen| MetricsOverride { listen }),
    };
    let config = match config::load(&defaults, flags.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut telemetry = match crate::telemetry::init(&config.server().telemetry, name) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{name}: cannot set up telemetry: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Before the service registers its counters, which a later recorder would not see.
        crate::metrics::install_recorder();
        let result = run(name, config, build).await;
        telemetry.shutdown();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "{name} failed");
                eprintln!("{name}: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn run<C, B, F>(name: &'static str, config: C, build: B) -> anyhow::Result<()>
where
    C: ServiceConfig,
    B: FnOnce(C, CancellationToken) -> F,
    F: Future<Output = anyhow::Result<Component>>,
{
    let shutdown = serving::shutdown_on_signals();
    let server = config.server().clone();
    let listener = serving::bind(server.listen).await?;
    let addr = listener.local_addr()?;
    let metrics = bind_metrics(&server.metrics.listen).await?;
    crate::client::install(crate::client::ClientSettings::for_service(&server));
    let mut component = build(config, shutdown.clone()).await?;
    if let Some(metrics) = metrics {
        // Printed before the gRPC line, which the harness and scripts wait for.
        println!("{name} metrics on http://{}/metrics", metrics.local_addr()?);
        component.set_metrics_listener(metrics);
    }
    // The harness and scripts read this line to find a port chosen by the OS (`--listen :0`).
    let scheme = if server.tls.enabled() {
        "https"
    } else {
        "http"
    };
    println!("{name} listening on {addr} ({scheme})");
    tracing::info!(%addr, service = name, "listening");
    serving::serve(component, listener, shutdown, &server).await?;
    tracing::info!(service = name, "stopped");
    Ok(())
}

/// Binds the Prometheus endpoint's listener of `listen` (`metrics.listen`); `None` when it is
/// empty.
pub async fn bind_metrics(listen: &str) -> anyhow::Result<Option<TcpListener>> {
    if listen.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| anyhow::anyhow!("metrics.listen: {listen:?} is not an address: {e}"))?;
    let listener = serving::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics.listen: {e}"))?;
    Ok(Some(listener))
}
