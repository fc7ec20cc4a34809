//! Deprovisioning benchmark on PostgreSQL: planning and triggering over a 10,000-entity graph
//! of depth 5, and the rate at which elapsed grace periods are finalized.
//!
//! ```sh
//! cargo build --release --bins
//! EBB_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres target/release/deprovision-bench
//! ```

use std::time::{Duration, Instant};

use ebb_tests::TestDatabases;
use ebb_tests::cluster::{Cluster, fixture};
use ebb_tests::proto::lifecycle::v1 as pb;
use sea_orm::ConnectionTrait;

const CATALOG: &str = include_str!("../../../deploy/catalog/deprovision-tenant.yaml");

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let Some(pg) = ebb_tests::postgres_url() else {
        eprintln!("set EBB_TEST_DATABASE_URL to a PostgreSQL server");
        std::process::exit(2);
    };
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
    let now = chrono::Utc::now().timestamp_millis();

    // A tree of depth 5 with 6 children per node below the root: 1 + 6 + 36 + 216 + 1296 +
    // 7776 = 9,331 entities, 9,330 runs_on edges.
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
            entity_rows.push(format!(
                "('{id}', '{org}', '{kind}', '{id}', 'active', '{{}}', {now}, {now})",
                org = f.org.id
            ));
            if !parent.is_empty() {
                edge_rows.push(format!(
                    "('{}', '{org}', 'runs_on', '{parent}', '{id}', 'active', {now}, {now})",
                    uuid::Uuid::new_v4(),
                    org = f.org.id
                ));
            }
        }
    }
    for chunk in entity_rows.chunks(2000) {
        sql.execute_unprepared(&format!(
            "INSERT INTO entities (id, organization_id, kind, name, state, attributes, created_at, updated_at) VALUES {}",
            chunk.join(",")
        ))
        .await
        .expect("entities");
    }
    for chunk in edge_rows.chunks(2000) {
        sql.execute_unprepared(&format!(
            "INSERT INTO relationships (id, organization_id, type, from_entity_id, to_entity_id, state, created_at, updated_at) VALUES {}",
            chunk.join(",")
        ))
        .await
        .expect("edges");
    }
    sql.execute_unprepared("ANALYZE entities; ANALYZE relationships")
        .await
        .expect("analyze");
    let grace = Some(prost_types::Struct {
        fields: [(
            "gracePeriodSeconds".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(1.0)),
            },
        )]
        .into(),
    });
    let mut plans = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let r = dep
            .trigger_action(pb::TriggerActionRequest {
                entity_id: root.clone(),
                action: "DeprovisionTenant".into(),
                dry_run: true,
                parameters: grace.clone(),
                ..Default::default()
            })
            .await
            .expect("plan")
            .into_inner();
        plans.push(t.elapsed());
        assert_eq!(r.plan.len(), entity_rows.len());
    }
    println!(
        "plan (dry run) over {} entities, depth 5: median {:.1} ms",
        entity_rows.len(),
        median(plans)
    );
    let t = Instant::now();
    let r = dep
        .trigger_action(pb::TriggerActionRequest {
            entity_id: root.clone(),
            action: "DeprovisionTenant".into(),
            parameters: grace,
            ..Default::default()
        })
        .await
        .expect("trigger")
        .into_inner();
    println!(
        "trigger (plan, {} steps, {} edges to removing, cascade completion with 1s grace): {:.0} ms, status {:?}",
        r.plan.len(),
        edge_rows.len(),
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
}
