//! Every binary starts, reports SERVING, answers reflection, refuses bad configuration by
//! naming the field, and drains in-flight calls on SIGTERM.

use std::time::{Duration, Instant};

use crate::support::ebb_serve;
use ebb_tests::cluster::{Cluster, fixture, secs};
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::{Process, TestDatabases, run_to_exit};

#[tokio::test]
async fn every_service_reports_serving() {
    let mut dbs = TestDatabases::new();
    for binary in [
        "lifecycle-svc",
        "scheduler-svc",
        "notifier-svc",
        "audit-svc",
    ] {
        let url = dbs.create(&binary.replace('-', "_")).await;
        let p = Process::spawn(binary, &[], &[("EBB_DATABASE_URL", url)], dbs.dir())
            .await
            .expect("spawn");
        p.wait_serving("").await.expect("serving");
        p.kill().await;
    }
}

#[tokio::test]
async fn grpcurl_lists_every_service_of_ebb_serve() {
    let dbs = TestDatabases::on(None);
    let (p, _) = ebb_serve(&dbs, &[]).await;
    let grpcurl = crate::tools::grpcurl().await;
    let out = tokio::process::Command::new(&grpcurl)
        .args(["-plaintext", &p.addr.to_string(), "list"])
        .output()
        .await
        .expect("run grpcurl");
    assert!(
        out.status.success(),
        "grpcurl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    for service in [
        "ebb.lifecycle.v1.LifecycleService",
        "ebb.scheduler.v1.SchedulerService",
        "ebb.notifier.v1.NotifierService",
        "ebb.audit.v1.AuditService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            listed.lines().any(|l| l.trim() == service),
            "{service} missing from:\n{listed}"
        );
    }
    // A real call through reflection, as an operator would make it.
    let out = tokio::process::Command::new(&grpcurl)
        .args([
            "-plaintext",
            "-H",
            &format!("authorization: Bearer {}", ebb_tests::ADMIN_TOKEN),
            "-d",
            r#"{"name":"acme"}"#,
            &p.addr.to_string(),
            "ebb.lifecycle.v1.LifecycleService/CreateOrganization",
        ])
        .output()
        .await
        .expect("grpcurl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"name\": \"acme\""));
    p.kill().await;
}

#[tokio::test]
async fn a_bad_config_value_exits_non_zero_naming_the_field() {
    type Case<'a> = (&'a str, &'a [(&'a str, String)], &'a str);
    let cases: [Case; 4] = [
        (
            "scheduler-svc",
            &[("EBB_SHARD_COUNT", "0".into())],
            "shard_count",
        ),
        (
            "lifecycle-svc",
            &[("EBB_MIN_INACTIVITY", "soon".into())],
            "min_inactivity",
        ),
        (
            "audit-svc",
            &[("EBB_DATABASE_URL", "mysql://x".into())],
            "database_url",
        ),
        (
            "notifier-svc",
            &[("EBB_LISTEN", "not-an-address".into())],
            "listen",
        ),
    ];
    for (binary, env, field) in cases {
        let (status, stderr) = run_to_exit(binary, &[], env).await.expect("run");
        assert_eq!(status.code(), Some(2), "{binary}: {stderr}");
        assert!(
            stderr.contains(&format!("`{field}`")),
            "{binary} should name {field}: {stderr}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("lifecycle.toml");
    std::fs::write(&file, "run_lease_tll = \"5s\"\n").expect("write");
    let (status, stderr) = run_to_exit(
        "lifecycle-svc",
        &["--config", file.to_str().expect("path")],
        &[],
    )
    .await
    .expect("run");
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("unknown field `run_lease_tll`"), "{stderr}");
}

