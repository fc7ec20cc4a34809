//! `ebb serve`: all four services in one process on one port, each with its own SQLite file,
//! calling each other over gRPC exactly as when deployed apart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ebb_common::app::ServiceConfig;
use ebb_common::config::{
    self, ConfigError, GrpcWebConfig, LimitsConfig, MetricsConfig, ServerConfig, TelemetryConfig,
    TlsConfig, Validate,
};
use ebb_common::sealing::EncryptionConfig;
use ebb_common::serving::{self, Component};
use serde::{Deserialize, Serialize};

use crate::console::ConsoleConfig;

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
    /// Address of the Prometheus endpoint, e.g. 127.0.0.1:9460; empty turns it off.
    #[arg(long)]
    #[serde(skip)]
    pub metrics_listen: Option<String>,
    /// Address of the web console, e.g. 127.0.0.1:50080; empty turns it off.
    #[arg(long)]
    #[serde(skip)]
    pub console_listen: Option<String>,
}

/// The flags as configuration overrides.
#[derive(Serialize)]
struct Overrides<'a> {
    #[serde(flatten)]
    args: &'a ServeArgs,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<ebb_common::app::MetricsOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    console: Option<ConsoleOverride>,
}

/// `console.listen` from `--console-listen`.
#[derive(Serialize)]
struct ConsoleOverride {
    listen: String,
}

/// Configuration of `ebb serve`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct ServeConfig {
    /// The one address every service answers on.
    pub listen: SocketAddr,
    /// Where the SQLite files live.
    pub data_dir: PathBuf,
    /// How long in-flight calls may take after Ctrl-C.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_grace: Duration,
    /// Logging and tracing for the whole process.
    pub telemetry: TelemetryConfig,
    /// The bootstrap admin token (`EBB_ADMIN_TOKEN`). Empty: the one kept in the data
    /// directory's `admin-token` file, created (and printed once) on first start.
    pub admin_token: String,
    /// TLS; off by default, as `ebb serve` listens on loopback.
    pub tls: TlsConfig,
    /// Limits every call is held to.
    pub limits: LimitsConfig,
    /// gRPC-Web callers in browsers: which other origins may call (none by default).
    pub grpc_web: GrpcWebConfig,
    /// The one Prometheus endpoint of the process, with every service's metrics.
    pub metrics: MetricsConfig,
    /// The web console, a client of the services with the signed-in caller's token.
    pub console: ConsoleConfig,
    /// The key that seals secrets in the databases (`EBB_ENCRYPTION__KEY`). Empty: the one kept
    /// in the data directory's `encryption-key` file, created on first start; a deployment keeps
    /// its key apart from the data instead.
    pub encryption: EncryptionConfig,
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
            admin_token: String::new(),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            grpc_web: GrpcWebConfig::default(),
            metrics: MetricsConfig {
                listen: "127.0.0.1:9460".into(),
            },
            console: ConsoleConfig::default(),
            encryption: EncryptionConfig::default(),
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
        self.metrics.validate()?;
        self.console.check("console.")?;
        let mut shared = self.lifecycle.server.clone();
        shared.admin_token = self.admin_token.clone();
        shared.tls = self.tls.clone();
        shared.limits = self.limits.clone();
        shared.grpc_web = self.grpc_web.clone();
        shared.validate()?;
        if self.tls.enabled() && self.tls.ca_path.is_empty() {
            return Err(ConfigError::field(
                "tls.ca_path",
                "the services of `ebb serve` call each other over TLS and must trust its CA",
            ));
        }
        // The tokens and peer addresses are wired in at start (`wire`): check each service's
        // settings as they will be run.
        let mut wired = self.clone();
        if wired.encryption.key.is_empty() {
            wired.encryption.key = ebb_common::sealing::generate_key("wired-in-at-start");
        }
        let placeholder = "token-wired-in-at-start";
        wired.wire(self.listen, placeholder, placeholder);
        wired.lifecycle.validate()?;
        wired.scheduler.validate()?;
        wired.notifier.validate()?;
        wired.audit.validate()
    }
}

impl ServiceConfig for ServeConfig {
    fn server(&self) -> &ServerConfig {
        &self.lifecycle.server
    }
}

impl ServeConfig {
    /// Points every service at its own file under the data directory and at `addr` for its
    /// peers, with the admin token and a service token for their calls to each other.
    fn wire(&mut self, addr: SocketAddr, admin_token: &str, service_token: &str) {
        let scheme = if self.tls.enabled() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}");
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
            server.admin_token = admin_token.to_owned();
            server.auth.service_token = service_token.to_owned();
            server.tls = self.tls.clone();
            server.limits = self.limits.clone();
            server.encryption = self.encryption.clone();
            server.grpc_web = self.grpc_web.clone();
            // The process serves one metrics endpoint, not one per service.
            server.metrics.listen = String::new();
        }
        self.scheduler.lifecycle_url = url.clone();
        self.lifecycle.peers(&url);
    }
}

