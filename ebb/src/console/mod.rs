//! The web console: server-rendered pages over the gRPC API for the three questions operators
//! would rather look at than read — what is about to be destroyed, what a cascade would tear
//! down and in which order, and whether everything that happened was recorded — and the
//! actions that go with them.
//!
//! It is a client of the API like the CLI: every page is built from ordinary RPCs made with the
//! signed-in caller's token, which stays on the console's side behind a session cookie
//! ([`session`]). What a role may not do, the console does not offer; a forged request is
//! refused by the API anyway. `ebb serve` serves it beside the services; `ebb console`
//! serves it for a deployed cluster.

mod api;
mod audit;
mod deprovision;
mod graph;
mod health;
mod layout;
mod runs;
mod session;
mod signin;
mod timeline;
mod upcoming;
mod workspace;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use ebb_common::client::ClientSettings;
use ebb_common::config::ConfigError;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::Api;
use session::Sessions;

/// Where the console listens and how long a sign-in lasts.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Address of the web console, e.g. 127.0.0.1:50080; empty turns it off.
    pub listen: String,
    /// How long a sign-in lasts (never longer than the token itself).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub session_ttl: Duration,
    /// Mark the session cookie `Secure`: set it when browsers reach the console over HTTPS
    /// (a TLS-terminating proxy in front of it).
    pub secure_cookie: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50080".into(),
            session_ttl: Duration::from_secs(8 * 3600),
            secure_cookie: false,
        }
    }
}

impl ConsoleConfig {
    /// Checks the settings, naming the field at fault (`prefix` is where they live).
    pub fn check(&self, prefix: &str) -> Result<(), ConfigError> {
        if !self.listen.is_empty() && self.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::field(
                &format!("{prefix}listen"),
                "must be an address such as 127.0.0.1:50080, or empty to turn the console off",
            ));
        }
        if self.session_ttl < Duration::from_secs(60)
            || self.session_ttl > Duration::from_secs(30 * 86_400)
        {
            return Err(ConfigError::field(
                &format!("{prefix}session_ttl"),
                "must be between 1m and 30d",
            ));
        }
        Ok(())
    }

    /// Binds the console's address; `None` when it is turned off.
    pub async fn bind(&self) -> anyhow::Result<Option<TcpListener>> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        let listener = TcpListener::bind(&self.listen)
            .await
            .map_err(|e| anyhow::anyhow!("console: cannot listen on {}: {e}", self.listen))?;
        Ok(Some(listener))
    }
}

/// What every handler shares.
pub struct State {
    /// The API, called as the signed-in caller.
    pub api: Api,
    /// Signed-in callers.
    pub sessions: Sessions,
}

/// Shared state of the handlers.
pub type Shared = Arc<State>;

/// The console's routes.
fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(upcoming::page))
        .route("/signin", get(signin::signin_page).post(signin::signin))
        .route("/signout", post(signin::signout))
        .route("/workspaces/{id}", get(workspace::page))
        .route("/workspaces/{id}/{verb}", post(workspace::act))
        .route("/runs/{id}/{verb}", post(workspace::decide))
        .route("/deprovision", get(deprovision::page))
        .route("/deprovision/trigger", post(deprovision::trigger))
        .route("/action-runs/{id}", get(runs::page))
        .route("/action-runs/{id}/steps", get(runs::steps))
        .route("/action-runs/{id}/{verb}", post(runs::act))
        .route("/audit", get(audit::page))
        .route("/audit/verify", post(audit::verify))
        .route("/health", get(health::page))
        .route("/static/console.css", get(layout::stylesheet))
        .route("/static/console.js", get(layout::script))
        .fallback(layout::not_found)
        .layer(axum::middleware::map_response(layout::secure_headers))
        .with_state(state)
}

/// Serves the console on `listener` for the API at `server` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    server: &str,
    settings: &ClientSettings,
    config: &ConsoleConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api = Api::new(server, settings).map_err(|e| anyhow::anyhow!("console: {e}"))?;
    let state = Arc::new(State {
        api,
        sessions: Sessions::new(config.session_ttl, config.secure_cookie),
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|e| anyhow::anyhow!("console stopped: {e}"))
}

/// Flags of `ebb console`.
#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    /// Address of the server (all services on one address): `http://` or `https://`, or
    /// HOST:PORT. Default: the context's, else http://127.0.0.1:50051.
    #[arg(long, env = "EBB_SERVER")]
    server: Option<String>,
    /// PEM CA bundle to trust for an `https://` server. Default: the context's.
    #[arg(long, env = "EBB_TLS_CA_PATH")]
    ca: Option<PathBuf>,
    /// Context of the config file to take the server and CA from.
    #[arg(long, env = "EBB_CONTEXT")]
    context: Option<String>,
    /// Address to serve the console on.
    #[arg(long, default_value = "127.0.0.1:50080")]
    listen: String,
    /// How long a sign-in lasts (never longer than the token).
    #[arg(long, default_value = "8h", value_parser = crate::cli::parse_duration)]
    session_ttl: Duration,
    /// Mark the session cookie `Secure` (browsers reach the console over HTTPS).
    #[arg(long)]
    secure_cookie: bool,
}

/// Runs `ebb console` until Ctrl-C.
pub fn main(args: ConsoleArgs) -> std::process::ExitCode {
    let config = ConsoleConfig {
        listen: args.listen.clone(),
        session_ttl: args.session_ttl,
        secure_cookie: args.secure_cookie,
    };
    if let Err(e) = config.check("--") {
        eprintln!("ebb console: {e}");
        return std::process::ExitCode::from(2);
    }
    let (server, settings) = match target(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ebb console: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match crate::cli::server_runtime("console") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async move {
        let shutdown = ebb_common::serving::shutdown_on_signals();
        let Some(listener) = config.bind().await? else {
            anyhow::bail!("--listen must not be empty");
        };
        println!("console on http://{} for {server}", listener.local_addr()?);
        serve(listener, &server, &settings, &config, shutdown).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ebb console: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The server and CA from the flags, else the config file's context.
fn target(args: &ConsoleArgs) -> Result<(String, ClientSettings), String> {
    let context = crate::cli::connection::active_context(args.context.as_deref())?;
    let ctx = context.as_ref().map(|(_, _, c)| c);
    let server = args
        .server
        .clone()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| ctx.and_then(|c| c.server.clone()))
        .unwrap_or_else(|| crate::cli::connection::DEFAULT_SERVER.to_owned());
    let ca = match (&args.ca, ctx.and_then(|c| c.ca.as_ref())) {
        (Some(p), _) if !p.as_os_str().is_empty() => p.clone(),
        (_, Some(p)) => match &context {
            Some((file, _, _)) => crate::cli::contexts::resolve_path(file, p),
            None => p.clone(),
        },
        _ => PathBuf::new(),
    };
    Ok((
        crate::cli::connection::server_url(&server),
        ClientSettings {
            token: String::new(),
            ca_path: ca.to_string_lossy().into_owned(),
            identity: None,
        },
    ))
}
