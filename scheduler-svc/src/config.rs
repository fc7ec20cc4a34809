//! scheduler-svc configuration.

use std::net::SocketAddr;
use std::time::Duration;

use ebb_common::app::ServiceConfig;
use ebb_common::config::{ConfigError, ServerConfig, Validate};
use serde::{Deserialize, Serialize};

/// scheduler-svc configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(default)]
pub struct Config {
    /// Shared server settings.
    #[serde(flatten)]
    pub server: ServerConfig,
    /// lifecycle-svc address.
    pub lifecycle_url: String,
    /// This replica's name in lease rows; empty means host name and a random suffix.
    pub replica_id: String,
    /// How long a claimed (task, shard) lease lasts without renewal.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lease_ttl: Duration,
    /// How often a replica looks for due tasks.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// Shards per sharded task; every replica must use the same number.
    pub shard_count: u32,
    /// Fire keys per queue call.
    pub batch_size: u32,
    /// Interval of `auto_destroy_check`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub auto_destroy_check_interval: Duration,
    /// Interval of `auto_destroy_reminders`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub auto_destroy_reminders_interval: Duration,
    /// Interval of `run_lease_rescue`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub run_lease_rescue_interval: Duration,
    /// Interval of `grace_period_sweep`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub grace_period_sweep_interval: Duration,
    /// Claims after which a run whose runner vanished is ERRORED instead of requeued.
    pub run_max_attempts: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::with_defaults(
                SocketAddr::from(([127, 0, 0, 1], 50062)),
                "ebb-data/scheduler.db",
                "127.0.0.1:9462",
            ),
            lifecycle_url: "http://127.0.0.1:50061".into(),
            replica_id: String::new(),
            lease_ttl: Duration::from_secs(15),
            poll_interval: Duration::from_millis(250),
            shard_count: 4,
            batch_size: 500,
            auto_destroy_check_interval: Duration::from_secs(1),
            auto_destroy_reminders_interval: Duration::from_secs(10),
            run_lease_rescue_interval: Duration::from_secs(10),
            grace_period_sweep_interval: Duration::from_secs(10),
            run_max_attempts: 3,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.server
            .require_outgoing_token("scheduler-svc", "lifecycle-svc")?;
        if !(self.lifecycle_url.starts_with("http://")
            || self.lifecycle_url.starts_with("https://"))
        {
            return Err(ConfigError::field(
                "lifecycle_url",
                "must be an http:// or https:// URL",
            ));
        }
        if self.lease_ttl < Duration::from_millis(500) {
            return Err(ConfigError::field("lease_ttl", "must be at least 500ms"));
        }
        if self.poll_interval.is_zero() || self.poll_interval > self.lease_ttl {
            return Err(ConfigError::field(
                "poll_interval",
                "must be above zero and at most lease_ttl",
            ));
        }
        if !(1..=1024).contains(&self.shard_count) {
            return Err(ConfigError::field(
                "shard_count",
                "must be between 1 and 1024",
            ));
        }
        if !(1..=5000).contains(&self.batch_size) {
            return Err(ConfigError::field(
                "batch_size",
                "must be between 1 and 5000",
            ));
        }
        for (field, d) in [
            (
                "auto_destroy_check_interval",
                self.auto_destroy_check_interval,
            ),
            (
                "auto_destroy_reminders_interval",
                self.auto_destroy_reminders_interval,
            ),
            ("run_lease_rescue_interval", self.run_lease_rescue_interval),
            (
                "grace_period_sweep_interval",
                self.grace_period_sweep_interval,
            ),
        ] {
            if d < Duration::from_millis(50) {
                return Err(ConfigError::field(field, "must be at least 50ms"));
            }
        }
        if !(1..=100).contains(&self.run_max_attempts) {
            return Err(ConfigError::field(
                "run_max_attempts",
                "must be between 1 and 100",
            ));
        }
        Ok(())
    }
}

impl ServiceConfig for Config {
    fn server(&self) -> &ServerConfig {
        &self.server
    }
}
