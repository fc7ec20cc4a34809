//! Every service serves Prometheus metrics, the ones docs/metrics.md lists, and the gauges
//! follow the work: due items and the scheduler's lag, paused tasks, lease takeovers, queued
//! runs, the outbox backlog while audit-svc is down, and each organization's chain head.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::repo_file;
use ebb_tests::cluster::{Cluster, eventually, fixture, from_now};
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::scheduler::v1 as spb;
use ebb_tests::proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use ebb_tests::{Process, Scrape, TestDatabases, start_service};
use sea_orm::{ConnectionTrait, Database, FromQueryResult, TransactionTrait};

/// Whether `name` is a series Ebb serves (and documents): its own, the gRPC call series and
/// the process collector's.
fn ours(name: &str) -> bool {
    ["ebb_", "grpc_", "process_"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// The metric names of docs/metrics.md, by the service that serves them.
fn documented() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(repo_file("docs/metrics.md")).expect("read docs/metrics.md");
    let mut by_service: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `name` | type | service | meaning |
        if cells.len() >= 5 && ours(cells[1].trim_start_matches('`')) {
            let name = cells[1].trim_matches('`').to_owned();
            for service in cells[3].split(',') {
                by_service
                    .entry(service.trim().to_owned())
                    .or_default()
                    .push(name.clone());
            }
        }
    }
    by_service
}

#[tokio::test]
async fn every_service_serves_the_metrics_the_documentation_lists() {
    let documented = documented();
    assert!(
        documented.len() >= 5,
        "docs/metrics.md lists metrics of every service and `all`: {documented:?}"
    );
    let mut dbs = TestDatabases::new();
    let audit = start_service("audit-svc", &mut dbs, &[]).await;
    let notifier = start_service("notifier-svc", &mut dbs, &[]).await;
    let lifecycle = start_service(
        "lifecycle-svc",
        &mut dbs,
        &[
            ("EBB_AUDIT_URL", audit.url()),
            ("EBB_NOTIFIER_URL", notifier.url()),
        ],
    )
    .await;
    let scheduler = start_service(
        "scheduler-svc",
        &mut dbs,
        &ebb_tests::cluster::fast_scheduler_env(&lifecycle.url()),
    )
    .await;
    // Gauges exist from the first scrape (the chain head once an organization has events);
    // gRPC server counters once a call was answered (the health checks above), client
    // counters once a call was made (the scheduler's, lifecycle's relay to audit), the
    // coalesced-read counters once a workspace was read.
    let mut api =
        ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient::new(
            lifecycle.channel().await,
        );
    let f = fixture(&mut api, None, "w").await;
    let org = f.org.id;
    // The coalesced-read counters, from the first GetWorkspace.
    api.get_workspace(ebb_tests::proto::lifecycle::v1::GetWorkspaceRequest {
        workspace_id: f.workspace.id,
    })
    .await
    .expect("get the workspace");
    eventually(
        Duration::from_secs(10),
        "the organization's chain",
        || async {
            scrape(&audit)
                .await
                .value(
                    "ebb_audit_chain_head_sequence",
                    &[("organization_id", &org)],
                )
                .filter(|head| *head >= 1.0)
        },
    )
    .await;
    // The calls above, by the grpc-ecosystem labels, on the server and on the client side.
    let created = [
        ("grpc_service", "ebb.lifecycle.v1.LifecycleService"),
        ("grpc_method", "CreateOrganization"),
        ("grpc_type", "unary"),
        ("grpc_code", "OK"),
    ];
    let lifecycle_scrape = scrape(&lifecycle).await;
    assert_eq!(
        lifecycle_scrape.value("grpc_server_handled_total", &created),
        Some(1.0)
    );
    let appended = [
        ("grpc_service", "ebb.audit.v1.AuditService"),
        ("grpc_method", "AppendEvents"),
        ("grpc_code", "OK"),
    ];
    assert!(lifecycle_scrape.value("grpc_client_handled_total", &appended) >= Some(1.0));
    assert!(
        scrape(&audit)
            .await
            .value("grpc_server_handled_total", &appended)
            >= Some(1.0)
    );
    for (service, process) in [
        ("lifecycle", &lifecycle),
        ("scheduler", &scheduler),
        ("notifier", &notifier),
        ("audit", &audit),
    ] {
        let scrape = process.scrape().await.expect("scrape");
        for name in documented[service].iter().chain(&documented["all"]) {
            let found = scrape.has(name)
                || scrape.has(&format!("{name}_bucket"))
                || scrape.has(&format!("{name}_count"));
            assert!(found, "{service} does not serve {name}");
        }
        for (name, _, _) in scrape.series.iter().filter(|(n, _, _)| ours(n)) {
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum");
            assert!(
                documented.values().flatten().any(|d| d == base),
                "{service} serves {name}, which docs/metrics.md does not list"
            );
        }
    }
}

