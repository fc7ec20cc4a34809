//! Auto-destroy benchmark on PostgreSQL: due→queued latency and queued runs per second with 1
//! and 3 scheduler replicas (each wave drained once alone, and once more while callers read
//! workspaces, whose latency it prints), the cost of an idle tick as the number of workspaces grows, and
//! the cost of a metrics scrape with a due backlog.
//!
//! ```sh
//! cargo build --profile dist --bins
//! EBB_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres target/dist/auto-destroy-bench
//! ```
//!
//! Options (environment): `BENCH_WORKSPACES` (100000), `BENCH_DUE` (10000),
//! `BENCH_IDLE_LARGE` (1000000), `BENCH_REPLICAS` ("1,3"), `BENCH_RELAYED` (1000000).
//!
//! `--relay-only` measures only the outbox relay: a round with `BENCH_RELAYED` events already
//! relayed and nothing pending, and the pruning of those events once past the retention.

use std::time::{Duration, Instant};

use ebb_tests::cluster::Cluster;
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::lifecycle::v1::scheduling_service_client::SchedulingServiceClient;
use ebb_tests::{Channel, TestDatabases};
use sea_orm::{ConnectionTrait, FromQueryResult, Statement};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(FromQueryResult)]
struct Lag {
    lag_ms: i64,
    created_at: i64,
}

async fn seed(sql: &sea_orm::DatabaseConnection, total: usize, due: usize, due_at: i64) {
    let now = chrono::Utc::now().timestamp_millis();
    sql.execute_unprepared(&format!(
        "INSERT INTO organizations (id, name, reminder_lead_times_ms, destroy_retry_limit, max_inactivity_ms, protected_labels, created_at, updated_at) \
         VALUES ('00000000-0000-7000-8000-000000000001', 'bench', '[]', 2, 863913600000, '{{}}', {now}, {now});
         INSERT INTO projects (id, organization_id, name, created_at, updated_at) \
         VALUES ('00000000-0000-7000-8000-000000000002', '00000000-0000-7000-8000-000000000001', 'bench', {now}, {now});
         INSERT INTO workspaces (id, organization_id, project_id, name, labels, state, protected, protected_by_policy, locked, lock_reason, working_directory, \
            inherits_project_auto_destroy, auto_destroy_status, applied_since_destroy, shard_key, auto_destroy_at, next_auto_destroy_at, created_at, updated_at) \
         SELECT md5(i::text)::uuid::text, '00000000-0000-7000-8000-000000000001', '00000000-0000-7000-8000-000000000002', 'w' || i, '{{}}', 'active', FALSE, FALSE, FALSE, '', '', \
            TRUE, 'idle', FALSE, (i::bigint * 7919) % 1073741824, \
            CASE WHEN i <= {due} THEN {due_at} ELSE NULL END, CASE WHEN i <= {due} THEN {due_at} ELSE NULL END, {now}, {now} \
         FROM generate_series(1, {total}) AS i;
         ANALYZE workspaces;"
    ))
    .await
    .expect("seed workspaces");
}

