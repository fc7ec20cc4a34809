//! Auto-destroy benchmark on PostgreSQL: due→queued latency and queued runs per second with 1
//! and 3 scheduler replicas, the cost of an idle tick as the number of workspaces grows, and
//! the cost of a metrics scrape with a due backlog.
//!
//! ```sh
//! cargo build --release --bins
//! EBB_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres target/release/auto-destroy-bench
//! ```
//!
//! Options (environment): `BENCH_WORKSPACES` (100000), `BENCH_DUE` (10000),
//! `BENCH_IDLE_LARGE` (1000000), `BENCH_REPLICAS` ("1,3").

use std::time::{Duration, Instant};

use ebb_tests::TestDatabases;
use ebb_tests::cluster::Cluster;
use ebb_tests::proto::lifecycle::v1 as pb;
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

async fn queue_wave(pg: &str, total: usize, due: usize, replicas: usize) {
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
        "replicas={replicas} workspaces={total} due={due} queued={} due->queued p50={}ms p99={}ms max={}ms throughput={:.0} runs/s",
        lags.len(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
        lags.len() as f64 / span_s
    );
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
    for r in replicas
        .split(',')
        .filter_map(|r| r.trim().parse::<usize>().ok())
    {
        queue_wave(&pg, total, due, r).await;
    }
    idle_tick(&pg, total).await;
    scrape_cost(&pg, total, due).await;
    if large > 0 {
        idle_tick(&pg, large).await;
    }
}
