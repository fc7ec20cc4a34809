//! Before serving: the listener bound, and the database connected, retried until shutdown.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::db::{Db, PoolOptions};

/// Binds `addr`, naming it in the error.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Connects to `server.database_url` with the pool of `server.database`, retrying with backoff
/// until it answers or shutdown begins.
pub async fn connect_database(
    server: &ServerConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Db> {
    connect_pool(&server.database_url, &server.database.pool(), shutdown).await
}

async fn connect_pool(
    url: &str,
    pool: &PoolOptions,
    shutdown: &CancellationToken,
) -> anyhow::Result<Db> {
    let mut delay = Duration::from_millis(200);
    loop {
        match Db::connect_with(url, pool).await {
            Ok(db) => return Ok(db),
            Err(e) => {
                tracing::warn!(database = %crate::db::redact(url), error = %crate::db::scrub(&e.to_string(), url), retry_in = ?delay, "database not reachable");
                tokio::select! {
                    () = shutdown.cancelled() => anyhow::bail!("shut down before the database answered"),
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