/// Runs `ebb serve` to completion.
pub fn main(args: ServeArgs) -> std::process::ExitCode {
    let overrides = Overrides {
        args: &args,
        metrics: args
            .metrics_listen
            .clone()
            .map(|listen| ebb_common::app::MetricsOverride { listen }),
        console: args
            .console_listen
            .clone()
            .map(|listen| ConsoleOverride { listen }),
    };
    let config = match config::load(&ServeConfig::default(), args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ebb serve: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match crate::cli::server_runtime("serve") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let mut telemetry = match ebb_common::telemetry::init(&config.telemetry, "ebb") {
            Ok(t) => t,
            Err(e) => {
                eprintln!("ebb serve: cannot set up telemetry: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        // Before the services register their counters, which a later recorder would not see.
        ebb_common::metrics::install_recorder();
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
    // The directory holds the databases, the admin token and the encryption key: its owner's
    // only, also when an earlier version created it readable by others.
    ebb_common::private_files::private_dir(&config.data_dir, true).map_err(|e| {
        anyhow::anyhow!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    let metrics = ebb_common::app::bind_metrics(&config.metrics.listen).await?;
    let admin_token = admin_token(&config)?;
    if config.encryption.key.is_empty() {
        config.encryption.key = encryption_key(&config)?;
    }
    // The services of one process call each other with a token that lives as long as it.
    let service_token = ebb_common::auth::new_secret();
    config.wire(addr, &admin_token, &service_token);
    ebb_common::client::install(ebb_common::client::ClientSettings::for_service(
        &config.lifecycle.server,
    ));

    let mut component = Component::new();
    component.merge(audit_svc::build(config.audit.clone(), shutdown.clone()).await?);
    component.merge(notifier_svc::build(config.notifier.clone(), shutdown.clone()).await?);
    component.merge(lifecycle_svc::build(config.lifecycle.clone(), shutdown.clone()).await?);
    component.merge(scheduler_svc::build(config.scheduler.clone(), shutdown.clone()).await?);
    if let Some(metrics) = metrics {
        println!("ebb metrics on http://{}/metrics", metrics.local_addr()?);
        component.set_metrics_listener(metrics);
    }
    if let Some(console) = config.console.bind().await? {
        println!("console on http://{}", console.local_addr()?);
        let scheme = if config.tls.enabled() {
            "https"
        } else {
            "http"
        };
        // The console calls the services on the loopback of the address they listen on.
        let target = match addr.ip() {
            ip if ip.is_unspecified() && addr.is_ipv4() => {
                SocketAddr::from(([127, 0, 0, 1], addr.port()))
            }
            ip if ip.is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
            }
            _ => addr,
        };
        let settings = ebb_common::client::ClientSettings::for_service(&config.lifecycle.server);
        let (console_config, stop) = (config.console.clone(), shutdown.clone());
        tokio::spawn(async move {
            let server = format!("{scheme}://{target}");
            if let Err(e) =
                crate::console::serve(console, &server, &settings, &console_config, stop).await
            {
                tracing::error!(error = %e, "the console stopped");
            }
        });
    }

    if config.tls.enabled() {
        println!("ebb listening on {addr} (TLS)");
    } else {
        println!("ebb listening on {addr} (plaintext, loopback only by default)");
    }
    println!("data directory: {}", config.data_dir.display());
    println!(
        "try: grpcurl -plaintext -H \"authorization: Bearer $(cat {})\" {addr} list",
        config.data_dir.join(ADMIN_TOKEN_FILE).display()
    );
    tracing::info!(%addr, tls = config.tls.enabled(), "ebb serve listening");
    serving::serve(component, listener, shutdown, &config.lifecycle.server).await?;
    tracing::info!("ebb serve stopped");
    Ok(())
}

/// The admin token's file in the data directory.
const ADMIN_TOKEN_FILE: &str = "admin-token";

/// The bootstrap admin token: from the configuration (`EBB_ADMIN_TOKEN`), else the data
/// directory's file, else a new one written there (readable by its owner only) and printed
/// once.
fn admin_token(config: &ServeConfig) -> anyhow::Result<String> {
    let path = config.data_dir.join(ADMIN_TOKEN_FILE);
    if !config.admin_token.is_empty() {
        println!("admin token: from the configuration (EBB_ADMIN_TOKEN)");
        return Ok(config.admin_token.clone());
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim().to_owned();
            if token.len() < 16 {
                anyhow::bail!(
                    "{} holds no valid token; remove it to get a new one",
                    path.display()
                );
            }
            println!("admin token: in {}", path.display());
            return Ok(token);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    }
    let token = ebb_common::auth::new_secret();
    write_private(&path, &token)?;
    println!(
        "admin token (shown once; kept in {}): {token}",
        path.display()
    );
    Ok(token)
}

/// The encryption key's file in the data directory.
const ENCRYPTION_KEY_FILE: &str = "encryption-key";

/// The encryption key when none is configured: the data directory's file, else a new one
/// written there (readable by its owner only). Kept beside the data, it protects copies of the
/// database files, not the directory; a deployment configures `encryption.key` from a secret.
fn encryption_key(config: &ServeConfig) -> anyhow::Result<String> {
    let path = config.data_dir.join(ENCRYPTION_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = text.trim().to_owned();
            ebb_common::sealing::EncryptionConfig {
                key: key.clone(),
                retired_keys: String::new(),
            }
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            println!("encryption key: in {}", path.display());
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = ebb_common::sealing::generate_key(&format!(
                "serve-{}",
                chrono::Utc::now().format("%Y%m%d")
            ));
            write_private(&path, &key)?;
            println!(
                "encryption key: new, in {} (set EBB_ENCRYPTION__KEY to keep it elsewhere)",
                path.display()
            );
            Ok(key)
        }
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    }
}

/// Writes `text` to a new file only its owner can read.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    Ok(())
}
