//! lifecycle-svc configuration.

use std::net::SocketAddr;
use std::time::Duration;

use ebb_common::app::ServiceConfig;
use ebb_common::config::{ConfigError, ServerConfig, Validate};
use ebb_common::egress::EgressConfig;
use ebb_common::idempotency::IdempotencyConfig;
use serde::{Deserialize, Serialize};

/// lifecycle-svc configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(default)]
pub struct Config {
    /// Shared server settings.
    #[serde(flatten)]
    pub server: ServerConfig,
    /// Shortest inactivity period a workspace may have (1h; tests lower it).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub min_inactivity: Duration,
    /// How long a runner's claim on a run lasts without a heartbeat.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub run_lease_ttl: Duration,
    /// Base delay before retrying a failed auto-destroy; doubles with each failure.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub auto_destroy_retry_backoff: Duration,
    /// How long an action step may run before it fails (DP-8).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub action_step_timeout: Duration,
    /// How long the callback token of a webhook step stays valid.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub callback_token_ttl: Duration,
    /// The longest `gracePeriodSeconds` an action may be given (365 days).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_grace_period: Duration,
    /// Catalog file (YAML) loaded at start; empty for none.
    pub catalog_file: String,
    /// audit-svc address for the outbox relay; empty disables relaying to audit.
    pub audit_url: String,
    /// notifier-svc address for the outbox relay; empty disables relaying to the notifier.
    pub notifier_url: String,
    /// How long request ids answer their first response.
    pub idempotency: IdempotencyConfig,
    /// Refused calls are recorded as one `auth.denied` event per token, method and code per
    /// this window, with a count (a minute).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub denied_events_window: Duration,
    /// Which addresses webhook steps may reach (loopback refused unless allowed).
    pub egress: EgressConfig,
    /// The `whsec_` secret that signs webhook-step requests (Standard Webhooks headers);
    /// empty sends them unsigned, with a warning at start.
    pub step_signing_secret: String,
    /// How long an outbox event is kept after every configured sink has it; audit-svc is
    /// the permanent record.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub outbox_retention: Duration,
    /// The snooze links of reminders and Slack's interactivity requests, on an HTTP port.
    pub snooze: SnoozeConfig,
}

/// Where the snooze links of reminders are served (`EBB_SNOOZE__*`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SnoozeConfig {
    /// Address of the HTTP server of snooze links (`GET`/`POST /v1/snooze/<token>`) and Slack
    /// interactivity (`POST /v1/slack/interactions`); empty turns it off, and reminders carry
    /// no link.
    pub listen: String,
    /// The address people open, as reminders link it (e.g. `https://ebb.example.com`, behind a
    /// proxy that forwards to `listen`). Empty: `http://` and the address `listen` bound.
    pub public_url: String,
    /// The signing secret of the Slack app whose buttons snooze (Slack's "Signing Secret"):
    /// interactivity requests are verified with it (`v0` signatures). Empty refuses them.
    pub slack_signing_secret: String,
}

impl Default for SnoozeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50071".into(),
            public_url: String::new(),
            slack_signing_secret: String::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::with_defaults(
                SocketAddr::from(([127, 0, 0, 1], 50061)),
                "ebb-data/lifecycle.db",
                "127.0.0.1:9461",
            ),
            min_inactivity: Duration::from_secs(3600),
            run_lease_ttl: Duration::from_secs(60),
            auto_destroy_retry_backoff: Duration::from_secs(60),
            action_step_timeout: Duration::from_secs(3600),
            callback_token_ttl: Duration::from_secs(7 * 86_400),
            max_grace_period: Duration::from_secs(365 * 86_400),
            catalog_file: String::new(),
            audit_url: String::new(),
            notifier_url: String::new(),
            idempotency: IdempotencyConfig::default(),
            denied_events_window: Duration::from_secs(60),
            egress: EgressConfig::default(),
            step_signing_secret: String::new(),
            outbox_retention: Duration::from_secs(7 * 86_400),
            snooze: SnoozeConfig::default(),
        }
    }
}

impl Config {
    /// Sends the outbox to audit and notifier at `url` (as `ebb serve` does).
    pub fn peers(&mut self, url: &str) {
        self.audit_url = url.to_owned();
        self.notifier_url = url.to_owned();
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        if self.server.admin_token.is_empty() {
            return Err(ConfigError::field(
                "admin_token",
                "is required: it is the only token that can create organizations and their \
                 first tokens (EBB_ADMIN_TOKEN)",
            ));
        }
        self.server
            .encryption
            .require_key("lifecycle-svc", "the key of step callback tokens")?;
        if !self.snooze.listen.is_empty() && self.snooze.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::field(
                "snooze.listen",
                "must be an address such as 0.0.0.0:50071, or empty to turn it off",
            ));
        }
        let public = &self.snooze.public_url;
        if !public.is_empty()
            && (!(public.starts_with("http://") || public.starts_with("https://"))
                || public.ends_with('/')
                || public.contains(['?', '#']))
        {
            return Err(ConfigError::field(
                "snooze.public_url",
                "must be an http:// or https:// address without a trailing slash, query or fragment",
            ));
        }
        if self.min_inactivity < Duration::from_secs(1) {
            return Err(ConfigError::field("min_inactivity", "must be at least 1s"));
        }
        if self.run_lease_ttl < Duration::from_secs(1)
            || self.run_lease_ttl > Duration::from_secs(3600)
        {
            return Err(ConfigError::field(
                "run_lease_ttl",
                "must be between 1s and 1h",
            ));
        }
        if self.auto_destroy_retry_backoff < Duration::from_millis(100) {
            return Err(ConfigError::field(
                "auto_destroy_retry_backoff",
                "must be at least 100ms",
            ));
        }
        if self.action_step_timeout < Duration::from_secs(1) {
            return Err(ConfigError::field(
                "action_step_timeout",
                "must be at least 1s",
            ));
        }
        if self.callback_token_ttl < Duration::from_secs(1) {
            return Err(ConfigError::field(
                "callback_token_ttl",
                "must be at least 1s",
            ));
        }
        if self.max_grace_period > Duration::from_secs(9999 * 86_400) {
            return Err(ConfigError::field(
                "max_grace_period",
                "must be at most 9999 days",
            ));
        }
        if self.outbox_retention < Duration::from_secs(60) {
            return Err(ConfigError::field(
                "outbox_retention",
                "must be at least 1m",
            ));
        }
        if !self.catalog_file.is_empty() && !std::path::Path::new(&self.catalog_file).is_file() {
            return Err(ConfigError::field(
                "catalog_file",
                format!("{} is not a readable file", self.catalog_file),
            ));
        }
        for (field, url) in [
            ("audit_url", &self.audit_url),
            ("notifier_url", &self.notifier_url),
        ] {
            if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::field(
                    field,
                    "must be an http:// or https:// URL",
                ));
            }
        }
        if self.denied_events_window < Duration::from_millis(100)
            || self.denied_events_window > Duration::from_secs(3600)
        {
            return Err(ConfigError::field(
                "denied_events_window",
                "must be between 100ms and 1h",
            ));
        }
        if !self.step_signing_secret.is_empty() {
            ebb_common::signing::check_secret(&self.step_signing_secret)
                .map_err(|e| ConfigError::field("step_signing_secret", e))?;
        }
        self.egress.validate()?;
        self.idempotency.validate()
    }
}

impl ServiceConfig for Config {
    fn server(&self) -> &ServerConfig {
        &self.server
    }
}
