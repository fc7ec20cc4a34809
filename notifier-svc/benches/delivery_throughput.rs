//! Deliveries per second from two notifier-svc replicas on PostgreSQL to a local receiver.
//!
//! `cargo bench -p notifier-svc --bench delivery_throughput`; PostgreSQL from
//! `EBB_BENCH_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`), where a
//! fresh database is created and dropped. `EBB_BENCH_EVENTS` and `EBB_BENCH_CONFIGURATIONS` size
//! the run (default 1000 × 10 = 10,000 deliveries).

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ebb_proto::notifier::v1 as pb;
use pb::notifier_service_client::NotifierServiceClient;
use sea_orm::{ConnectionTrait, Database};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The bootstrap admin token the replicas are started with and the bench presents.
const TOKEN: &str = "ebb-bench-admin-token-7d41c0";

type Client = NotifierServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

fn bearer(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let value = format!("Bearer {TOKEN}")
        .parse()
        .map_err(|_| tonic::Status::internal("token header"))?;
    r.metadata_mut().insert("authorization", value);
    Ok(r)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `ebb` binary of the same profile, which runs the notifier (`ebb service notifier`).
fn ebb_binary() -> anyhow::Result<std::path::PathBuf> {
    // <target>/<profile>/deps/<bench>
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("ebb"))
        .ok_or_else(|| anyhow::anyhow!("no profile directory above {}", exe.display()))?;
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build it first with `cargo build --release --bin ebb`",
        path.display()
    );
    Ok(path)
}

async fn start_replica(config: &std::path::Path, url: &str) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(ebb_binary()?)
        .args(["service", "notifier"])
        .args(["--listen", "127.0.0.1:0", "--database-url", url, "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("EBB_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("EBB_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some((_, addr)) = line.split_once(" listening on ") {
                return Ok::<_, anyhow::Error>(
                    addr.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
        anyhow::bail!("notifier-svc exited before listening")
    })
    .await??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, format!("http://{addr}")))
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tonic::transport::Channel::from_shared(url.to_owned())?
            .connect()
            .await
        {
            Ok(c) => return Ok(NotifierServiceClient::with_interceptor(c, bearer as _)),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = std::env::var("EBB_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let events = env_or("EBB_BENCH_EVENTS", 1000);
    let configurations = env_or("EBB_BENCH_CONFIGURATIONS", 10);
    let db_name = format!("ebb_bench_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(server.as_str()).await?;
    admin
        .execute_unprepared(&format!("CREATE DATABASE {db_name}"))
        .await?;
    let url = match server.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db_name}"),
        None => anyhow::bail!("EBB_BENCH_DATABASE_URL has no database path"),
    };
    let result = run(&url, events, configurations).await;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .await?;
    result
}

async fn run(url: &str, events: usize, configurations: usize) -> anyhow::Result<()> {
    // The receiver: answers 200 to everything and counts.
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let app = axum::Router::new().route(
        "/{hook}",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("notifier.toml");
    std::fs::write(
        &config,
        "[delivery]\nconcurrency = 128\nbatch_size = 200\npoll_interval = \"20ms\"\n\
         [egress]\nallow_loopback = true\n",
    )?;
    let (_a, url_a) = start_replica(&config, url).await?;
    let (_b, url_b) = start_replica(&config, url).await?;
    let mut client_a = connect(&url_a).await?;
    let client_b = connect(&url_b).await?;

    for i in 0..configurations {
        client_a
            .create_notification_configuration(pb::CreateNotificationConfigurationRequest {
                request_id: String::new(),
                configuration: Some(pb::NotificationConfiguration {
                    organization_id: "org_bench".into(),
                    name: format!("bench {i}"),
                    destination_type: pb::DestinationType::Webhook as i32,
                    url: format!("http://{receiver}/hook{i}"),
                    event_types: vec!["workspace.auto_destroy.*".into()],
                    enabled: true,
                    ..Default::default()
                }),
            })
            .await?;
    }
    let verifications = received.load(Ordering::Relaxed);
    let expected = (events * configurations) as u64;
    let started = Instant::now();
    let publishers = 16;
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let mut client = if p % 2 == 0 {
            client_a.clone()
        } else {
            client_b.clone()
        };
        tasks.push(tokio::spawn(async move {
            for i in (p..events).step_by(publishers) {
                client
                    .publish_event(pb::PublishEventRequest {
                        event: Some(pb::Event {
                            id: format!("evt_bench_{i}"),
                            organization_id: "org_bench".into(),
                            r#type: "workspace.auto_destroy.reminder".into(),
                            subject_type: "workspace".into(),
                            subject_id: format!("ws_{i}"),
                            ..Default::default()
                        }),
                    })
                    .await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let published = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    while received.load(Ordering::Relaxed) - verifications < expected {
        anyhow::ensure!(
            Instant::now() < deadline,
            "deliveries did not finish in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let delivered = received.load(Ordering::Relaxed) - verifications;
    println!(
        "notifier delivery throughput: {delivered} deliveries ({events} events x {configurations} configurations) \
         by 2 replicas on PostgreSQL in {:.2}s (publishing took {:.2}s): {:.0} deliveries/s",
        elapsed.as_secs_f64(),
        published.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
