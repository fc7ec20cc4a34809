//! Read throughput against PostgreSQL's own ceiling, in one run: `pgbench -S` (one indexed
//! point select per transaction) on the same server, then GetWorkspace and ListWorkspaces on
//! lifecycle-svc over PostgreSQL, then GetWorkspace on `ebb serve` (SQLite), each driven by
//! an organization's reader token from a small load generator in this binary.
//!
//! ```sh
//! cargo build --profile dist --bins
//! EBB_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres target/dist/reads-bench
//! ```
//!
//! Options (environment): `BENCH_SECONDS` (10) per measurement, `BENCH_CONNECTIONS` (4) and
//! `BENCH_STREAMS` (32) calls in flight per connection, `BENCH_PGBENCH_CLIENTS` (8),
//! `BENCH_WORKSPACES` (1000), `BENCH_SQLITE` (1; 0 skips `ebb serve`), `BENCH_RSS` (1; 0
//! skips the idle memory of each service).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ebb_tests::cluster::{Cluster, create_workspace, fixture};
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use ebb_tests::proto::lifecycle::v1::token_service_client::TokenServiceClient;
use ebb_tests::{Process, TestDatabases};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `pgbench -S` transactions per second on a fresh scale-10 database of the server.
async fn pgbench(dbs: &mut TestDatabases, clients: usize, secs: usize) -> f64 {
    let url = dbs.create("pgbench").await;
    let run = |args: Vec<String>| async move {
        let out = tokio::process::Command::new("pgbench")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("run pgbench (installed with PostgreSQL)");
        assert!(
            out.status.success(),
            "pgbench {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(vec![
        "-i".into(),
        "-q".into(),
        "-s".into(),
        "10".into(),
        url.clone(),
    ])
    .await;
    let out = run(vec![
        "-S".into(),
        "-n".into(),
        "-c".into(),
        clients.to_string(),
        "-j".into(),
        "2".into(),
        "-T".into(),
        secs.to_string(),
        url,
    ])
    .await;
    out.lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no tps in pgbench's output:\n{out}"))
}

/// What a load run measured.
struct Load {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

#[derive(Clone, Copy)]
enum Call {
    Get,
    List,
}

/// `connections` × `streams` callers of `call` for `secs` seconds, each on its own stream of
/// one of `connections` HTTP/2 connections.
#[allow(clippy::too_many_arguments)]
async fn load(
    server: &Process,
    token: &str,
    call: Call,
    org: &str,
    ids: Arc<Vec<String>>,
    connections: usize,
    streams: usize,
    secs: usize,
) -> Load {
    let deadline = Instant::now() + Duration::from_secs(secs as u64);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let client = LifecycleServiceClient::new(server.channel_as(token).await);
        for s in 0..streams {
            let mut client = client.clone();
            let ids = ids.clone();
            let org = org.to_owned();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut i = c * 7919 + s * 104_729;
                while Instant::now() < deadline {
                    i = (i + 7919) % ids.len();
                    let t = Instant::now();
                    let ok = match call {
                        Call::Get => client
                            .get_workspace(pb::GetWorkspaceRequest {
                                workspace_id: ids[i].clone(),
                            })
                            .await
                            .is_ok(),
                        Call::List => client
                            .list_workspaces(pb::ListWorkspacesRequest {
                                organization_id: org.clone(),
                                page_size: 20,
                                ..Default::default()
                            })
                            .await
                            .is_ok(),
                    };
                    if ok {
                        latencies.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            }));
        }
    }
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("load task");
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64().max(secs as f64);
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Load {
        per_sec: all.len() as f64 / elapsed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        errors,
    }
}

/// An organization with `n` workspaces on `server`, and a reader token bound to it.
async fn seed(server: &Process, n: usize) -> (String, Arc<Vec<String>>, String) {
    let mut api = LifecycleServiceClient::new(server.channel().await);
    let f = fixture(&mut api, None, "w0").await;
    let mut ids = vec![f.workspace.id.clone()];
    let mut creating = Vec::new();
    for chunk in (1..n).collect::<Vec<_>>().chunks(n.div_ceil(8).max(1)) {
        let mut api = api.clone();
        let project = f.project.id.clone();
        let chunk = chunk.to_vec();
        creating.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in chunk {
                ids.push(
                    create_workspace(&mut api, &project, &format!("w{i}"))
                        .await
                        .id,
                );
            }
            ids
        }));
    }
    for c in creating {
        ids.extend(c.await.expect("create workspaces"));
    }
    let mut tokens = TokenServiceClient::new(server.channel().await);
    let token = tokens
        .create_token(pb::CreateTokenRequest {
            organization_id: f.org.id.clone(),
            role: pb::TokenRole::Reader as i32,
            description: "reads bench".into(),
            ..Default::default()
        })
        .await
        .expect("create a reader token")
        .into_inner()
        .secret;
    (f.org.id, Arc::new(ids), token)
}

