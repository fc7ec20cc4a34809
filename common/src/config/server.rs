//! The settings every service shares: listen address, database, tokens, TLS, limits,
//! metrics and telemetry, each with its checks.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Validate};
use crate::sealing::EncryptionConfig;
/// Settings every service shares.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct ServerConfig {
    /// Address the gRPC server binds.
    pub listen: SocketAddr,
    /// `sqlite://path?mode=rwc` or `postgres://user@host/db`.
    pub database_url: String,
    /// The connection pool of `database_url`.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// How long in-flight calls may take to finish after a shutdown signal.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_grace: Duration,
    /// Logging and tracing.
    pub telemetry: TelemetryConfig,
    /// The bootstrap admin token (`EBB_ADMIN_TOKEN`): acts as admin of every organization.
    /// Empty: only tokens of lifecycle's store (and the service token) are accepted.
    #[serde(default)]
    pub admin_token: String,
    /// Tokens: the service token this service presents and where other tokens are checked.
    #[serde(default)]
    pub auth: AuthConfig,
    /// TLS of the server and of this service's own clients.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Limits every call is held to.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The keys that seal secrets kept in the database (lifecycle-svc and notifier-svc).
    #[serde(default)]
    pub encryption: EncryptionConfig,
    /// gRPC-Web callers (browsers): which other origins may call.
    #[serde(default)]
    pub grpc_web: GrpcWebConfig,
}

/// gRPC-Web is always served; cross-origin calls only from these origins (`EBB_GRPC_WEB__*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcWebConfig {
    /// Origins (`https://console.example.com`) whose pages may call this server from a browser
    /// (CORS). Empty: none, only same-origin and non-browser callers.
    pub allowed_origins: Vec<String>,
}

/// The connection pool (`EBB_DATABASE__ACQUIRE_TIMEOUT=2s`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(default)]
pub struct DatabaseConfig {
    /// Most connections open at once (SQLite always uses one).
    pub max_connections: u32,
    /// How long a call waits for a PostgreSQL connection before it fails with UNAVAILABLE,
    /// so that calls fail fast while the database is away. SQLite waits at least 30s: its one
    /// connection is the writers' queue.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub acquire_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        let pool = crate::db::PoolOptions::default();
        Self {
            max_connections: pool.max_connections,
            acquire_timeout: pool.acquire_timeout,
        }
    }
}

impl DatabaseConfig {
    /// The pool these settings describe.
    pub fn pool(&self) -> crate::db::PoolOptions {
        crate::db::PoolOptions {
            max_connections: self.max_connections,
            acquire_timeout: self.acquire_timeout,
        }
    }
}

impl Validate for DatabaseConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1000).contains(&self.max_connections) {
            return Err(ConfigError::field(
                "database.max_connections",
                "must be between 1 and 1000",
            ));
        }
        if self.acquire_timeout < Duration::from_millis(100)
            || self.acquire_timeout > Duration::from_secs(60)
        {
            return Err(ConfigError::field(
                "database.acquire_timeout",
                "must be between 100ms and 60s",
            ));
        }
        Ok(())
    }
}

/// The Prometheus endpoint: `GET /metrics` over plain HTTP on its own address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, schemars::JsonSchema)]
#[serde(default)]
pub struct MetricsConfig {
    /// Address of the endpoint, such as `0.0.0.0:9461`; empty turns it off. It carries counts
    /// and organization ids but no secrets; keep it on a network only the scraper reaches.
    pub listen: String,
}

impl Validate for MetricsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen.is_empty() {
            self.listen.parse::<SocketAddr>().map_err(|e| {
                ConfigError::field(
                    "metrics.listen",
                    format!(
                        "{e}: expected HOST:PORT such as 0.0.0.0:9461, or empty to turn it off"
                    ),
                )
            })?;
        }
        Ok(())
    }
}

/// How tokens are checked and presented.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(default)]
pub struct AuthConfig {
    /// The token this service presents to its peers (`EBB_AUTH__SERVICE_TOKEN`), and accepts
    /// as a service token. Empty: the admin token is presented instead.
    pub service_token: String,
    /// lifecycle-svc's address for checking tokens this service does not know from its
    /// configuration. Empty on lifecycle (it reads its own store) and where only configured
    /// tokens should work; scheduler-svc falls back to its `lifecycle_url`.
    pub lifecycle_url: String,
    /// How long a token checked once is trusted without checking it again (at most 2s): other
    /// services trust lifecycle's answer, lifecycle its own store's (0s: read it on every
    /// call). A revocation is effective everywhere within that time, at once on the lifecycle
    /// replica that revokes.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub cache_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            service_token: String::new(),
            lifecycle_url: String::new(),
            cache_ttl: Duration::from_secs(1),
        }
    }
}