#[derive(FromQueryResult)]
struct Seq {
    event_seq: i64,
}

async fn event_seq(cluster: &Cluster, org: &str) -> i64 {
    let sql = cluster.lifecycle_sql().await;
    Seq::find_by_statement(sea_orm::Statement::from_string(
        sql.get_database_backend(),
        format!("SELECT event_seq FROM organizations WHERE id = '{org}'"),
    ))
    .one(&sql)
    .await
    .expect("query")
    .expect("organization")
    .event_seq
}

#[derive(FromQueryResult)]
struct Cursor {
    last_org_seq: i64,
}

/// The last event of `org` audit-svc acknowledged.
async fn audit_cursor(cluster: &Cluster, org: &str) -> i64 {
    let sql = cluster.lifecycle_sql().await;
    Cursor::find_by_statement(sea_orm::Statement::from_string(
        sql.get_database_backend(),
        format!(
            "SELECT last_org_seq FROM outbox_relay_cursors \
             WHERE sink = 'audit' AND organization_id = '{org}'"
        ),
    ))
    .one(&sql)
    .await
    .expect("query")
    .map_or(0, |c| c.last_org_seq)
}

async fn scrape(p: &Process) -> Scrape {
    p.scrape().await.expect("scrape")
}

#[tokio::test]
async fn gauges_follow_due_work_leases_and_the_outbox() {
    let mut dbs = TestDatabases::new();
    let audit = start_service("audit-svc", &mut dbs, &[]).await;
    let cluster = Cluster::start_on(dbs, 1, &[("EBB_AUDIT_URL", audit.url())]).await;
    let lifecycle = &cluster.lifecycle;
    let scheduler = &cluster.schedulers[0];
    let mut tasks = SchedulerServiceClient::new(scheduler.channel().await);
    tasks
        .pause_task(spb::PauseTaskRequest {
            name: "auto_destroy_check".into(),
            ..Default::default()
        })
        .await
        .expect("pause");

    // Three workspaces fall due while the check is paused: they are the backlog, and the
    // lag grows with the age of the oldest.
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "w-0").await;
    let mut ids = vec![f.workspace.id.clone()];
    for i in 1..3 {
        ids.push(
            ebb_tests::cluster::create_workspace(&mut api, &f.project.id, &format!("w-{i}"))
                .await
                .id,
        );
    }
    for id in &ids {
        api.set_auto_destroy(pb::SetAutoDestroyRequest {
            workspace_id: id.clone(),
            auto_destroy_at: Some(from_now(Duration::from_millis(500))),
            ..Default::default()
        })
        .await
        .expect("set");
    }
    let paused = scrape(scheduler).await;
    assert_eq!(
        paused.value(
            "ebb_scheduler_task_paused",
            &[("task", "auto_destroy_check")]
        ),
        Some(1.0)
    );
    assert_eq!(
        paused.value(
            "ebb_scheduler_task_paused",
            &[("task", "grace_period_sweep")]
        ),
        Some(0.0)
    );
    let due = [("kind", "auto_destroy")];
    eventually(Duration::from_secs(10), "three due workspaces", || async {
        let s = scrape(lifecycle).await;
        (s.value("ebb_due_backlog", &due) == Some(3.0)
            && s.value("ebb_scheduler_lag_seconds", &due) > Some(0.5))
        .then_some(())
    })
    .await;
    let s = scrape(lifecycle).await;
    assert_eq!(s.value("ebb_runs", &[("status", "queued")]), Some(0.0));

    // Resumed: the backlog drains into three queued destroy runs.
    tasks
        .resume_task(spb::ResumeTaskRequest {
            name: "auto_destroy_check".into(),
            ..Default::default()
        })
        .await
        .expect("resume");
    eventually(Duration::from_secs(10), "the backlog drained", || async {
        let s = scrape(lifecycle).await;
        (s.value("ebb_due_backlog", &due) == Some(0.0)
            && s.value("ebb_scheduler_lag_seconds", &due) == Some(0.0)
            && s.value("ebb_runs", &[("status", "queued")]) == Some(3.0))
        .then_some(())
    })
    .await;

    // Everything relayed: the audit backlog is empty and the chain head is the
    // organization's last event.
    let org = f.org.id.clone();
    eventually(Duration::from_secs(10), "the outbox relayed", || async {
        let expected = event_seq(&cluster, &org).await as f64;
        let head = scrape(&audit).await.value(
            "ebb_audit_chain_head_sequence",
            &[("organization_id", &org)],
        );
        let backlog = scrape(lifecycle)
            .await
            .value("ebb_outbox_backlog", &[("sink", "audit")]);
        (head == Some(expected) && backlog == Some(0.0)).then_some(())
    })
    .await;
    // audit-svc goes away: the events of four more changes (and of the reminders the
    // scheduler sends for them meanwhile) wait in the outbox. The backlog is what lifecycle
    // wrote past audit's cursor.
    audit.kill().await;
    for i in 0..4 {
        api.set_auto_destroy(pb::SetAutoDestroyRequest {
            workspace_id: ids[0].clone(),
            auto_destroy_at: Some(from_now(Duration::from_secs(3600 + i))),
            ..Default::default()
        })
        .await
        .ok();
    }
    eventually(Duration::from_secs(10), "the outbox backlog", || async {
        let s = scrape(lifecycle).await;
        let waiting = event_seq(&cluster, &org).await - audit_cursor(&cluster, &org).await;
        (waiting >= 4
            && s.value("ebb_outbox_backlog", &[("sink", "audit")]) == Some(waiting as f64)
            && s.value("ebb_outbox_lag_seconds", &[("sink", "audit")]) > Some(0.0))
        .then_some(())
    })
    .await;
    assert!(
        scrape(lifecycle)
            .await
            .value("ebb_outbox_backlog", &[("sink", "notifier")])
            .is_none(),
        "no notifier is configured, so its backlog is not reported"
    );

    // A replica that died holding a lease leaves an expired lease behind; the live replica
    // takes it over and the takeover is counted.
    let before = scrape(scheduler)
        .await
        .value(
            "ebb_scheduler_lease_takeovers_total",
            &[("task", "run_lease_rescue")],
        )
        .unwrap_or(-1.0);
    assert_eq!(before, 0.0);
    let sql = Database::connect(cluster.scheduler_db.as_str())
        .await
        .expect("connect");
    eventually(Duration::from_secs(10), "a lease to plant", || async {
        let planted = sql
            .execute_unprepared(
                "UPDATE task_leases SET owner = 'replica-gone', lease_expires_at = 1, \
                 next_run_at = 1 WHERE task = 'run_lease_rescue' AND owner IS NULL",
            )
            .await
            .expect("update");
        (planted.rows_affected() == 1).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "the takeover", || async {
        let s = scrape(scheduler).await;
        (s.value(
            "ebb_scheduler_lease_takeovers_total",
            &[("task", "run_lease_rescue")],
        ) == Some(1.0))
        .then_some(())
    })
    .await;
}

