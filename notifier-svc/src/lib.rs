//! notifier-svc: notification configurations, matching events to them, and delivering them
//! (signed webhooks, Slack, email, Teams) with retries, an attempt log and dead letters.

mod api;
mod configurations;
mod deliveries;
use ebb_common::egress;
mod gauges;
pub mod migrations;
mod patterns;
mod payload;
mod publish;
mod retry;
mod rows;
pub mod signing;
mod transport;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ebb_common::app::ServiceConfig;
use ebb_common::config::{ConfigError, ServerConfig, Validate};
use ebb_common::idempotency::IdempotencyConfig;
use ebb_common::serving::{self, Component};
use ebb_proto::notifier::v1::notifier_service_server::NotifierServiceServer;
use humantime_serde::Serde;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// notifier-svc configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(default)]
pub struct Config {
    /// Shared server settings.
    #[serde(flatten)]
    pub server: ServerConfig,
    /// Retries, leasing and worker sizing.
    pub delivery: DeliveryConfig,
    /// Which addresses webhooks may reach.
    pub egress: EgressConfig,
    /// The relay email goes through.
    pub smtp: SmtpConfig,
    /// How long request ids answer their first response.
    pub idempotency: IdempotencyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::with_defaults(
                SocketAddr::from(([127, 0, 0, 1], 50063)),
                "ebb-data/notifier.db",
                "127.0.0.1:9463",
            ),
            delivery: DeliveryConfig::default(),
            egress: EgressConfig::default(),
            smtp: SmtpConfig::default(),
            idempotency: IdempotencyConfig::default(),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.server.require_service_token("notifier-svc")?;
        self.server
            .encryption
            .require_key("notifier-svc", "the signing secrets of configurations")?;
        self.delivery.validate()?;
        self.egress.validate()?;
        self.smtp.validate()?;
        self.idempotency.validate()
    }
}

impl ServiceConfig for Config {
    fn server(&self) -> &ServerConfig {
        &self.server
    }
}

/// How deliveries are attempted and retried.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(default)]
pub struct DeliveryConfig {
    /// Delay before each attempt, the first included: attempt `n` waits `retry_schedule[n-1]`
    /// after attempt `n-1` failed. Its length is the number of attempts before a delivery is
    /// dead-lettered.
    #[schemars(with = "Vec<String>")]
    pub retry_schedule: Vec<Serde<Duration>>,
    /// Each delay is spread uniformly by ± this fraction (0.2 = ±20%).
    pub jitter: f64,
    /// A 429 or a timeout waits at least this long before the next attempt.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub min_throttle_wait: Duration,
    /// Whole-request timeout of one HTTP attempt (connect, send, answer, body).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// TCP connect timeout of one HTTP attempt.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Attempts in flight at once in this replica.
    pub concurrency: usize,
    /// Most deliveries leased in one claim.
    pub batch_size: u32,
    /// How often to look for due deliveries when idle.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// How long a claimed delivery stays leased to this replica; must outlast an attempt.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lease_ttl: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let schedule = [0, 5, 300, 1800, 7200, 18_000, 36_000, 36_000];
        Self {
            retry_schedule: schedule
                .iter()
                .map(|s| Serde::from(Duration::from_secs(*s)))
                .collect(),
            jitter: 0.2,
            min_throttle_wait: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            concurrency: 64,
            batch_size: 100,
            poll_interval: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(60),
        }
    }
}

impl DeliveryConfig {
    /// The schedule as plain durations.
    pub fn schedule(&self) -> Vec<Duration> {
        self.retry_schedule.iter().map(|d| **d).collect()
    }
}

