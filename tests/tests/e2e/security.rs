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
