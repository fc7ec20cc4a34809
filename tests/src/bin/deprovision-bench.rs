//! Deprovisioning benchmark on PostgreSQL over 9,331-entity graphs of depth 5: planning, a
//! cascade whose steps end at once (nothing materializes the entities), the rate at which
//! elapsed grace periods are finalized, and cascades whose every entity is a workspace torn
//! down by runners that claim its destroy run and report success at once.
//!
//! ```sh
//! cargo build --profile dist --bins
//! EBB_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres target/dist/deprovision-bench
//! ```
//!
//! `EBB_BENCH_CASCADES` (default 3) sets how many runner cascades are timed,
//! `EBB_BENCH_RUNNERS` (default 8) how many runners claim concurrently,
//! `EBB_BENCH_PER_CLAIM` (default `1,16`) how many runs each runner claims per call — each
//! number a series of cascades: 1 claims with ClaimRun, more with ClaimRuns and completes
//! them side by side — and `EBB_BENCH_TIMEOUT_SECS` (default 300) how long one cascade may
//! take before the bench gives up on it. Each runner cascade starts on a freshly vacuumed
//! database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ebb_tests::TestDatabases;
use ebb_tests::cluster::{Cluster, fixture};
use ebb_tests::proto::lifecycle::v1 as pb;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

const CATALOG: &str = include_str!("../../../deploy/catalog/deprovision-tenant.yaml");

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn grace(seconds: f64) -> Option<prost_types::Struct> {
    Some(prost_types::Struct {
        fields: [(
            "gracePeriodSeconds".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(seconds)),
            },
        )]
        .into(),
    })
}

/// A seeded graph: its root tenant and how many entities and edges it has.
struct Graph {
    root: String,
    entities: usize,
    edges: usize,
}

/// A tree of depth 5 with 6 children per node below the root: 1 + 6 + 36 + 216 + 1296 +
/// 7776 = 9,331 entities, 9,330 runs_on edges from each node to its children. With
/// `project`, every entity is materialized by a workspace of its own in that project.
async fn seed_graph(sql: &DatabaseConnection, org: &str, project: Option<&str>) -> Graph {
    let now = chrono::Utc::now().timestamp_millis();
    // Each node is (id, parent id).
    let root = uuid::Uuid::new_v4().to_string();
    let mut levels: Vec<Vec<(String, String)>> = vec![vec![(root.clone(), String::new())]];
    for depth in 1..=5 {
        let next: Vec<(String, String)> = levels[depth - 1]
            .iter()
            .flat_map(|(p, _)| (0..6).map(move |_| (uuid::Uuid::new_v4().to_string(), p.clone())))
            .collect();
        levels.push(next);
    }
    let mut workspace_rows = Vec::new();
    let mut entity_rows = Vec::new();
    let mut edge_rows = Vec::new();
    for (depth, level) in levels.iter().enumerate() {
        let kind = [
            "tenant",
            "app_stack",
            "network_stack",
            "account",
            "account",
            "account",
        ][depth];
        for (id, parent) in level {
            // The workspace has the entity's id.
            let workspace = match project {
                Some(project) => {
                    workspace_rows.push(format!(
                        "('{id}', '{org}', '{project}', '{id}', '{{}}', 'active', FALSE, FALSE, FALSE, '', '/srv/{id}', \
                         TRUE, 'idle', TRUE, {shard}, {now}, {now})",
                        shard = workspace_rows.len() % 1024
                    ));
                    format!("'{id}'")
                }
                None => "NULL".to_owned(),
            };
            entity_rows.push(format!(
                "('{id}', '{org}', '{kind}', '{id}', 'active', '{{}}', {workspace}, {now}, {now})"
            ));
            if !parent.is_empty() {
                edge_rows.push(format!(
                    "('{}', '{org}', 'runs_on', '{parent}', '{id}', 'active', {now}, {now})",
                    uuid::Uuid::new_v4()
                ));
            }
        }
    }
    let inserts = [
        (
            "INSERT INTO workspaces (id, organization_id, project_id, name, labels, state, protected, protected_by_policy, \
             locked, lock_reason, working_directory, inherits_project_auto_destroy, auto_destroy_status, \
             applied_since_destroy, shard_key, created_at, updated_at) VALUES ",
            &workspace_rows,
        ),
        (
            "INSERT INTO entities (id, organization_id, kind, name, state, attributes, workspace_id, created_at, updated_at) VALUES ",
            &entity_rows,
        ),
        (
            "INSERT INTO relationships (id, organization_id, type, from_entity_id, to_entity_id, state, created_at, updated_at) VALUES ",
            &edge_rows,
        ),
    ];
    for (insert, rows) in inserts {
        for chunk in rows.chunks(2000) {
            sql.execute_unprepared(&format!("{insert}{}", chunk.join(",")))
                .await
                .expect("seed the graph");
        }
    }
    sql.execute_unprepared("ANALYZE workspaces; ANALYZE entities; ANALYZE relationships")
        .await
        .expect("analyze");
    Graph {
        root,
        entities: entity_rows.len(),
        edges: edge_rows.len(),
    }
}

