//! Layered configuration: defaults → TOML file → `EBB_` environment → command-line flags, then
//! validated. Every refusal names the field and where its value came from.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

mod server;

pub use server::*;

/// A configuration value was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// A refusal of one field, with the reason.
    pub fn field(field: &str, reason: impl std::fmt::Display) -> Self {
        Self(format!("field `{field}`: {reason}"))
    }
}

/// Checks that go beyond types: ranges, formats, combinations.
pub trait Validate {
    /// Refuses the first invalid field.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Loads `T` from its defaults, an optional TOML file, `EBB_*` variables (nested keys joined by
/// `__`, e.g. `EBB_TELEMETRY__LOG_FORMAT=json`) and flag overrides, then validates it.
///
/// Only variables naming a known top-level key are read, so unrelated `EBB_*` variables do not
/// disturb a service; a key in the file that the service does not know is refused.
pub fn load<T>(
    defaults: &T,
    file: Option<&Path>,
    overrides: &impl Serialize,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Validate,
{
    let known = known_keys(defaults)?;
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(path) = file {
        check_file(path, &known)?;
        figment = figment.merge(Toml::file_exact(path));
    }
    let top = top_keys(&known);
    figment = figment
        .merge(Env::prefixed("EBB_").split("__").filter(move |k| {
            let key = k.as_str().to_ascii_lowercase();
            top.contains(key.split(".").next().unwrap_or_default())
        }))
        .merge(Serialized::defaults(overrides));
    let config: T = match figment.extract() {
        Ok(c) => c,
        Err(e) => return Err(blame(&figment, defaults, &top_keys(&known), e)),
    };
    config.validate()?;
    Ok(config)
}

fn top_keys(known: &BTreeSet<String>) -> BTreeSet<String> {
    known
        .iter()
        .map(|k| k.split('.').next().unwrap_or_default().to_owned())
        .collect()
}

/// Some deserializers (socket addresses, for one) fail without saying which key they were
/// reading. Find the key by putting each one back to its default until extraction succeeds.
fn blame<T>(
    figment: &Figment,
    defaults: &T,
    keys: &BTreeSet<String>,
    error: figment::Error,
) -> ConfigError
where
    T: Serialize + DeserializeOwned,
{
    if !error.path.is_empty() {
        return describe_figment_error(error);
    }
    let Ok(serde_json::Value::Object(default_map)) = serde_json::to_value(defaults) else {
        return describe_figment_error(error);
    };
    for key in keys {
        let Some(default) = default_map.get(key) else {
            continue;
        };
        let patched = figment
            .clone()
            .merge(Serialized::default(key, default.clone()));
        if patched.extract::<T>().is_ok() {
            let source = figment
                .find_metadata(key)
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            return ConfigError(format!("field `{key}`: {}{source}", error.kind));
        }
    }
    describe_figment_error(error)
}

fn describe_figment_error(error: figment::Error) -> ConfigError {
    let mut parts = Vec::new();
    for e in error {
        let key = e.path.join(".");
        let source = e
            .metadata
            .as_ref()
            .map(|m| match &m.source {
                Some(source) => format!(" (from {} {source})", m.name),
                None => format!(" (from {})", m.name),
            })
            .unwrap_or_default();
        if key.is_empty() {
            parts.push(format!("{}{source}", e.kind));
        } else {
            parts.push(format!("field `{key}`: {}{source}", e.kind));
        }
    }
    ConfigError(parts.join("; "))
}

/// Every key path (`telemetry.log_format`) the defaults serialize to.
fn known_keys<T: Serialize>(defaults: &T) -> Result<BTreeSet<String>, ConfigError> {
    let value = serde_json::to_value(defaults)
        .map_err(|e| ConfigError(format!("defaults do not serialize: {e}")))?;
    let mut keys = BTreeSet::new();
    collect_keys(&value, "", &mut keys);
    Ok(keys)
}

fn collect_keys(value: &serde_json::Value, prefix: &str, keys: &mut BTreeSet<String>) {
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            keys.insert(path.clone());
            collect_keys(v, &path, keys);
        }
    }
}