impl Validate for DeliveryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.retry_schedule.is_empty() || self.retry_schedule.len() > 50 {
            return Err(ConfigError::field(
                "delivery.retry_schedule",
                "must list between 1 and 50 delays",
            ));
        }
        if self
            .retry_schedule
            .iter()
            .any(|d| **d > Duration::from_secs(7 * 86_400))
        {
            return Err(ConfigError::field(
                "delivery.retry_schedule",
                "delays must be at most 7 days",
            ));
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            return Err(ConfigError::field(
                "delivery.jitter",
                "must be between 0 and 0.5",
            ));
        }
        if self.min_throttle_wait > Duration::from_secs(86_400) {
            return Err(ConfigError::field(
                "delivery.min_throttle_wait",
                "must be at most 1 day",
            ));
        }
        if self.request_timeout < Duration::from_millis(100)
            || self.request_timeout > Duration::from_secs(300)
        {
            return Err(ConfigError::field(
                "delivery.request_timeout",
                "must be between 100ms and 5m",
            ));
        }
        if self.connect_timeout.is_zero() || self.connect_timeout > self.request_timeout {
            return Err(ConfigError::field(
                "delivery.connect_timeout",
                "must be positive and at most delivery.request_timeout",
            ));
        }
        if !(1..=4096).contains(&self.concurrency) {
            return Err(ConfigError::field(
                "delivery.concurrency",
                "must be between 1 and 4096",
            ));
        }
        if !(1..=1000).contains(&self.batch_size) {
            return Err(ConfigError::field(
                "delivery.batch_size",
                "must be between 1 and 1000",
            ));
        }
        if self.poll_interval < Duration::from_millis(10)
            || self.poll_interval > Duration::from_secs(60)
        {
            return Err(ConfigError::field(
                "delivery.poll_interval",
                "must be between 10ms and 60s",
            ));
        }
        // A lease must outlive the longest attempt, or a second replica could start one.
        if self.lease_ttl < self.request_timeout * 2 + Duration::from_secs(5) {
            return Err(ConfigError::field(
                "delivery.lease_ttl",
                "must be at least twice delivery.request_timeout plus 5s",
            ));
        }
        Ok(())
    }
}

pub use ebb_common::egress::EgressConfig;

/// How the SMTP session is secured.
#[derive(
    Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain SMTP (tests, a relay on the same host).
    None,
    /// Plain connection upgraded with STARTTLS, which is required.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

/// The SMTP relay for email destinations. With no `relay`, email configurations are refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(default)]
pub struct SmtpConfig {
    /// Relay host name; empty disables email.
    pub relay: String,
    /// Relay port.
    pub port: u16,
    /// `none`, `starttls` or `tls`.
    pub tls: SmtpTls,
    /// Optional credentials.
    pub username: String,
    /// Optional credentials.
    pub password: String,
    /// The From address, e.g. `Ebb <ebb@example.com>`.
    pub from: String,
    /// Timeout of one SMTP session.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            relay: String::new(),
            port: 587,
            tls: SmtpTls::Starttls,
            username: String::new(),
            password: String::new(),
            from: "Ebb <ebb@localhost>".into(),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Validate for SmtpConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.relay.is_empty() {
            return Ok(());
        }
        if self.port == 0 {
            return Err(ConfigError::field("smtp.port", "must not be 0"));
        }
        self.from
            .parse::<lettre::message::Mailbox>()
            .map_err(|e| ConfigError::field("smtp.from", format!("not an address: {e}")))?;
        if self.username.is_empty() != self.password.is_empty() {
            return Err(ConfigError::field(
                "smtp.password",
                "username and password go together",
            ));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            return Err(ConfigError::field(
                "smtp.timeout",
                "must be between 1ms and 5m",
            ));
        }
        Ok(())
    }
}

