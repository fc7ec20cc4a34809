//! Readiness: each mounted service's health status follows whether its database answers.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::db::Db;

/// How often readiness is re-checked.
const READINESS_INTERVAL: Duration = Duration::from_secs(1);

/// How long a readiness ping may take, waiting for a pooled connection included. With the
/// interval, the health status turns NOT_SERVING within about 3 seconds of losing a database
/// and SERVING again within about 1 second of its return.
pub const READINESS_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps the health status of every mounted service, and the overall one (`""`), on whether
/// its database answers. Each distinct database is pinged once per round, all at once, each
/// ping bounded by [`READINESS_PING_TIMEOUT`], so one database that hangs neither delays the
/// verdict on the others nor holds the overall status.
pub(super) async fn watch_readiness(
    readiness: Vec<(&'static str, Db)>,
    reporter: HealthReporter,
    shutdown: CancellationToken,
) {
    let mut databases: Vec<(Db, Vec<&'static str>, Option<bool>)> = Vec::new();
    for (name, db) in readiness {
        match databases.iter_mut().find(|(d, _, _)| d.same_database(&db)) {
            Some((_, names, _)) => names.push(name),
            None => databases.push((db, vec![name], None)),
        }
    }
    let mut last_overall: Option<bool> = None;
    loop {
        let pings = databases
            .iter()
            .map(|(db, _, _)| db.ping_within(READINESS_PING_TIMEOUT));
        let answers = futures::future::join_all(pings).await;
        let mut all = true;
        for ((db, names, last), ok) in databases.iter_mut().zip(answers) {
            all &= ok;
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in names.iter() {
                reporter.set_service_status(*name, status).await;
            }
            if *last != Some(ok) {
                if ok {
                    tracing::info!(database = %db.redacted_url(), services = ?names, "database answers");
                } else {
                    tracing::warn!(database = %db.redacted_url(), services = ?names, timeout = ?READINESS_PING_TIMEOUT, "database does not answer");
                }
                *last = Some(ok);
            }
        }
        // A peer that refuses this service's token stops it as surely as a lost database.
        let refusal = crate::peers::refusal();
        let databases_answer = all;
        all &= refusal.is_none();
        if last_overall != Some(all) {
            if all {
                tracing::info!("ready: serving");
            } else if !databases_answer {
                tracing::warn!("not ready: a database does not answer");
            } else {
                tracing::warn!(reason = refusal.as_deref().unwrap_or_default(), "not ready");
            }
            last_overall = Some(all);
        }
        let overall = if all {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter.set_service_status("", overall).await;
        tokio::select! {
            () = shutdown.cancelled() => {
                for (_, names, _) in &databases {
                    for name in names {
                        reporter.set_service_status(*name, ServingStatus::NotServing).await;
                    }
                }
                reporter.set_service_status("", ServingStatus::NotServing).await;
                return;
            }
            () = tokio::time::sleep(READINESS_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use tokio::io::copy_bidirectional;
    use tokio::net::TcpListener;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_server::Health;
    use tonic_health::server::HealthService;

    use super::*;
    use crate::db::PoolOptions;

    async fn overall(reporter: &HealthReporter) -> i32 {
        HealthService::from_health_reporter(reporter.clone())
            .check(tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            }))
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or_default()
    }

    /// How long until the overall status is `want`, polled every 50 ms for at most `within`.
    async fn time_until(
        reporter: &HealthReporter,
        want: ServingStatus,
        within: Duration,
    ) -> Duration {
        let start = Instant::now();
        while overall(reporter).await != want as i32 {
            assert!(
                start.elapsed() < within,
                "health did not become {want:?} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        start.elapsed()
    }

    /// An address where nothing listens.
    async fn closed_port() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
    }

    #[tokio::test]
    async fn a_database_that_refuses_fails_calls_fast_and_is_not_ready() {
        let addr = closed_port().await;
        let db = Db::connect_lazy(
            &format!("postgres://ebb@{addr}/ebb"),
            &PoolOptions {
                max_connections: 2,
                acquire_timeout: Duration::from_secs(1),
            },
        )
        .await
        .expect("lazy pool");
        let started = Instant::now();
        let err = sea_orm::ConnectionTrait::execute_unprepared(&db.conn, "SELECT 1")
            .await
            .expect_err("nothing listens");
        let error = crate::Error::from(err);
        assert_eq!(error.code(), tonic::Code::Unavailable, "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        assert!(!db.ping_within(READINESS_PING_TIMEOUT).await);

        // A new reporter answers SERVING for the overall status until told otherwise.
        let (reporter, _) = tonic_health::server::health_reporter();
        assert_eq!(overall(&reporter).await, ServingStatus::Serving as i32);
        let shutdown = CancellationToken::new();
        let watcher = tokio::spawn(watch_readiness(
            vec![("ebb.test.v1.TestService", db)],
            reporter.clone(),
            shutdown.clone(),
        ));
        let down = time_until(&reporter, ServingStatus::NotServing, Duration::from_secs(5)).await;
        eprintln!("health: NOT_SERVING {down:?} after watching a database that refuses");
        shutdown.cancel();
        watcher.await.expect("watcher");
    }

    /// What a [`Relay`] does with traffic.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Mode {
        /// Relays.
        Open,
        /// Closes every connection, and new ones at once: a database that went away.
        Cut,
        /// Holds every connection open and silent: a database behind a dead network path.
        Frozen,
    }

    /// A TCP relay to `upstream` whose traffic can be cut or frozen, and restored.
    struct Relay {
        addr: std::net::SocketAddr,
        mode: Arc<tokio::sync::watch::Sender<Mode>>,
    }

    impl Relay {
        async fn start(upstream: String) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let mode = Arc::new(tokio::sync::watch::channel(Mode::Open).0);
            let modes = mode.clone();
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    tokio::spawn(relay(inbound, upstream.clone(), modes.subscribe()));
                }
            });
            Self { addr, mode }
        }

        fn set(&self, mode: Mode) {
            self.mode.send_replace(mode);
        }
    }

    async fn relay(
        mut inbound: tokio::net::TcpStream,
        upstream: String,
        mut mode: tokio::sync::watch::Receiver<Mode>,
    ) {
        let current = *mode.borrow_and_update();
        if current == Mode::Open
            && let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await
        {
            tokio::select! {
                _ = copy_bidirectional(&mut inbound, &mut outbound) => return,
                _ = mode.wait_for(|m| *m != Mode::Open) => {}
            }
            // Frozen: keep both ends open and silent until the mode changes again.
            let _ = mode.wait_for(|m| *m != Mode::Frozen).await;
            return;
        }
        if current == Mode::Frozen {
            let _ = mode.wait_for(|m| *m != Mode::Frozen).await;
        }
    }

    /// The host and port of a database URL.
    fn host_port(url: &str) -> String {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        rest[..end].to_owned()
    }

    #[tokio::test]
    async fn readiness_follows_a_database_that_goes_and_comes_back() {
        let Some(server) = std::env::var("EBB_TEST_DATABASE_URL")
            .ok()
            .filter(|u| u.starts_with("postgres"))
        else {
            eprintln!("skipping: EBB_TEST_DATABASE_URL is not set");
            return;
        };
        let upstream = host_port(&server);
        let relay = Relay::start(upstream.clone()).await;
        let url = server.replacen(&upstream, &relay.addr.to_string(), 1);
        let db = Db::connect_with(
            &url,
            &PoolOptions {
                max_connections: 4,
                acquire_timeout: crate::db::DEFAULT_ACQUIRE_TIMEOUT,
            },
        )
        .await
        .expect("connect through the relay");
        let (reporter, _) = tonic_health::server::health_reporter();
        let shutdown = CancellationToken::new();
        let watcher = tokio::spawn(watch_readiness(
            vec![
                ("ebb.test.v1.OneService", db.clone()),
                ("ebb.test.v1.OtherService", db.clone()),
            ],
            reporter.clone(),
            shutdown.clone(),
        ));
        let limit = Duration::from_secs(5);
        time_until(&reporter, ServingStatus::Serving, limit).await;

        // The database goes away: connections close, new ones are refused.
        relay.set(Mode::Cut);
        let cut_down = time_until(&reporter, ServingStatus::NotServing, limit).await;
        let started = Instant::now();
        let err = sea_orm::ConnectionTrait::execute_unprepared(&db.conn, "SELECT 1")
            .await
            .expect_err("the database is cut off");
        let cut_call = started.elapsed();
        assert_eq!(crate::Error::from(err).code(), tonic::Code::Unavailable);
        relay.set(Mode::Open);
        let cut_up = time_until(&reporter, ServingStatus::Serving, limit).await;

        // The network path dies: connections stay open and nothing answers.
        relay.set(Mode::Frozen);
        let frozen_down = time_until(&reporter, ServingStatus::NotServing, limit).await;
        let started = Instant::now();
        let err = sea_orm::ConnectionTrait::execute_unprepared(&db.conn, "SELECT 1")
            .await
            .expect_err("the database is silent");
        let frozen_call = started.elapsed();
        assert_eq!(crate::Error::from(err).code(), tonic::Code::Unavailable);
        assert!(frozen_call <= crate::db::DEFAULT_ACQUIRE_TIMEOUT + Duration::from_secs(1));
        relay.set(Mode::Open);
        let frozen_up = time_until(&reporter, ServingStatus::Serving, limit).await;
        eprintln!(
            "health after a cut: NOT_SERVING in {cut_down:?}, SERVING in {cut_up:?} after the \
             return, a call failed UNAVAILABLE in {cut_call:?}; after a freeze: NOT_SERVING in \
             {frozen_down:?}, SERVING in {frozen_up:?}, a call failed UNAVAILABLE in \
             {frozen_call:?}"
        );
        shutdown.cancel();
        watcher.await.expect("watcher");
    }
}
