//! `ebb serve`: all four services in one process on one port, each with its own SQLite file,
//! calling each other over gRPC exactly as when deployed apart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ebb_common::app::ServiceConfig;
use ebb_common::config::{self, ConfigError, ServerConfig, TelemetryConfig, Validate};
use ebb_common::serving::{self, Component};
use serde::{Deserialize, Serialize};

/// Flags of `ebb serve`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ServeArgs {
    /// TOML configuration file with optional [lifecycle], [scheduler], [notifier], [audit]
    /// sections.
    #[arg(long, short = 'c', env = "EBB_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Directory holding one SQLite file per service.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

/// Configuration of `ebb serve`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServeConfig {
    /// The one address every service answers on.
    pub listen: SocketAddr,
    /// Where the SQLite files live.
    pub data_dir: PathBuf,
    /// How long in-flight calls may take after Ctrl-C.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Logging and tracing for the whole process.
    pub telemetry: TelemetryConfig,
    /// lifecycle-svc settings (its address and database are set by `ebb serve`).
    pub lifecycle: lifecycle_svc::Config,
    /// scheduler-svc settings.
    pub scheduler: scheduler_svc::Config,
    /// notifier-svc settings.
    pub notifier: notifier_svc::Config,
    /// audit-svc settings.
    pub audit: audit_svc::Config,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("ebb-data"),
            shutdown_grace: Duration::from_secs(10),
            telemetry: TelemetryConfig::default(),
            lifecycle: lifecycle_svc::Config::default(),
            scheduler: scheduler_svc::Config::default(),
            notifier: notifier_svc::Config::default(),
            audit: audit_svc::Config::default(),
        }
    }
}

impl Validate for ServeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::field("data_dir", "must not be empty"));
        }
        self.telemetry.validate()?;
        self.lifecycle.validate()?;
        self.scheduler.validate()?;
        self.notifier.validate()?;
        self.audit.validate()
    }
}

impl ServiceConfig for ServeConfig {
    fn server(&self) -> &ServerConfig {
        &self.lifecycle.server
    }
}

impl ServeConfig {
    /// Points every service at its own file under the data directory and at `addr` for its
    /// peers.
    fn wire(&mut self, addr: SocketAddr) {
        let url = format!("http://{addr}");
        let sqlite = |name: &str| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join(format!("{name}.db")).display()
            )
        };
        let (l, s, n, a) = (
            sqlite("lifecycle"),
            sqlite("scheduler"),
            sqlite("notifier"),
            sqlite("audit"),
        );
        for (server, db) in [
            (&mut self.lifecycle.server, l),
            (&mut self.scheduler.server, s),
            (&mut self.notifier.server, n),
            (&mut self.audit.server, a),
        ] {
            server.listen = addr;
            server.database_url = db;
            server.telemetry = self.telemetry.clone();
            server.shutdown_grace = self.shutdown_grace;
        }
        self.scheduler.lifecycle_url = url.clone();
        self.lifecycle.peers(&url);
    }
}

/// Runs `ebb serve` to completion.
pub fn main(args: ServeArgs) -> std::process::ExitCode {
    let config = match config::load(&ServeConfig::default(), args.config.as_deref(), &args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ebb serve: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ebb serve: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut telemetry = match ebb_common::telemetry::init(&config.telemetry, "ebb") {
            Ok(t) => t,
            Err(e) => {
                eprintln!("ebb serve: cannot set up telemetry: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let result = run(config).await;
        telemetry.shutdown();
        match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ebb serve: {e:#}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

async fn run(mut config: ServeConfig) -> anyhow::Result<()> {
    let shutdown = serving::shutdown_on_signals();
    let listener = serving::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    config.wire(addr);

    let mut component = Component::new();
    component.merge(audit_svc::build(config.audit.clone(), shutdown.clone()).await?);
    component.merge(notifier_svc::build(config.notifier.clone(), shutdown.clone()).await?);
    component.merge(lifecycle_svc::build(config.lifecycle.clone(), shutdown.clone()).await?);
    component.merge(scheduler_svc::build(config.scheduler.clone(), shutdown.clone()).await?);

    println!("ebb listening on {addr} (plaintext, loopback only by default)");
    println!("data directory: {}", config.data_dir.display());
    println!("try: grpcurl -plaintext {addr} list");
    tracing::info!(%addr, "ebb serve listening");
    serving::serve(component, listener, shutdown, config.shutdown_grace).await?;
    tracing::info!("ebb serve stopped");
    Ok(())
}