/// On PostgreSQL a change's events are numbered after it commits. Events committed and not
/// numbered yet (here numbering is held up by its lock) wait for every sink, and the sink's
/// backlog and lag show them.
#[tokio::test]
#[ignore = "needs PostgreSQL: set EBB_TEST_DATABASE_URL"]
async fn events_waiting_to_be_numbered_count_in_the_outbox_backlog_on_postgres() {
    let server = ebb_tests::require_postgres(
        "events_waiting_to_be_numbered_count_in_the_outbox_backlog_on_postgres",
    );
    let mut dbs = TestDatabases::on(Some(server));
    let audit = start_service("audit-svc", &mut dbs, &[]).await;
    let cluster = Cluster::start_on(dbs, 0, &[("EBB_AUDIT_URL", audit.url())]).await;
    let lifecycle = &cluster.lifecycle;
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "w").await;
    let backlog = |s: &Scrape| s.value("ebb_outbox_backlog", &[("sink", "audit")]);
    eventually(Duration::from_secs(10), "everything relayed", || async {
        (backlog(&scrape(lifecycle).await) == Some(0.0)).then_some(())
    })
    .await;

    // Numbering waits for this transaction's lock (`events::outbox::number`).
    let sql = cluster.lifecycle_sql().await;
    let held = sql.begin().await.expect("begin");
    let lock: i64 = 0x6562_625f_6f75_7462; // "ebb_outb", the numbering lock
    held.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({lock})"))
        .await
        .expect("take the numbering lock");
    for i in 0..3 {
        ebb_tests::cluster::create_workspace(&mut api, &f.project.id, &format!("held-{i}")).await;
    }
    #[derive(FromQueryResult)]
    struct Waiting {
        n: i64,
    }
    let waiting = Waiting::find_by_statement(sea_orm::Statement::from_string(
        sql.get_database_backend(),
        "SELECT count(*) AS n FROM outbox WHERE org_seq IS NULL",
    ))
    .one(&sql)
    .await
    .expect("count")
    .expect("a count")
    .n;
    assert!(
        waiting >= 3,
        "three changes' events wait unnumbered: {waiting}"
    );
    eventually(
        Duration::from_secs(10),
        "the unnumbered events in the backlog",
        || async {
            let s = scrape(lifecycle).await;
            (backlog(&s) == Some(waiting as f64)
                && s.value("ebb_outbox_lag_seconds", &[("sink", "audit")]) > Some(0.0))
            .then_some(())
        },
    )
    .await;

    held.rollback().await.expect("release the lock");
    eventually(Duration::from_secs(10), "numbered and relayed", || async {
        (backlog(&scrape(lifecycle).await) == Some(0.0)).then_some(())
    })
    .await;
}
