//! The hardening of issue "Security hardening": each test here is an attack that once
//! worked, and now must not.

use std::time::Duration;

use ebb_tests::{Process, TestDatabases};
use ebb_tests::cluster::eventually;
use ebb_tests::proto::audit::v1::audit_service_client::AuditServiceClient;
use ebb_tests::proto::audit::v1::{AppendEventsRequest, EventInput, VerifyChainRequest};
use tonic::Code;

async fn start_audit(dbs: &mut TestDatabases, env: &[(&str, String)]) -> Process {
    ebb_tests::start_service("audit-svc", dbs, env).await
}

fn audit_event(org: &str, n: i64) -> EventInput {
    EventInput {
        id: format!("{org}-ev-{n}"),
        organization_id: org.into(),
        action: "workspace.updated".into(),
        subject_type: "workspace".into(),
        subject_id: "ws-1".into(),
        actor: "user:alice".into(),
        occur_time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + n,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// A range past the head of an intact chain is OUT_OF_RANGE naming the head, never a
/// "broken chain" (a false tamper alarm).
#[tokio::test]
async fn verifying_past_the_head_is_out_of_range_not_a_broken_chain() {
    let mut dbs = TestDatabases::new();
    let p = start_audit(&mut dbs, &[]).await;
    let mut audit = AuditServiceClient::new(p.channel().await);
    audit
        .append_events(AppendEventsRequest {
            events: (1..=5).map(|n| audit_event("org-h", n)).collect(),
        })
        .await
        .expect("append");
    for from in [6, 100_000] {
        let err = audit
            .verify_chain(VerifyChainRequest {
                organization_id: "org-h".into(),
                from_sequence: from,
                to_sequence: 0,
            })
            .await
            .expect_err("past the head");
        assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
        assert!(err.message().contains("head at sequence 5"), "{err:?}");
    }
    let last = audit
        .verify_chain(VerifyChainRequest {
            organization_id: "org-h".into(),
            from_sequence: 5,
            to_sequence: 100_000,
        })
        .await
        .expect("the head itself")
        .into_inner();
    assert!(last.intact, "{last:?}");
    assert_eq!(last.head_sequence, 5);
}

/// A PostgreSQL password with a `/` in it (not percent-encoded) breaks URL parsing; the
/// retry log must still never show it.
#[tokio::test]
async fn a_database_password_never_reaches_the_log_even_when_the_url_does_not_parse() {
    let dbs = TestDatabases::new();
    let password = "hunter2/sEcr3t";
    for url in [
        format!("postgres://ebb:{password}@127.0.0.1:1/ebb"),
        format!("postgres://ebb:{password}@127.0.0.1:1/ebb?sslmode=disable"),
        format!("postgresql://127.0.0.1:1/ebb?user=ebb&password={password}"),
    ] {
        // It does not listen before its database answers: read its log as it retries.
        let log = dbs
            .dir()
            .join(format!("audit-{}.log", uuid::Uuid::new_v4().simple()));
        let mut child = tokio::process::Command::new(ebb_tests::bin_path("audit-svc"))
            .args(["--database-url", &url, "--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .env_remove("EBB_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("start audit-svc");
        let text = eventually(Duration::from_secs(20), "two connection attempts", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move { (text.matches("database not reachable").count() >= 2).then_some(text) }
        })
        .await;
        assert!(!text.contains("hunter2"), "password in the log:\n{text}");
        assert!(!text.contains("sEcr3t"), "password in the log:\n{text}");
        let _ = child.kill().await;
    }
}