/// Connects, migrates and assembles the service: the gRPC API and the delivery worker.
pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Component> {
    let db = serving::connect_database(&config.server, &shutdown).await?;
    db.migrate::<migrations::Migrator>().await?;
    let keys = Arc::new(
        ebb_common::sealing::Keyring::from_config(&config.server.encryption)?
            .ok_or_else(|| anyhow::anyhow!("encryption.key is required"))?,
    );
    let resealed = configurations::reseal_secrets(&db, &keys).await?
        + ebb_common::idempotency::sealed::reseal_responses(&db.conn, &keys).await?;
    if resealed > 0 {
        tracing::info!(
            resealed,
            key = keys.active_id(),
            "sealed stored secrets under the current encryption key"
        );
    }
    let sender = Arc::new(transport::Sender::new(&config)?);
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut component = Component::new();
    component.add_metrics_source(Arc::new(gauges::NotifierMetrics::new(db.clone())));
    component.ask_lifecycle_for_tokens(&config.server, "")?;
    component.add_resolver(Arc::new(ebb_common::auth::TableResolver::new(
        db.clone(),
        &[
            ("ebb.notifier.v1.", "id", "notification configuration"),
            (
                "ebb.notifier.v1.",
                "configuration_id",
                "notification configuration",
            ),
            (
                "ebb.notifier.v1.",
                "configuration.id",
                "notification configuration",
            ),
            ("ebb.notifier.v1.", "delivery_id", "delivery"),
            ("ebb.notifier.v1.", "event_id", "event"),
        ],
        &[
            (
                "notification configuration",
                "notification_configurations",
                "id",
            ),
            ("delivery", "deliveries", "id"),
            ("event", "events", "id"),
        ],
    )));
    component.add_service(
        NotifierServiceServer::new(api::NotifierApi::new(
            db.clone(),
            keys.clone(),
            sender.clone(),
            wake.clone(),
        )),
        &db,
    );
    component.spawn(ebb_common::idempotency::sweep_periodically(
        db.clone(),
        config.idempotency.clone(),
        shutdown.clone(),
    ));
    let worker = worker::Worker::new(db.clone(), keys, sender, config.delivery.clone(), wake);
    component.spawn(worker.run(shutdown));
    Ok(component)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults with the service token and encryption key every deployment gives.
    fn configured() -> Config {
        let mut c = Config::default();
        c.server.auth.service_token = "a-service-token-of-the-deployment".into();
        c.server.encryption.key = ebb_common::sealing::generate_key("k1");
        c
    }

    #[test]
    fn defaults_are_valid_and_follow_the_documented_schedule() {
        let c = configured();
        assert!(c.validate().is_ok());
        let mut unconfigured = c.clone();
        unconfigured.server.auth.service_token.clear();
        let err = unconfigured.validate().expect_err("no token").to_string();
        assert!(err.contains("`auth.service_token`"), "{err}");
        let mut keyless = c.clone();
        keyless.server.encryption.key.clear();
        let err = keyless.validate().expect_err("no key").to_string();
        assert!(err.contains("`encryption.key`"), "{err}");
        let secs: Vec<u64> = c.delivery.schedule().iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [0, 5, 300, 1800, 7200, 18_000, 36_000, 36_000]);
        assert!(!c.egress.allow_loopback);
    }

    #[test]
    fn refusals_name_the_field() {
        type Change = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "delivery.retry_schedule",
                Box::new(|c| c.delivery.retry_schedule.clear()),
            ),
            ("delivery.jitter", Box::new(|c| c.delivery.jitter = 0.9)),
            (
                "delivery.lease_ttl",
                Box::new(|c| c.delivery.lease_ttl = Duration::from_secs(10)),
            ),
            (
                "delivery.concurrency",
                Box::new(|c| c.delivery.concurrency = 0),
            ),
            (
                "egress.allow_networks[0]",
                Box::new(|c| c.egress.allow_networks = vec!["10.0.0.0/99".into()]),
            ),
            (
                "smtp.from",
                Box::new(|c| {
                    c.smtp.relay = "mail.example.com".into();
                    c.smtp.from = "not an address".into();
                }),
            ),
        ];
        for (field, change) in cases {
            let mut c = configured();
            change(&mut c);
            let err = c.validate().expect_err(field).to_string();
            assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
        }
    }
}