/// One number from `query`.
async fn count(sql: &DatabaseConnection, query: &str) -> i64 {
    let row = sql
        .query_one_raw(Statement::from_string(sql.get_database_backend(), query))
        .await
        .expect("count")
        .expect("a row");
    row.try_get_by_index::<i64>(0).expect("a number")
}

/// An action run's status as stored.
async fn action_run_status(sql: &DatabaseConnection, id: &str) -> String {
    let row = sql
        .query_one_raw(Statement::from_sql_and_values(
            sql.get_database_backend(),
            "SELECT status FROM action_runs WHERE id = $1",
            [id.into()],
        ))
        .await
        .expect("action run status")
        .expect("the action run");
    row.try_get("", "status").expect("status")
}

/// What one runner cascade took.
struct Timed {
    first_wave: Duration,
    first_wave_runs: i64,
    whole: Duration,
    completed: usize,
    status: String,
}

/// Triggers DeprovisionTenant on `graph` (grace period 0) with `runners` instant runners
/// claiming, and times it until the action run ends.
async fn runner_cascade(
    cluster: &Cluster,
    sql: &DatabaseConnection,
    org: &str,
    graph: &Graph,
    runners: usize,
    per_claim: usize,
    timeout: Duration,
) -> Timed {
    let mut dep = cluster.deprovision().await;
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..runners {
        tasks.push(tokio::spawn(ebb_tests::runners::instant_runner(
            cluster.runner().await,
            org.to_owned(),
            format!("bench-{i}"),
            per_claim,
            stop.clone(),
            completed.clone(),
        )));
    }
    let before_runs = count(sql, "SELECT count(*) FROM runs").await;
    let t = Instant::now();
    let r = dep
        .trigger_action(pb::TriggerActionRequest {
            entity_id: graph.root.clone(),
            action: "DeprovisionTenant".into(),
            parameters: grace(0.0),
            confirm_count: graph.entities as i32,
            ..Default::default()
        })
        .await
        .expect("trigger")
        .into_inner();
    // The first wave's destroy runs are queued when the trigger commits.
    let first_wave = t.elapsed();
    assert_eq!(r.plan.len(), graph.entities);
    let run_id = r.action_run.expect("an action run").id;
    let first_wave_runs = count(sql, "SELECT count(*) FROM runs").await - before_runs;
    let status = loop {
        let status = action_run_status(sql, &run_id).await;
        if status != "running" || t.elapsed() > timeout {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let whole = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("runner");
    }
    Timed {
        first_wave,
        first_wave_runs,
        whole,
        completed: completed.load(Ordering::Relaxed),
        status,
    }
}

#[tokio::main]
async fn main() {
    let Some(pg) = ebb_tests::postgres_url() else {
        eprintln!("set EBB_TEST_DATABASE_URL to a PostgreSQL server");
        std::process::exit(2);
    };
    let cascades = env_number("EBB_BENCH_CASCADES", 3) as usize;
    let runners = env_number("EBB_BENCH_RUNNERS", 8) as usize;
    let timeout = Duration::from_secs(env_number("EBB_BENCH_TIMEOUT_SECS", 300));
    let cluster = Cluster::start_on(TestDatabases::on(Some(pg)), 0, &[]).await;
    let mut api = cluster.api().await;
    let mut dep = cluster.deprovision().await;
    dep.apply_catalog(pb::ApplyCatalogRequest {
        yaml: CATALOG.into(),
        ..Default::default()
    })
    .await
    .expect("catalog");
    let f = fixture(&mut api, None, "bench").await;
    let sql = cluster.lifecycle_sql().await;

    let graph = seed_graph(&sql, &f.org.id, None).await;
    let mut plans = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let r = dep
            .trigger_action(pb::TriggerActionRequest {
                entity_id: graph.root.clone(),
                action: "DeprovisionTenant".into(),
                dry_run: true,
                parameters: grace(1.0),
                ..Default::default()
            })
            .await
            .expect("plan")
            .into_inner();
        plans.push(t.elapsed());
        assert_eq!(r.plan.len(), graph.entities);
    }
    println!(
        "plan (dry run) over {} entities, depth 5: median {:.1} ms",
        graph.entities,
        median(plans)
    );
    let t = Instant::now();
    let r = dep
        .trigger_action(pb::TriggerActionRequest {
            entity_id: graph.root.clone(),
            action: "DeprovisionTenant".into(),
            parameters: grace(1.0),
            confirm_count: graph.entities as i32,
            ..Default::default()
        })
        .await
        .expect("trigger")
        .into_inner();
    println!(
        "trigger without workspaces (plan, {} steps ending at once, {} edges to removing, cascade completion with 1s grace): {:.0} ms, status {:?}",
        r.plan.len(),
        graph.edges,
        t.elapsed().as_secs_f64() * 1000.0,
        r.action_run.map(|a| a.status)
    );

    // Sweep: every edge's grace period has elapsed; finalize them in batches.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut scheduling = cluster.scheduling().await;
    let t = Instant::now();
    let mut total = 0;
    loop {
        let n = scheduling
            .finalize_elapsed_grace_periods(pb::FinalizeElapsedGracePeriodsRequest { limit: 1000 })
            .await
            .expect("sweep")
            .into_inner()
            .finalized;
        total += n;
        if n == 0 {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "sweep: {total} edges finalized in {secs:.2} s = {:.0} edges/s (batches of 1000, one caller)",
        total as f64 / secs
    );

    // Cascades torn down by runners: each entity a workspace, each step a destroy run.
    let per_claims: Vec<usize> = std::env::var("EBB_BENCH_PER_CLAIM")
        .unwrap_or_else(|_| "1,16".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("EBB_BENCH_PER_CLAIM: numbers 1-100")
        })
        .collect();
    let mut runs_written = false;
    for per_claim in per_claims {
        let mut first_waves = Vec::new();
        let mut wholes = Vec::new();
        for i in 0..cascades {
            let graph = seed_graph(&sql, &f.org.id, Some(&f.project.id)).await;
            // Each cascade starts on a database as autovacuum leaves a deployed one between
            // cascades: vacuumed, so the runs an earlier cascade claimed leave no dead entries
            // at the head of the queue's index for every claim to step over, and analyzed. The
            // first cascade finds no run yet: the run tables are left unanalyzed then, as
            // autovacuum leaves a table nothing was written to. Statistics taken of an empty
            // table would have each connection plan the claim once for an empty queue and keep
            // that plan (a full scan) until the next analyze, which autovacuum brings within a
            // minute of the first runs in a deployment and never on a server with it off.
            let vacuum = if !runs_written {
                "ANALYZE entities, relationships, workspaces, projects, organizations"
            } else {
                "VACUUM (ANALYZE)"
            };
            sql.execute_unprepared(vacuum).await.expect("vacuum");
            runs_written = true;
            let timed = runner_cascade(
                &cluster, &sql, &f.org.id, &graph, runners, per_claim, timeout,
            )
            .await;
            println!(
                "runner cascade {} ({per_claim} per claim): trigger → first wave ({} destroy run(s)) queued {:.0} ms; \
                 whole cascade ({} steps, {} runs completed by {runners} instant runners, grace 0) {:.2} s = {:.0} steps/s, status {}",
                i + 1,
                timed.first_wave_runs,
                timed.first_wave.as_secs_f64() * 1000.0,
                graph.entities,
                timed.completed,
                timed.whole.as_secs_f64(),
                graph.entities as f64 / timed.whole.as_secs_f64(),
                timed.status
            );
            assert_eq!(
                timed.status, "succeeded",
                "the cascade ends within the timeout"
            );
            first_waves.push(timed.first_wave);
            wholes.push(timed.whole);
        }
        if !wholes.is_empty() {
            let n = wholes.len();
            println!(
                "runner cascades, {per_claim} per claim: median trigger → first wave queued {:.0} ms, median whole cascade {:.2} s ({} runs)",
                median(first_waves),
                median(wholes) / 1000.0,
                n
            );
        }
    }
}
