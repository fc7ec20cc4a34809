//! The shared connection flags (`--server`, `--token`, `--ca`, `--context`, ...) and how
//! they are resolved: a flag, else its `EBB_*` environment variable, else the context of the
//! config file, else the default.

use std::path::PathBuf;
use std::time::Duration;

use ebb_common::client::{ClientSettings, channel_with};

use super::contexts::{self, ConfigFile, Context};
use super::output::{self, Output};
use super::{CliError, Ctx, parse_duration};

/// The server used when neither a flag, the environment nor a context names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// The data directory whose `admin-token` is the last fallback token.
const DEFAULT_DATA_DIR: &str = "ebb-data";

/// Where the server is and how to authenticate: the flags every command that talks to a
/// server takes, `ebb runner` and `ebb audit export` included.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Target {
    /// Context of the config file to use instead of its current one.
    #[arg(long, global = true, env = "EBB_CONTEXT")]
    pub context: Option<String>,
    /// Address of the server (all services on one address, as `ebb serve`): `http://` or
    /// `https://`, or HOST:PORT for plain HTTP/2. Default: the context's, else
    /// http://127.0.0.1:50051.
    #[arg(long, global = true, env = "EBB_SERVER")]
    pub server: Option<String>,
    /// Bearer token. Default: --token-file, the context's token, else the `admin-token` file
    /// of --data-dir.
    #[arg(long, global = true, env = "EBB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, global = true, env = "EBB_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Data directory of `ebb serve`, whose `admin-token` file is the fallback token
    /// (default: ebb-data).
    #[arg(long, global = true, env = "EBB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// PEM CA bundle to trust for an `https://` server. Default: the context's.
    #[arg(long, global = true, env = "EBB_TLS_CA_PATH")]
    pub ca: Option<PathBuf>,
}

/// The connection flags and how answers are printed: the options every operator command
/// takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    #[command(flatten)]
    pub target: Target,
    /// How answers are printed: `table` (fits the terminal), `wide` (every column, nothing
    /// shortened), `json` or `yaml` (the proto answer), `name` (`kind/id` per line).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Tables without their header row.
    #[arg(long, global = true)]
    pub no_headers: bool,
    /// Deadline of each call.
    #[arg(long, global = true, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Where to connect and with what, once flags, environment and context are combined.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The server's URL.
    pub server: String,
    /// What the channel presents and trusts.
    pub settings: ClientSettings,
}

/// The config file and the context it selects (by `--context`/`EBB_CONTEXT` or its current
/// one), with the file's path; nothing when there is no file or no context.
pub fn active_context(name: Option<&str>) -> Result<Option<(PathBuf, String, Context)>, String> {
    let Some(path) = contexts::path() else {
        return match name {
            Some(n) => Err(format!(
                "no context named `{n}`: no config file (set HOME, XDG_CONFIG_HOME or EBB_CLI_CONFIG)"
            )),
            None => Ok(None),
        };
    };
    let file = ConfigFile::load(&path)?;
    Ok(file.select(name)?.map(|(n, c)| (path, n, c)))
}

impl Target {
    /// Combines the flags, the environment and the context.
    pub fn resolve(&self) -> Result<Resolved, CliError> {
        let context = active_context(self.context.as_deref()).map_err(CliError::Usage)?;
        let from_context = |p: &PathBuf| match &context {
            Some((file, _, _)) => contexts::resolve_path(file, p),
            None => p.clone(),
        };
        let ctx = context.as_ref().map(|(_, _, c)| c);
        let server = self
            .server
            .clone()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| ctx.and_then(|c| c.server.clone()))
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        let ca = match (&self.ca, ctx.and_then(|c| c.ca.as_ref())) {
            (Some(p), _) if !p.as_os_str().is_empty() => Some(p.clone()),
            (_, Some(p)) => Some(from_context(p)),
            _ => None,
        };
        let ca_path = match ca {
            Some(p) => p
                .to_str()
                .ok_or_else(|| CliError::Usage("--ca: the path is not UTF-8".into()))?
                .to_owned(),
            None => String::new(),
        };
        let token = self.token(ctx, &from_context)?;
        Ok(Resolved {
            server: server_url(&server),
            settings: ClientSettings {
                token,
                ca_path,
                identity: None,
            },
        })
    }

    /// The token: `--token`, `--token-file`, an explicit `--data-dir`, the context's token or
    /// token file, else `ebb-data/admin-token`.
    fn token(
        &self,
        ctx: Option<&Context>,
        from_context: &dyn Fn(&PathBuf) -> PathBuf,
    ) -> Result<String, CliError> {
        let given = |t: &Option<String>| {
            t.as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
        };
        if let Some(token) = given(&self.token) {
            return Ok(token);
        }
        if let Some(file) = self
            .token_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            return read_token(file, "--token-file");
        }
        if let Some(dir) = &self.data_dir {
            return read_token(&dir.join("admin-token"), "--data-dir");
        }
        if let Some(c) = ctx {
            if let Some(token) = given(&c.token) {
                return Ok(token);
            }
            if let Some(file) = &c.token_file {
                return read_token(&from_context(file), "the context's token_file");
            }
        }
        let file = PathBuf::from(DEFAULT_DATA_DIR).join("admin-token");
        read_token(&file, "--data-dir").map_err(|_| {
            CliError::Usage(format!(
                "no token: give one with --token or EBB_TOKEN, --token-file, a context \
                 (`ebb config set-context`), or point --data-dir at the data directory of \
                 `ebb serve` ({} cannot be read)",
                file.display()
            ))
        })
    }
}

/// A token from a file, trimmed; an empty or unreadable file is a usage error naming it.
fn read_token(file: &std::path::Path, what: &str) -> Result<String, CliError> {
    match std::fs::read_to_string(file) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Ok(_) => Err(CliError::Usage(format!(
            "{what}: {} is empty: give a token with --token or EBB_TOKEN",
            file.display()
        ))),
        Err(e) => Err(CliError::Usage(format!(
            "no token: {what}: {} cannot be read ({e}); give one with --token or EBB_TOKEN, \
             --token-file, or a context (`ebb config set-context`)",
            file.display()
        ))),
    }
}

/// Opens a lazily connected channel to the resolved server presenting the resolved token,
/// and sets how answers are printed.
pub fn connect(conn: &Connection) -> Result<Ctx, CliError> {
    let resolved = conn.target.resolve()?;
    output::set_mode(conn.output, conn.no_headers);
    let channel = channel_with(&resolved.server, conn.timeout, &resolved.settings)
        .map_err(|e| CliError::Usage(format!("--server: {e}")))?;
    super::set_server(&resolved.server);
    Ok(Ctx {
        channel,
        output: conn.output,
    })
}

/// A `--server` value as a URL: `http://` is assumed for a bare HOST:PORT.
pub fn server_url(server: &str) -> String {
    let server = server.trim();
    if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    }
}