#[tokio::test]
async fn sigterm_drains_an_in_flight_call_and_exits_zero() {
    let mut cluster = Cluster::start(0).await;
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "w").await;
    let mut runner = cluster.runner().await;
    // A long-polling claim is in flight when the signal arrives.
    let call = tokio::spawn(async move {
        runner
            .claim_run(pb::ClaimRunRequest {
                organization_id: f.org.id.clone(),
                runner_id: "r".into(),
                wait: Some(secs(2)),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    cluster.lifecycle.signal(nix::sys::signal::Signal::SIGTERM);
    let answer = call.await.expect("join");
    assert!(
        answer.is_ok(),
        "the in-flight call must complete: {answer:?}"
    );
    let status = cluster
        .lifecycle
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exits within 5s");
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_service_without_the_token_it_needs_refuses_to_start_naming_the_field() {
    let none = || ("EBB_AUTH__SERVICE_TOKEN", String::new());
    let no_admin = || ("EBB_ADMIN_TOKEN", String::new());
    let no_key = || ("EBB_ENCRYPTION__KEY", String::new());
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let cases: [Case; 6] = [
        ("lifecycle-svc", vec![no_key()], "encryption.key"),
        ("notifier-svc", vec![no_key()], "encryption.key"),
        ("lifecycle-svc", vec![no_admin()], "admin_token"),
        (
            "scheduler-svc",
            vec![no_admin(), none()],
            "auth.service_token",
        ),
        (
            "notifier-svc",
            vec![no_admin(), none()],
            "auth.service_token",
        ),
        ("audit-svc", vec![no_admin(), none()], "auth.service_token"),
    ];
    for (binary, env, field) in cases {
        let (status, stderr) = run_to_exit(binary, &[], &env).await.expect("run");
        assert_eq!(status.code(), Some(2), "{binary}: {stderr}");
        assert!(
            stderr.contains(&format!("`{field}`")) && stderr.contains("is required"),
            "{binary} should name {field}: {stderr}"
        );
    }
}

#[tokio::test]
async fn a_service_whose_token_is_refused_is_not_serving_and_says_why_once() {
    let cluster = Cluster::start(0).await;
    let mut env = ebb_tests::cluster::fast_scheduler_env(&cluster.lifecycle.url());
    env.push(("EBB_DATABASE_URL", cluster.scheduler_db.clone()));
    env.push(("EBB_ADMIN_TOKEN", String::new()));
    env.push((
        "EBB_AUTH__SERVICE_TOKEN",
        "a-service-token-lifecycle-does-not-know".into(),
    ));
    let scheduler = Process::spawn("scheduler-svc", &[], &env, cluster.dbs.dir())
        .await
        .expect("scheduler starts");
    // `ebb health`, as a container healthcheck runs it, turns to NOT_SERVING (exit 1).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = tokio::process::Command::new(ebb_tests::bin_path("ebb"))
            .args(["health", "--server", &scheduler.addr.to_string()])
            .output()
            .await
            .expect("ebb health");
        let printed = String::from_utf8_lossy(&out.stdout);
        if out.status.code() == Some(1) && printed.trim() == "NOT_SERVING" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {printed} ({:?}); log:\n{}",
            out.status.code(),
            scheduler.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Tasks keep failing every round, but the reason is logged once (then once a minute).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = scheduler.log_text();
    let said = log
        .matches("not serving: a peer refuses this service's token")
        .count();
    assert_eq!(said, 1, "{}", scheduler.log_tail());
    assert!(log.contains("UNAUTHENTICATED"), "{}", scheduler.log_tail());
    // The healthy lifecycle it talks to is SERVING; `ebb health` exits 0 for it.
    let out = tokio::process::Command::new(ebb_tests::bin_path("ebb"))
        .args(["health", "--server", &cluster.lifecycle.url()])
        .output()
        .await
        .expect("ebb health");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    scheduler.kill().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EBB_TEST_DATABASE_URL"]
async fn lifecycle_keeps_to_the_pool_size_it_is_configured_with() {
    use sea_orm::{ConnectionTrait, Statement};
    let pg = ebb_tests::require_postgres("lifecycle_keeps_to_the_pool_size_it_is_configured_with");
    let cluster = Cluster::start_on(
        TestDatabases::on(Some(pg)),
        0,
        &[("EBB_DATABASE__MAX_CONNECTIONS", "2".into())],
    )
    .await;
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "pool").await;
    // Writes and reads at once, far more than two connections' worth.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..48 {
        let (mut api, project, org) = (api.clone(), f.project.id.clone(), f.org.id.clone());
        calls.spawn(async move {
            if i % 2 == 0 {
                api.create_workspace(pb::CreateWorkspaceRequest {
                    project_id: project,
                    name: format!("pool-{i}"),
                    ..Default::default()
                })
                .await
                .map(|_| ())
            } else {
                api.list_workspaces(pb::ListWorkspacesRequest {
                    organization_id: org,
                    ..Default::default()
                })
                .await
                .map(|_| ())
            }
        });
    }
    while let Some(done) = calls.join_next().await {
        done.expect("join")
            .expect("every call succeeds on two connections");
    }
    // Everything connected to lifecycle's database but this check itself is lifecycle-svc.
    let sql = cluster.lifecycle_sql().await;
    let open: i64 = sql
        .query_one_raw(Statement::from_string(
            sql.get_database_backend(),
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        ))
        .await
        .expect("count connections")
        .expect("a row")
        .try_get("", "n")
        .expect("n");
    assert!(
        (1..=2).contains(&open),
        "lifecycle-svc holds {open} connections with database.max_connections = 2"
    );
}