/// TLS settings. With `cert_path` and `key_path` the server speaks only TLS; with
/// `client_ca_path` too, it requires client certificates signed by that CA (mTLS).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, schemars::JsonSchema)]
#[serde(default)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert_path: String,
    /// PEM private key of the server.
    pub key_path: String,
    /// PEM CA bundle that client certificates must chain to; empty: no client certificates.
    pub client_ca_path: String,
    /// PEM CA bundle this service's clients trust for `https://` peers.
    pub ca_path: String,
    /// PEM certificate this service's clients present to peers that require mTLS.
    pub client_cert_path: String,
    /// PEM key of `client_cert_path`.
    pub client_key_path: String,
}

impl TlsConfig {
    /// Whether the server speaks TLS.
    pub fn enabled(&self) -> bool {
        !self.cert_path.is_empty()
    }
}

/// Limits of every call, each answered with a status rather than a dropped connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(default)]
pub struct LimitsConfig {
    /// Largest request message in bytes; larger ones answer RESOURCE_EXHAUSTED.
    pub max_request_bytes: usize,
    /// Deadline of a call the client gave none (or a longer one); DEADLINE_EXCEEDED after.
    /// Must exceed the longest long-poll (60s).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// Calls in flight on one connection; more answer RESOURCE_EXHAUSTED.
    pub concurrency_per_connection: usize,
    /// Connections open at once; more are closed as soon as they are accepted. Keep it below
    /// the process's open-file limit.
    pub max_connections: usize,
    /// How long a new connection may take to send the whole HTTP/2 preface (in plaintext) or to
    /// finish its TLS handshake before it is closed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// How often the server pings an HTTP/2 connection.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub keepalive_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(90),
            concurrency_per_connection: 256,
            max_connections: 1000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

impl ServerConfig {
    /// Defaults for a service listening on `listen` with its own SQLite file and its metrics
    /// on `metrics_listen`.
    pub fn with_defaults(listen: SocketAddr, sqlite_file: &str, metrics_listen: &str) -> Self {
        Self {
            listen,
            database_url: format!("sqlite://{sqlite_file}?mode=rwc"),
            database: DatabaseConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            telemetry: TelemetryConfig::default(),
            admin_token: String::new(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            metrics: MetricsConfig {
                listen: metrics_listen.to_owned(),
            },
            encryption: Default::default(),
            grpc_web: GrpcWebConfig::default(),
        }
    }

    /// The token this service presents to its peers: the service token, else the admin token.
    pub fn outgoing_token(&self) -> &str {
        if self.auth.service_token.is_empty() {
            &self.admin_token
        } else {
            &self.auth.service_token
        }
    }

    /// Refuses a configuration without a token to present to peers (`auth.service_token`,
    /// else `admin_token`): every call this service makes to `peer` would be refused.
    pub fn require_outgoing_token(&self, service: &str, peer: &str) -> Result<(), ConfigError> {
        if self.outgoing_token().is_empty() {
            return Err(ConfigError::field(
                "auth.service_token",
                format!(
                    "is required: {service} presents it to {peer} (EBB_AUTH__SERVICE_TOKEN; \
                     give every service the same one)"
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a configuration that accepts no service token: lifecycle's outbox relay could
    /// never deliver to this service.
    pub fn require_service_token(&self, service: &str) -> Result<(), ConfigError> {
        if self.auth.service_token.is_empty() && self.admin_token.is_empty() {
            return Err(ConfigError::field(
                "auth.service_token",
                format!(
                    "is required: lifecycle-svc's outbox relay presents it to {service} \
                     (EBB_AUTH__SERVICE_TOKEN; give every service the same one)"
                ),
            ));
        }
        Ok(())
    }
}

fn check_token(field: &str, token: &str) -> Result<(), ConfigError> {
    if !token.is_empty()
        && (token.len() < 16 || token.len() > 512 || !token.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(ConfigError::field(
            field,
            "must be 16 to 512 printable characters without spaces",
        ));
    }
    Ok(())
}

impl Validate for ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        crate::db::validate_url(&self.database_url)
            .map_err(|e| ConfigError::field("database_url", e))?;
        self.database.validate()?;
        if self.shutdown_grace.is_zero() || self.shutdown_grace > Duration::from_secs(300) {
            return Err(ConfigError::field(
                "shutdown_grace",
                "must be between 1ms and 5m",
            ));
        }
        check_token("admin_token", &self.admin_token)?;
        check_token("auth.service_token", &self.auth.service_token)?;
        self.encryption.validate()?;
        crate::serving::web::validate(&self.grpc_web)?;
        let url = &self.auth.lifecycle_url;
        if !url.is_empty() && !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(ConfigError::field(
                "auth.lifecycle_url",
                "must be an http:// or https:// URL",
            ));
        }
        if self.auth.cache_ttl > Duration::from_secs(2) {
            return Err(ConfigError::field(
                "auth.cache_ttl",
                "must be at most 2s so that revocations take effect at once",
            ));
        }
        let tls = &self.tls;
        if tls.cert_path.is_empty() != tls.key_path.is_empty() {
            return Err(ConfigError::field(
                "tls.key_path",
                "tls.cert_path and tls.key_path go together",
            ));
        }
        if !tls.client_ca_path.is_empty() && tls.cert_path.is_empty() {
            return Err(ConfigError::field(
                "tls.client_ca_path",
                "needs tls.cert_path and tls.key_path",
            ));
        }
        if tls.client_cert_path.is_empty() != tls.client_key_path.is_empty() {
            return Err(ConfigError::field(
                "tls.client_key_path",
                "tls.client_cert_path and tls.client_key_path go together",
            ));
        }
        for (field, path) in [
            ("tls.cert_path", &tls.cert_path),
            ("tls.key_path", &tls.key_path),
            ("tls.client_ca_path", &tls.client_ca_path),
            ("tls.ca_path", &tls.ca_path),
            ("tls.client_cert_path", &tls.client_cert_path),
            ("tls.client_key_path", &tls.client_key_path),
        ] {
            if !path.is_empty() && !Path::new(path).is_file() {
                return Err(ConfigError::field(
                    field,
                    format!("{path} is not a readable file"),
                ));
            }
        }
        let limits = &self.limits;
        if !(1024..=4 * 1024 * 1024).contains(&limits.max_request_bytes) {
            return Err(ConfigError::field(
                "limits.max_request_bytes",
                "must be between 1 KiB and 4 MiB",
            ));
        }
        if limits.request_timeout < Duration::from_secs(61)
            || limits.request_timeout > Duration::from_secs(3600)
        {
            return Err(ConfigError::field(
                "limits.request_timeout",
                "must be between 61s (above the longest long-poll) and 1h",
            ));
        }
        if !(1..=100_000).contains(&limits.max_connections) {
            return Err(ConfigError::field(
                "limits.max_connections",
                "must be between 1 and 100000",
            ));
        }
        for (field, value, min, max) in [
            (
                "limits.handshake_timeout",
                limits.handshake_timeout,
                100,
                300_000,
            ),
            (
                "limits.idle_timeout",
                limits.idle_timeout,
                1_000,
                86_400_000,
            ),
            (
                "limits.keepalive_interval",
                limits.keepalive_interval,
                1_000,
                3_600_000,
            ),
            (
                "limits.keepalive_timeout",
                limits.keepalive_timeout,
                1_000,
                600_000,
            ),
        ] {
            let ms = value.as_millis();
            if ms < min || ms > max {
                return Err(ConfigError::field(
                    field,
                    format!(
                        "must be between {:?} and {:?}",
                        Duration::from_millis(min as u64),
                        Duration::from_millis(max as u64)
                    ),
                ));
            }
        }
        if !(1..=10_000).contains(&limits.concurrency_per_connection) {
            return Err(ConfigError::field(
                "limits.concurrency_per_connection",
                "must be between 1 and 10000",
            ));
        }
        self.metrics.validate()?;
        self.telemetry.validate()
    }
}

/// Log format.
#[derive(
    Debug,
    Clone,
    Copy,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Logging and OpenTelemetry export.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(default)]
pub struct TelemetryConfig {
    /// An `EnvFilter` directive such as `info,sea_orm=warn`. `RUST_LOG` wins when set.
    pub log_filter: String,
    /// `pretty` or `json`.
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint such as `http://127.0.0.1:4317`; empty disables export.
    pub otlp_endpoint: String,
    /// The `service.name` resource attribute; defaults to the binary's name.
    pub service_name: String,
    /// Share of traces started here that are exported, from 0 to 1 (parent-based: a call that
    /// arrives with a sampled `traceparent` follows its caller's decision).
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_filter: "info,sqlx=warn,sea_orm=warn,h2=warn,tower=warn,hyper=warn".into(),
            log_format: LogFormat::Pretty,
            otlp_endpoint: String::new(),
            service_name: String::new(),
            sample_ratio: 1.0,
        }
    }
}

impl Validate for TelemetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::try_new(&self.log_filter)
            .map_err(|e| ConfigError::field("telemetry.log_filter", e))?;
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::field(
                "telemetry.sample_ratio",
                format!("is {}: expected a share from 0 to 1", self.sample_ratio),
            ));
        }
        if !self.otlp_endpoint.is_empty() {
            let uri: http::Uri = self
                .otlp_endpoint
                .parse()
                .map_err(|e| ConfigError::field("telemetry.otlp_endpoint", e))?;
            if uri.scheme().is_none() || uri.host().is_none() {
                return Err(ConfigError::field(
                    "telemetry.otlp_endpoint",
                    "must be an absolute URL such as http://127.0.0.1:4317",
                ));
            }
        }
        Ok(())
    }
}