/// The resident memory of each service, idle, a few seconds after it started serving: the four
/// services on PostgreSQL, and `ebb serve` (all of them in one process) on SQLite.
async fn idle_rss(pg: &str) {
    let mut dbs = TestDatabases::on(Some(pg.to_owned()));
    let lifecycle = ebb_tests::start_service("lifecycle-svc", &mut dbs, &[]).await;
    let scheduler = ebb_tests::start_service(
        "scheduler-svc",
        &mut dbs,
        &[("EBB_LIFECYCLE_URL", lifecycle.url())],
    )
    .await;
    let notifier = ebb_tests::start_service("notifier-svc", &mut dbs, &[]).await;
    let audit = ebb_tests::start_service("audit-svc", &mut dbs, &[]).await;
    let sqlite = TestDatabases::new();
    let data = sqlite.dir().join("data");
    let serve = Process::spawn(
        "ebb",
        &["serve", "--data-dir", data.to_str().expect("utf-8 path")],
        &[],
        sqlite.dir(),
    )
    .await
    .expect("ebb serve");
    serve.wait_serving("").await.expect("serving");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = |p: &Process| p.rss_mib().map_or("?".to_owned(), |m| format!("{m:.1}MiB"));
    println!(
        "idle RSS lifecycle-svc={} scheduler-svc={} notifier-svc={} audit-svc={} (PostgreSQL); ebb serve={} (SQLite, all four)",
        rss(&lifecycle),
        rss(&scheduler),
        rss(&notifier),
        rss(&audit),
        rss(&serve)
    );
}

fn show(what: &str, l: &Load) {
    println!(
        "{what}: {:.0} calls/s p50={:.2}ms p99={:.2}ms errors={}",
        l.per_sec, l.p50_ms, l.p99_ms, l.errors
    );
}

#[tokio::main]
async fn main() {
    let Some(pg) = ebb_tests::postgres_url() else {
        eprintln!("set EBB_TEST_DATABASE_URL to a PostgreSQL server");
        std::process::exit(2);
    };
    let secs = env_usize("BENCH_SECONDS", 10);
    let connections = env_usize("BENCH_CONNECTIONS", 4);
    let streams = env_usize("BENCH_STREAMS", 32);
    let clients = env_usize("BENCH_PGBENCH_CLIENTS", 8);
    let n = env_usize("BENCH_WORKSPACES", 1000);

    if env_usize("BENCH_RSS", 1) == 1 {
        idle_rss(&pg).await;
    }

    let mut dbs = TestDatabases::on(Some(pg.clone()));
    let ceiling = pgbench(&mut dbs, clients, secs).await;
    println!("pgbench -S clients={clients}: {ceiling:.0} tx/s");

    let cluster = Cluster::start_on(TestDatabases::on(Some(pg)), 0, &[]).await;
    let (org, ids, token) = seed(&cluster.lifecycle, n).await;
    let run = |call, token: String| {
        let (server, org, ids) = (&cluster.lifecycle, org.clone(), ids.clone());
        async move { load(server, &token, call, &org, ids, connections, streams, secs).await }
    };
    let get = run(Call::Get, token.clone()).await;
    show("GetWorkspace (PostgreSQL, reader token)", &get);
    println!(
        "ratio GetWorkspace/pgbench-S = {:.2}",
        get.per_sec / ceiling
    );
    let list = run(Call::List, token.clone()).await;
    show(
        "ListWorkspaces page_size=20 (PostgreSQL, reader token)",
        &list,
    );
    println!(
        "ratio ListWorkspaces/pgbench-S = {:.2}",
        list.per_sec / ceiling
    );
    drop(cluster);

    if env_usize("BENCH_SQLITE", 1) == 1 {
        let dbs = TestDatabases::new();
        let data = dbs.dir().join("data");
        let server = Process::spawn(
            "ebb",
            &["serve", "--data-dir", data.to_str().expect("utf-8 path")],
            &[],
            dbs.dir(),
        )
        .await
        .expect("ebb serve");
        server.wait_serving("").await.expect("serving");
        let (org, ids, token) = seed(&server, n).await;
        let l = load(
            &server,
            &token,
            Call::Get,
            &org,
            ids,
            connections,
            streams,
            secs,
        )
        .await;
        show("GetWorkspace (ebb serve, SQLite, reader token)", &l);
        println!(
            "ratio GetWorkspace SQLite/PostgreSQL = {:.2}",
            l.per_sec / get.per_sec
        );
    }
}
