//! Measures the audit store: append throughput with several organizations appending in
//! parallel, and chain verification speed.
//!
//! `audit-bench [DATABASE_URL]` — a PostgreSQL server URL (a scratch database is created on it
//! and dropped afterwards) or nothing for a temporary SQLite file. `AUDIT_BENCH_EVENTS` sets
//! the events per organization (default 25000), `AUDIT_BENCH_BATCH` the batch size (500).

use std::time::Instant;

use audit_svc::store::{NewEvent, Store, Verification};
use ebb_common::db::Db;
use sea_orm::{ConnectionTrait, Database};

const ORGANIZATIONS: usize = 4;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn batch(org: &str, from: usize, n: usize) -> Vec<NewEvent> {
    (from..from + n)
        .map(|i| NewEvent {
            id: format!("{org}-{i}"),
            organization_id: org.to_owned(),
            action: if i % 2 == 0 {
                "workspace.locked"
            } else {
                "workspace.unlocked"
            }
            .into(),
            subject_type: "workspace".into(),
            subject_id: format!("ws-{}", i % 100),
            actor: "service:lifecycle".into(),
            data: format!(
                r#"{{"name":"workspace {}","reason":"benchmark","serial":{i}}}"#,
                i % 100
            ),
            occur_time_ms: 1_700_000_000_000 + i as i64,
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let per_org = env("AUDIT_BENCH_EVENTS", 25_000);
    let batch_size = env("AUDIT_BENCH_BATCH", 500);
    let server = std::env::args().nth(1);
    let dir = tempfile::tempdir()?;
    let scratch = format!("audit_bench_{}", uuid::Uuid::new_v4().simple());
    let url = match &server {
        Some(server) => {
            let admin = Database::connect(server.as_str()).await?;
            admin
                .execute_unprepared(&format!("CREATE DATABASE {scratch}"))
                .await?;
            let base = server.rsplit_once('/').map(|(b, _)| b).unwrap_or(server);
            format!("{base}/{scratch}")
        }
        None => format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("bench.db").display()
        ),
    };
    let db = Db::connect(&url, 16).await?;
    db.migrate::<audit_svc::migrations::Migrator>().await?;
    let store = Store::new(db.clone());

    let started = Instant::now();
    let mut tasks = Vec::new();
    for o in 0..ORGANIZATIONS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let org = format!("org-{o}");
            let mut done = 0;
            while done < per_org {
                let n = batch_size.min(per_org - done);
                store
                    .append(&batch(&org, done, n), ebb_common::time::now_ms())
                    .await?;
                done += n;
            }
            Ok::<_, ebb_common::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let total = per_org * ORGANIZATIONS;
    println!(
        "append: {total} events, {ORGANIZATIONS} organizations in parallel, batches of {batch_size}: \
         {secs:.2}s, {:.0} events/s",
        total as f64 / secs
    );

    let started = Instant::now();
    let mut verified = 0;
    for o in 0..ORGANIZATIONS {
        match store.verify(&format!("org-{o}"), 1, None).await? {
            Some(Verification::Intact { verified: n, .. }) => verified += n,
            other => anyhow::bail!("org-{o} does not verify: {other:?}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "verify: {verified} events in {secs:.2}s, {:.0} events/s",
        verified as f64 / secs
    );

    db.close().await.ok();
    if let Some(server) = &server {
        let admin = Database::connect(server.as_str()).await?;
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {scratch} WITH (FORCE)"))
            .await?;
    }
    Ok(())
}