/// One wave of `due` workspaces falling due at one instant among `total`, drained by
/// `replicas` schedulers; with `reading`, [`READERS`] callers read workspaces all the while.
async fn queue_wave(pg: &str, total: usize, due: usize, replicas: usize, reading: bool) {
    let cluster = Cluster::start_on(TestDatabases::on(Some(pg.to_owned())), 0, &[]).await;
    let sql = cluster.lifecycle_sql().await;
    let due_at = chrono::Utc::now().timestamp_millis() + 20_000;
    let t = Instant::now();
    seed(&sql, total, due, due_at).await;
    eprintln!("seeded {total} workspaces in {:?}", t.elapsed());
    let mut cluster = cluster;
    for _ in 0..replicas {
        cluster.add_scheduler().await;
    }
    let wait = due_at - chrono::Utc::now().timestamp_millis();
    let from = Instant::now() + Duration::from_millis(wait.max(0) as u64);
    let readers = if reading {
        Some(readers_during_the_wave(&cluster, &sql, from).await)
    } else {
        None
    };
    let wait = due_at - chrono::Utc::now().timestamp_millis();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n: i64 = sql
            .query_one_raw(Statement::from_string(
                sql.get_database_backend(),
                "SELECT COUNT(*) AS n FROM runs",
            ))
            .await
            .expect("count")
            .expect("row")
            .try_get("", "n")
            .expect("n");
        if n as usize >= due || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lags = Lag::find_by_statement(Statement::from_string(
        sql.get_database_backend(),
        "SELECT created_at - fire_due_at AS lag_ms, created_at FROM runs ORDER BY lag_ms",
    ))
    .all(&sql)
    .await
    .expect("lags");
    let pct = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)].lag_ms;
    let first = lags.iter().map(|l| l.created_at).min().unwrap_or_default();
    let last = lags.iter().map(|l| l.created_at).max().unwrap_or_default();
    let span_s = ((last - first).max(1)) as f64 / 1000.0;
    println!(
        "replicas={replicas} readers={} workspaces={total} due={due} queued={} due->queued p50={}ms p99={}ms max={}ms throughput={:.0} runs/s",
        if reading { READERS } else { 0 },
        lags.len(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
        lags.len() as f64 / span_s
    );
    let Some((stop, tasks)) = readers else {
        return;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut reads = Vec::new();
    for t in tasks {
        reads.extend(t.await.expect("reader"));
    }
    reads.sort();
    let at = |p: f64| {
        reads
            .get(((reads.len() as f64 * p) as usize).min(reads.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "replicas={replicas} GetWorkspace while the wave drains (reader token, {READERS} callers): calls={} p50={:.1}ms p99={:.1}ms max={:.1}ms",
        reads.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// Callers reading workspaces while the wave drains.
const READERS: usize = 4;

type Readers = (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Vec<tokio::task::JoinHandle<Vec<Duration>>>,
);

/// [`READERS`] callers of GetWorkspace with a reader token of the seeded organization, each
/// calling back to back over the due workspaces from `from` (the due instant) until told to
/// stop; their latencies.
async fn readers_during_the_wave(
    cluster: &Cluster,
    sql: &sea_orm::DatabaseConnection,
    from: Instant,
) -> Readers {
    #[derive(FromQueryResult)]
    struct Id {
        id: String,
    }
    let ids: Vec<String> = Id::find_by_statement(Statement::from_string(
        sql.get_database_backend(),
        "SELECT id FROM workspaces WHERE next_auto_destroy_at IS NOT NULL ORDER BY id LIMIT 1000",
    ))
    .all(sql)
    .await
    .expect("ids")
    .into_iter()
    .map(|r| r.id)
    .collect();
    let mut tokens = ebb_tests::proto::lifecycle::v1::token_service_client::TokenServiceClient::new(
        cluster.lifecycle.channel().await,
    );
    let secret = tokens
        .create_token(pb::CreateTokenRequest {
            organization_id: "00000000-0000-7000-8000-000000000001".into(),
            role: pb::TokenRole::Reader as i32,
            description: "bench reader".into(),
            ..Default::default()
        })
        .await
        .expect("reader token")
        .into_inner()
        .secret;
    let api =
        ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient::new(
            cluster.lifecycle.channel_as(&secret).await,
        );
    let ids = std::sync::Arc::new(ids);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = (0..READERS)
        .map(|r| {
            let (mut api, ids, stop) = (api.clone(), ids.clone(), stop.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(from.into()).await;
                let mut latencies = Vec::new();
                let mut i = r * 251;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i = (i + 7) % ids.len();
                    let t = Instant::now();
                    api.get_workspace(pb::GetWorkspaceRequest {
                        workspace_id: ids[i].clone(),
                    })
                    .await
                    .expect("GetWorkspace");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    (stop, tasks)
}

async fn idle_tick(pg: &str, total: usize) {
    let cluster = Cluster::start_on(TestDatabases::on(Some(pg.to_owned())), 0, &[]).await;
    let sql = cluster.lifecycle_sql().await;
    let far = chrono::Utc::now().timestamp_millis() + 86_400_000;
    let t = Instant::now();
    // Every workspace is scheduled, none is due: the worst case for an idle tick.
    seed(&sql, total, total, far).await;
    eprintln!("seeded {total} workspaces in {:?}", t.elapsed());
    let mut scheduling = cluster.scheduling().await;
    let mut samples = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let r = scheduling
            .find_due_workspaces(pb::FindDueWorkspacesRequest {
                shard: 0,
                shard_count: 4,
                limit: 500,
                after: None,
            })
            .await
            .expect("find due");
        assert!(r.into_inner().due.is_empty());
        samples.push(t.elapsed());
    }
    samples.sort();
    println!(
        "idle tick workspaces={total} (all scheduled, none due) median={:.2}ms p99={:.2}ms",
        samples[samples.len() / 2].as_secs_f64() * 1000.0,
        samples[samples.len() * 99 / 100].as_secs_f64() * 1000.0
    );
}

/// The cost of one page of `page` due workspaces, with `due` due among `total` and no
/// scheduler running: in two calls (FindDueWorkspaces, then QueueAutoDestroyRuns) over half of
/// the shards, and in one (QueueDueWorkspaces) over the other half.
async fn page_cost(pg: &str, total: usize, due: usize, page: i32) {
    let cluster = Cluster::start_on(TestDatabases::on(Some(pg.to_owned())), 0, &[]).await;
    let sql = cluster.lifecycle_sql().await;
    let past = chrono::Utc::now().timestamp_millis() - 60_000;
    seed(&sql, total, due, past).await;
    let mut scheduling = cluster.scheduling().await;
    let (mut finds, mut queues, mut ones) = (Vec::new(), Vec::new(), Vec::new());
    // One call on even shards, two on odd ones, in turn, so that neither way has the table to
    // itself before the other.
    for shard in 0..4 {
        if shard % 2 == 1 {
            page_in_two_calls(&mut scheduling, shard, page, &mut finds, &mut queues).await;
            continue;
        }
        let mut after = None;
        loop {
            let t = Instant::now();
            let r = scheduling
                .queue_due_workspaces(pb::QueueDueWorkspacesRequest {
                    shard,
                    shard_count: 4,
                    limit: page,
                    after,
                })
                .await
                .expect("queue due")
                .into_inner();
            if r.results.is_empty() {
                break;
            }
            ones.push(t.elapsed());
            after = r.last;
            if after.is_none() {
                break;
            }
        }
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1000.0
    };
    println!(
        "one page of {page}: FindDueWorkspaces median={:.1}ms QueueAutoDestroyRuns median={:.1}ms ({} pages); QueueDueWorkspaces median={:.1}ms ({} pages)",
        median(finds),
        median(queues.clone()),
        queues.len(),
        median(ones.clone()),
        ones.len()
    );
}

/// The pages of one shard, each found with FindDueWorkspaces and queued with
/// QueueAutoDestroyRuns, timing both calls.
async fn page_in_two_calls(
    scheduling: &mut SchedulingServiceClient<Channel>,
    shard: i32,
    page: i32,
    finds: &mut Vec<Duration>,
    queues: &mut Vec<Duration>,
) {
    loop {
        let t = Instant::now();
        let keys = scheduling
            .find_due_workspaces(pb::FindDueWorkspacesRequest {
                shard,
                shard_count: 4,
                limit: page,
                after: None,
            })
            .await
            .expect("find due")
            .into_inner()
            .due;
        finds.push(t.elapsed());
        if keys.is_empty() {
            break;
        }
        let t = Instant::now();
        scheduling
            .queue_auto_destroy_runs(pb::QueueAutoDestroyRunsRequest { fire_keys: keys })
            .await
            .expect("queue");
        queues.push(t.elapsed());
    }
}

/// The cost of one scrape of lifecycle's metrics with `due` workspaces due and unhandled (no
/// scheduler runs) among `total`: the gauges are read from the database at scrape time.
async fn scrape_cost(pg: &str, total: usize, due: usize) {
    let cluster = Cluster::start_on(TestDatabases::on(Some(pg.to_owned())), 0, &[]).await;
    let sql = cluster.lifecycle_sql().await;
    let past = chrono::Utc::now().timestamp_millis() - 60_000;
    seed(&sql, total, due, past).await;
    let mut samples = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let scrape = cluster.lifecycle.scrape().await.expect("scrape");
        samples.push(t.elapsed());
        assert_eq!(
            scrape.value("ebb_due_backlog", &[("kind", "auto_destroy")]),
            Some(due as f64)
        );
    }
    samples.sort();
    println!(
        "metrics scrape workspaces={total} due={due} median={:.2}ms p99={:.2}ms",
        samples[samples.len() / 2].as_secs_f64() * 1000.0,
        samples[samples.len() * 99 / 100].as_secs_f64() * 1000.0
    );
}

/// One outbox relay round (lease renewal and the search for pending events) with `relayed`
/// events already acknowledged by both sinks and nothing pending; then the pruning of those
/// events, all older than the retention, and a round after it.
async fn relay_round(pg: &str, relayed: i64) {
    let cluster = Cluster::start_on(TestDatabases::on(Some(pg.to_owned())), 0, &[]).await;
    let sql = cluster.lifecycle_sql().await;
    let now = chrono::Utc::now().timestamp_millis();
    let old = now - 8 * 86_400_000;
    let t = Instant::now();
    sql.execute_unprepared(&format!(
        "INSERT INTO organizations (id, name, reminder_lead_times_ms, destroy_retry_limit, max_inactivity_ms, protected_labels, event_seq, created_at, updated_at) \
         VALUES ('00000000-0000-7000-8000-000000000001', 'bench', '[]', 2, 863913600000, '{{}}', {relayed}, {now}, {now});
         INSERT INTO outbox (id, organization_id, org_seq, type, subject_type, subject_id, actor, data, created_at) \
         SELECT md5(i::text)::uuid::text, '00000000-0000-7000-8000-000000000001', i, 'workspace.updated', 'workspace', \
            md5((i % 1000)::text)::uuid::text, 'bench', '{{\"name\":\"w\"}}', {old} + i \
         FROM generate_series(1, {relayed}) AS i;
         INSERT INTO outbox_relay_cursors (sink, organization_id, last_org_seq, updated_at) VALUES \
            ('audit', '00000000-0000-7000-8000-000000000001', {relayed}, {now}), \
            ('notifier', '00000000-0000-7000-8000-000000000001', {relayed}, {now});
         ANALYZE outbox; ANALYZE organizations; ANALYZE outbox_relay_cursors;"
    ))
    .await
    .expect("seed the outbox");
    eprintln!("seeded {relayed} relayed events in {:?}", t.elapsed());
    let db = ebb_common::db::Db::connect(&cluster.lifecycle_db, 2)
        .await
        .expect("connect");
    let count = |sql: sea_orm::DatabaseConnection| async move {
        let n: i64 = sql
            .query_one_raw(Statement::from_string(
                sql.get_database_backend(),
                "SELECT COUNT(*) AS n FROM outbox",
            ))
            .await
            .expect("count")
            .expect("row")
            .try_get("", "n")
            .expect("n");
        n
    };
    let rounds = |db: ebb_common::db::Db| async move {
        let mut samples = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            let found = lifecycle_svc::bench::relay_probe(&db, "audit", "bench")
                .await
                .expect("relay round");
            samples.push(t.elapsed());
            assert_eq!(found, 0, "nothing is pending");
        }
        samples.sort();
        samples[samples.len() / 2].as_secs_f64() * 1000.0
    };
    let median = rounds(db.clone()).await;
    println!(
        "relay round outbox={} relayed={relayed} median={median:.2}ms",
        count(sql.clone()).await
    );
    let t = Instant::now();
    let deleted =
        lifecycle_svc::bench::outbox_prune(&db, &["audit", "notifier"], 7 * 86_400_000, now)
            .await
            .expect("prune");
    let secs = t.elapsed().as_secs_f64();
    let median = rounds(db.clone()).await;
    println!(
        "outbox prune (retention 7 days) deleted={deleted} in {secs:.1}s; relay round after: outbox={} median={median:.2}ms",
        count(sql.clone()).await
    );
}

#[tokio::main]
async fn main() {
    let Some(pg) = ebb_tests::postgres_url() else {
        eprintln!("set EBB_TEST_DATABASE_URL to a PostgreSQL server");
        std::process::exit(2);
    };
    let total = env_usize("BENCH_WORKSPACES", 100_000);
    let due = env_usize("BENCH_DUE", 10_000);
    let large = env_usize("BENCH_IDLE_LARGE", 1_000_000);
    let replicas = std::env::var("BENCH_REPLICAS").unwrap_or_else(|_| "1,3".into());
    let relayed = env_usize("BENCH_RELAYED", 1_000_000) as i64;
    if std::env::args().any(|a| a == "--page-only") {
        page_cost(&pg, total, due, 500).await;
        return;
    }
    if std::env::args().any(|a| a == "--relay-only") {
        relay_round(&pg, relayed).await;
        return;
    }
    for r in replicas
        .split(',')
        .filter_map(|r| r.trim().parse::<usize>().ok())
    {
        // The drain alone, then the same wave with callers reading all the while.
        queue_wave(&pg, total, due, r, false).await;
        queue_wave(&pg, total, due, r, true).await;
    }
    idle_tick(&pg, total).await;
    scrape_cost(&pg, total, due).await;
    if large > 0 {
        idle_tick(&pg, large).await;
    }
}
