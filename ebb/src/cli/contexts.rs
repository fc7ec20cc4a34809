//! Contexts: named servers with their token, CA and default organization, kept in
//! `~/.config/ebb/config.toml` (or `$XDG_CONFIG_HOME/ebb/config.toml`, or the file named by
//! `EBB_CLI_CONFIG`), as kubectl keeps clusters in its kubeconfig.
//!
//! The file holds secrets (inline tokens), so it is written owner-only (0600), by writing a
//! new file beside it and renaming it over the old one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One context: where a server is and how to talk to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Address of the server, as `--server` takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Bearer token, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// File holding the bearer token (relative paths are relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle to trust for an `https://` server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Organization the commands work on when none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
}

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The context used when none is named (`--context`, `EBB_CONTEXT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// Where the config file is (not `EBB_CONFIG`, which names the services' configuration):
/// `EBB_CLI_CONFIG`, else `$XDG_CONFIG_HOME/ebb/config.toml`, else
/// `~/.config/ebb/config.toml`; `None` when there is no home to put it in.
pub fn path() -> Option<PathBuf> {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(p) = set("EBB_CLI_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = set("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| set("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("ebb").join("config.toml"))
}

impl ConfigFile {
    /// Reads the file at `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                format!(
                    "{}: {}",
                    path.display(),
                    e.to_string().trim().replace('\n', " ")
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes the file at `path`, owner-only, replacing it atomically.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = toml::to_string_pretty(self).map_err(|e| format!("config: {e}"))?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        create_private_dir(dir)?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("config.toml"),
            std::process::id()
        ));
        let written = (|| {
            let mut file = private_file(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        written.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", path.display())
        })
    }

    /// The context to use: `name` when given, else the current one; `None` when neither is
    /// set. A name that is not in the file is an error listing the ones that are.
    pub fn select(&self, name: Option<&str>) -> Result<Option<(String, Context)>, String> {
        let Some(name) = name
            .map(str::to_owned)
            .or_else(|| self.current_context.clone())
        else {
            return Ok(None);
        };
        match self.contexts.get(&name) {
            Some(c) => Ok(Some((name, c.clone()))),
            None => Err(self.unknown(&name)),
        }
    }

    /// The error for a context that does not exist.
    pub fn unknown(&self, name: &str) -> String {
        if self.contexts.is_empty() {
            format!(
                "no context named `{name}`: the config file holds none (add one with `ebb config set-context`)"
            )
        } else {
            format!(
                "no context named `{name}`; known: {}",
                self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        }
    }
}

/// A path from the config file: `~/` is the home directory; a relative path is relative to
/// the directory of the config file.
pub fn resolve_path(config: &Path, p: &Path) -> PathBuf {
    if let (Ok(rest), Some(home)) = (p.strip_prefix("~"), std::env::var_os("HOME")) {
        return PathBuf::from(home).join(rest);
    }
    if p.is_relative() {
        config
            .parent()
            .map_or_else(|| p.to_path_buf(), |d| d.join(p))
    } else {
        p.to_path_buf()
    }
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // The mode of `open` only applies to a new file.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::create(path)
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_round_trips_and_selects_contexts() {
        let dir = std::env::temp_dir().join(format!("ebb-contexts-{}", uuid::Uuid::new_v4()));
        let path = dir.join("ebb").join("config.toml");
        let mut config = ConfigFile::default();
        config.contexts.insert(
            "prod".into(),
            Context {
                server: Some("https://ebb.example:443".into()),
                token_file: Some("prod.token".into()),
                ..Context::default()
            },
        );
        config.current_context = Some("prod".into());
        config.save(&path).expect("saved");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let read = ConfigFile::load(&path).expect("loaded");
        assert_eq!(read, config);
        assert_eq!(
            read.select(None).expect("ok").map(|c| c.0),
            Some("prod".into())
        );
        let err = read.select(Some("dev")).expect_err("unknown");
        assert!(err.contains("dev") && err.contains("prod"), "{err}");
        assert_eq!(
            resolve_path(&path, Path::new("prod.token")),
            dir.join("ebb").join("prod.token")
        );
        std::fs::write(&path, "contexts = 3").expect("write");
        assert!(ConfigFile::load(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