fn check_file(path: &Path, known: &BTreeSet<String>) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
    let mut found = BTreeSet::new();
    collect_keys(
        &serde_json::to_value(&table).unwrap_or_default(),
        "",
        &mut found,
    );
    for key in found {
        let is_known = known.contains(&key)
            // Free-form maps (such as label policies) accept any key below them.
            || known.iter().any(|k| key.starts_with(&format!("{k}.")) && !known.iter().any(|k2| k2.starts_with(&format!("{k}."))));
        if !is_known {
            return Err(ConfigError(format!(
                "config file {}: unknown field `{key}`",
                path.display()
            )));
        }
    }
    Ok(())
}

/// The `--config` flag every binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigFileArg {
    /// TOML configuration file (values there are overridden by EBB_* variables and flags).
    #[arg(long, short = 'c', env = "EBB_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Parses a human duration ("14d", "18h", "90s") or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| {
        format!("`{text}` is not a duration ({e}); use forms like \"14d\", \"18h\" or seconds")
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Sample {
        #[serde(flatten)]
        server: ServerConfig,
        batch: u32,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                server: ServerConfig::with_defaults(
                    "127.0.0.1:1".parse().expect("addr"),
                    "x.db",
                    "",
                ),
                batch: 10,
            }
        }
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.batch == 0 {
                return Err(ConfigError::field("batch", "must be at least 1"));
            }
            self.server.validate()
        }
    }

    #[derive(Serialize)]
    struct NoOverrides {}

    #[test]
    fn file_values_override_defaults_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "batch = 5\n[telemetry]\nlog_format = \"json\"\n").expect("write");
        let c: Sample = load(&Sample::default(), Some(&path), &NoOverrides {}).expect("load");
        assert_eq!(c.batch, 5);
        assert_eq!(c.server.telemetry.log_format, LogFormat::Json);

        std::fs::write(&path, "bacth = 5\n").expect("write");
        let err = load(&Sample::default(), Some(&path), &NoOverrides {}).expect_err("typo");
        assert!(err.to_string().contains("unknown field `bacth`"), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "batch = \"many\"\n").expect("write");
        let err = load(&Sample::default(), Some(&path), &NoOverrides {}).expect_err("type");
        assert!(err.to_string().contains("`batch`"), "{err}");

        std::fs::write(&path, "batch = 0\n").expect("write");
        let err = load(&Sample::default(), Some(&path), &NoOverrides {}).expect_err("range");
        assert!(err.to_string().contains("`batch`"), "{err}");

        std::fs::write(&path, "database_url = \"mysql://x\"\n").expect("write");
        let err = load(&Sample::default(), Some(&path), &NoOverrides {}).expect_err("url");
        assert!(err.to_string().contains("`database_url`"), "{err}");

        std::fs::write(&path, "[telemetry]\nsample_ratio = 1.5\n").expect("write");
        let err = load(&Sample::default(), Some(&path), &NoOverrides {}).expect_err("ratio");
        assert!(
            err.to_string().contains("`telemetry.sample_ratio`"),
            "{err}"
        );
        std::fs::write(&path, "[telemetry]\nsample_ratio = 0.25\n").expect("write");
        let c = load(&Sample::default(), Some(&path), &NoOverrides {}).expect("a share");
        assert_eq!(c.server.telemetry.sample_ratio, 0.25);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 5000, ..Default::default() })]

        /// Arbitrary text is a duration or a clear refusal, never a panic; accepted values
        /// round-trip through humantime's formatting.
        #[test]
        fn durations_never_panic(text in "\\PC{0,40}|[0-9]{1,25}[a-z]{0,6}|[0-9 ]{0,12}(d|h|m|s|ms|us|ns|days|weeks)") {
            if let Ok(d) = parse_duration(&text) {
                let shown = humantime::format_duration(d).to_string();
                proptest::prop_assert_eq!(parse_duration(&shown), Ok(d));
            }
        }
    }

    #[test]
    fn durations_accept_units_and_seconds() {
        assert_eq!(parse_duration("14d"), Ok(Duration::from_secs(14 * 86400)));
        assert_eq!(parse_duration("18h"), Ok(Duration::from_secs(18 * 3600)));
        assert_eq!(parse_duration("3600"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5").is_err());
    }
}
