//! audit-svc end to end: appending, filtered pagination, chain verification online and
//! offline, the database's refusal of changes, and lifecycle's outbox relay across an outage
//! and across replicas.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::output;
use ebb_tests::Channel;
use ebb_tests::cluster::fixture;
use ebb_tests::proto::audit::v1::audit_service_client::AuditServiceClient;
use ebb_tests::proto::audit::v1::{
    AppendEventsRequest, ChainBreak, EventInput, ExportEventsRequest, GetEventRequest,
    ListEventsRequest, Order, VerifyChainRequest, VerifyChainResponse,
};
use ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use ebb_tests::proto::lifecycle::v1::{LockWorkspaceRequest, UnlockWorkspaceRequest};
use ebb_tests::{Process, TestDatabases, bin_path, require_postgres};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, TransactionTrait};
use tonic::Code;
use tonic_types::StatusExt;

type Audit = AuditServiceClient<Channel>;

async fn start_audit(dbs: &TestDatabases, url: &str, listen: Option<&str>) -> Process {
    let mut args = vec!["--database-url", url];
    if let Some(addr) = listen {
        args.extend(["--listen", addr]);
    }
    let p = Process::spawn("audit-svc", &args, &[], dbs.dir())
        .await
        .expect("start audit-svc");
    p.wait_serving("ebb.audit.v1.AuditService")
        .await
        .expect("audit-svc serving");
    p
}

async fn audit_client(p: &Process) -> Audit {
    AuditServiceClient::new(p.channel().await)
}

fn ts(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn event(org: &str, n: i64, action: &str, subject: &str, actor: &str) -> EventInput {
    let mut data = prost_types::Struct::default();
    data.fields.insert(
        "n".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(n as f64)),
        },
    );
    EventInput {
        id: format!("{org}-ev-{n}"),
        organization_id: org.into(),
        action: action.into(),
        subject_type: "workspace".into(),
        subject_id: subject.into(),
        actor: actor.into(),
        data: Some(data),
        occur_time: Some(ts(1_700_000_000_000 + n * 1000)),
        ..Default::default()
    }
}

/// Every page of a listing, following tokens; the ids in order.
async fn list_all(audit: &mut Audit, mut request: ListEventsRequest) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let page = audit
            .list_events(request.clone())
            .await
            .expect("list")
            .into_inner();
        assert!(page.events.len() <= request.page_size.max(1) as usize);
        ids.extend(page.events.into_iter().map(|e| e.event.expect("event").id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        request.page_token = page.next_page_token;
    }
}

async fn verify(audit: &mut Audit, org: &str) -> VerifyChainResponse {
    audit
        .verify_chain(VerifyChainRequest {
            organization_id: org.into(),
            ..Default::default()
        })
        .await
        .expect("verify")
        .into_inner()
}

#[tokio::test]
async fn filters_and_pagination_return_exactly_the_matching_events() {
    let mut dbs = TestDatabases::new();
    let url = dbs.create("audit").await;
    let p = start_audit(&dbs, &url, None).await;
    let mut audit = audit_client(&p).await;

    let actions = [
        "deprovision.scheduled",
        "deprovision.finalized",
        "workspace.created",
        "deprovisioned",
    ];
    let mut all = Vec::new();
    for n in 1..=90 {
        let org = if n % 3 == 0 { "org-b" } else { "org-a" };
        let e = event(
            org,
            n,
            actions[n as usize % 4],
            &format!("ws-{}", n % 5),
            if n % 2 == 0 {
                "user:alice"
            } else {
                "scheduler"
            },
        );
        all.push(e);
    }
    for batch in all.chunks(25) {
        let r = audit
            .append_events(AppendEventsRequest {
                events: batch.to_vec(),
            })
            .await
            .expect("append")
            .into_inner();
        assert_eq!(r.appended, batch.len() as i32);
    }
    // Retrying is a no-op; the same id with other content is refused.
    let r = audit
        .append_events(AppendEventsRequest {
            events: all[..10].to_vec(),
        })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!((r.appended, r.already_recorded), (0, 10));
    let mut forged = all[3].clone();
    forged.actor = "user:mallory".into();
    let err = audit
        .append_events(AppendEventsRequest {
            events: vec![forged],
        })
        .await
        .expect_err("conflicting content");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    let expected = |f: &dyn Fn(&EventInput) -> bool| -> Vec<String> {
        all.iter().filter(|e| f(e)).map(|e| e.id.clone()).collect()
    };
    let base = ListEventsRequest {
        organization_id: "org-a".into(),
        page_size: 7,
        ..Default::default()
    };
    let cases: Vec<(ListEventsRequest, Vec<String>)> = vec![
        (base.clone(), expected(&|e| e.organization_id == "org-a")),
        (
            ListEventsRequest {
                action: "deprovision.finalized".into(),
                ..base.clone()
            },
            expected(&|e| e.organization_id == "org-a" && e.action == "deprovision.finalized"),
        ),
        (
            ListEventsRequest {
                action_prefix: "deprovision.".into(),
                ..base.clone()
            },
            expected(&|e| e.organization_id == "org-a" && e.action.starts_with("deprovision.")),
        ),
        (
            ListEventsRequest {
                subject_type: "workspace".into(),
                subject_id: "ws-2".into(),
                actor: "user:alice".into(),
                ..base.clone()
            },
            expected(&|e| {
                e.organization_id == "org-a" && e.subject_id == "ws-2" && e.actor == "user:alice"
            }),
        ),
        (
            ListEventsRequest {
                organization_id: "org-b".into(),
                start_time: Some(ts(1_700_000_000_000 + 30_000)),
                end_time: Some(ts(1_700_000_000_000 + 60_000)),
                ..base.clone()
            },
            expected(&|e| {
                let ms = e.occur_time.as_ref().map(|t| t.seconds * 1000).unwrap_or(0);
                e.organization_id == "org-b" && (1_700_000_030_000..1_700_000_060_000).contains(&ms)
            }),
        ),
    ];
    for (request, want) in cases {
        assert!(!want.is_empty(), "a case must match something: {request:?}");
        let got = list_all(&mut audit, request.clone()).await;
        assert_eq!(got, want, "oldest first: {request:?}");
        let newest = list_all(
            &mut audit,
            ListEventsRequest {
                order: Order::NewestFirst as i32,
                ..request.clone()
            },
        )
        .await;
        let mut reversed = want.clone();
        reversed.reverse();
        assert_eq!(newest, reversed, "newest first: {request:?}");
    }

    // A token from one filter is refused under another, and under another order.
    let first = audit
        .list_events(ListEventsRequest {
            action_prefix: "deprovision.".into(),
            ..base.clone()
        })
        .await
        .expect("first page")
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    for other in [
        ListEventsRequest {
            action_prefix: "workspace.".into(),
            page_token: first.next_page_token.clone(),
            ..base.clone()
        },
        ListEventsRequest {
            action_prefix: "deprovision.".into(),
            order: Order::NewestFirst as i32,
            page_token: first.next_page_token.clone(),
            ..base.clone()
        },
    ] {
        let err = audit.list_events(other).await.expect_err("foreign token");
        assert_eq!(err.code(), Code::InvalidArgument);
        let details = err.get_error_details();
        let bad = details.bad_request().expect("field violations");
        assert_eq!(bad.field_violations[0].field, "page_token");
    }

    // Bad input names its fields.
    let err = audit
        .list_events(ListEventsRequest {
            page_size: -1,
            action: "a".into(),
            action_prefix: "b".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad list");
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = err
        .get_error_details()
        .bad_request()
        .expect("violations")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert!(fields.contains(&"organization_id".to_owned()), "{fields:?}");
    assert!(fields.contains(&"action_prefix".to_owned()), "{fields:?}");
    let mut nan = event("org-a", 999, "x", "s", "a");
    nan.data.as_mut().expect("data").fields.insert(
        "ratio".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(f64::NAN)),
        },
    );
    nan.occur_time = None;
    let err = audit
        .append_events(AppendEventsRequest { events: vec![nan] })
        .await
        .expect_err("bad event");
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = err
        .get_error_details()
        .bad_request()
        .expect("violations")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(fields, ["events[0].occur_time", "events[0].data"]);

    let got = audit
        .get_event(GetEventRequest {
            id: all[4].id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .event
        .expect("event");
    assert_eq!(got.event.as_ref(), Some(&all[4]));
    let err = audit
        .get_event(GetEventRequest { id: "nope".into() })
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    assert!(verify(&mut audit, "org-a").await.intact);
    assert_eq!(verify(&mut audit, "org-b").await.head_sequence, 30);
}

/// Runs `ebb audit ARGS`, returning (success, stdout + stderr).
async fn ebb_audit(args: &[&str]) -> (bool, String) {
    let out = output(
        "ebb audit",
        tokio::process::Command::new(bin_path("ebb"))
            .arg("audit")
            .args(args)
            .env("EBB_TOKEN", ebb_tests::ADMIN_TOKEN),
        Duration::from_secs(60),
    )
    .await;
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn export(p: &Process, org: &str, path: &std::path::Path) {
    let (ok, out) = ebb_audit(&[
        "export",
        "--server",
        &p.url(),
        "--organization-id",
        org,
        "--file",
        path.to_str().expect("path"),
    ])
    .await;
    assert!(ok, "export failed: {out}");
}

/// Changes one stored event behind the store's back, as someone with the database's
/// superuser rights could.
async fn tamper(db: &DatabaseConnection, postgres: bool, org: &str, sequence: i64) {
    let disable = if postgres {
        "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update"
    } else {
        "DROP TRIGGER audit_events_no_update"
    };
    db.execute_unprepared(disable)
        .await
        .expect("disable trigger");
    db.execute_unprepared(&format!(
        "UPDATE audit_events SET actor = 'user:mallory' \
         WHERE organization_id = '{org}' AND sequence = {sequence}"
    ))
    .await
    .expect("tamper");
}

#[tokio::test]
async fn offline_verify_agrees_with_the_rpc_on_intact_and_tampered_chains() {
    let mut dbs = TestDatabases::new();
    let url = dbs.create("audit").await;
    let p = start_audit(&dbs, &url, None).await;
    let mut audit = audit_client(&p).await;
    let events: Vec<EventInput> = (1..=120)
        .map(|n| event("org-v", n, "workspace.updated", "ws-1", "user:alice"))
        .collect();
    audit
        .append_events(AppendEventsRequest { events })
        .await
        .expect("append");

    let intact = verify(&mut audit, "org-v").await;
    assert!(intact.intact, "{intact:?}");
    assert_eq!(intact.verified_count, 120);
    let file = dbs.dir().join("intact.jsonl");
    export(&p, "org-v", &file).await;
    let (ok, out) = ebb_audit(&["verify", file.to_str().expect("path")]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("head_sequence=120 head_hash={}", intact.head_hash)),
        "{out}"
    );

    // A line edited in the file is caught offline at its sequence.
    let text = std::fs::read_to_string(&file).expect("read export");
    let edited: Vec<String> = text
        .lines()
        .map(|l| {
            if l.contains("\"sequence\":57,") {
                l.replace("user:alice", "user:eve")
            } else {
                l.to_owned()
            }
        })
        .collect();
    let edited_file = dbs.dir().join("edited.jsonl");
    std::fs::write(&edited_file, edited.join("\n")).expect("write");
    let (ok, out) = ebb_audit(&["verify", edited_file.to_str().expect("path")]).await;
    assert!(!ok, "{out}");
    assert!(out.contains("first_bad_sequence=57"), "{out}");

    // A row changed in the database: the RPC and an offline check of a fresh export agree.
    let db = Database::connect(url.as_str()).await.expect("connect");
    tamper(&db, dbs.is_postgres(), "org-v", 42).await;
    let broken = verify(&mut audit, "org-v").await;
    assert!(!broken.intact);
    assert_eq!(broken.first_bad_sequence, 42);
    assert_eq!(broken.break_reason, ChainBreak::HashMismatch as i32);
    assert_eq!(broken.verified_count, 41);
    let tampered = dbs.dir().join("tampered.jsonl");
    export(&p, "org-v", &tampered).await;
    let (ok, out) = ebb_audit(&["verify", tampered.to_str().expect("path")]).await;
    assert!(!ok, "{out}");
    assert!(out.contains("first_bad_sequence=42"), "{out}");

    // A range starting after the change still verifies.
    let later = audit
        .verify_chain(VerifyChainRequest {
            organization_id: "org-v".into(),
            from_sequence: 43,
            to_sequence: 0,
        })
        .await
        .expect("verify range")
        .into_inner();
    assert!(later.intact, "{later:?}");
    assert_eq!(later.head_hash, intact.head_hash);
}

#[tokio::test]
async fn the_database_refuses_update_and_delete() {
    let mut dbs = TestDatabases::new();
    let url = dbs.create("audit").await;
    let p = start_audit(&dbs, &url, None).await;
    let mut audit = audit_client(&p).await;
    audit
        .append_events(AppendEventsRequest {
            events: (1..=3)
                .map(|n| event("org-r", n, "x.y", "s", "a"))
                .collect(),
        })
        .await
        .expect("append");
    let db = Database::connect(url.as_str()).await.expect("connect");
    for sql in [
        "UPDATE audit_events SET actor = 'user:mallory' WHERE sequence = 2",
        "DELETE FROM audit_events WHERE sequence = 3",
        "DELETE FROM audit_events",
    ] {
        let err = db.execute_unprepared(sql).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    if dbs.is_postgres() {
        let err = db
            .execute_unprepared("TRUNCATE audit_events")
            .await
            .expect_err("truncate");
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    // A row inserted out of turn is refused too: sequences have no gaps.
    let err = db
        .execute_unprepared(
            "INSERT INTO audit_events (organization_id, sequence, prev_sequence, id, action, \
             subject_type, subject_id, actor, data, occur_time, record_time, prev_hash, hash) \
             VALUES ('org-r', 5, 4, 'gap', 'x', 's', 's', 'a', '{}', 1, 1, \
             '0000000000000000000000000000000000000000000000000000000000000000', \
             '0000000000000000000000000000000000000000000000000000000000000000')",
        )
        .await
        .expect_err("gap");
    assert!(
        err.to_string().to_lowercase().contains("foreign key"),
        "{err}"
    );
    let v = verify(&mut audit, "org-r").await;
    assert!(v.intact && v.head_sequence == 3, "{v:?}");
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EBB_TEST_DATABASE_URL"]
async fn replica_sessions_do_not_bypass_the_triggers_on_postgres() {
    let server = require_postgres("replica_sessions_do_not_bypass_the_triggers_on_postgres");
    let mut dbs = TestDatabases::on(Some(server));
    let url = dbs.create("audit").await;
    let p = start_audit(&dbs, &url, None).await;
    let mut audit = audit_client(&p).await;
    audit
        .append_events(AppendEventsRequest {
            events: vec![event("org-p", 1, "x.y", "s", "a")],
        })
        .await
        .expect("append");
    let db = Database::connect(url.as_str()).await.expect("connect");
    let txn = db.begin().await.expect("begin");
    txn.execute_unprepared("SET LOCAL session_replication_role = replica")
        .await
        .expect("replica role");
    let err = txn
        .execute_unprepared("UPDATE audit_events SET actor = 'user:mallory'")
        .await
        .expect_err("ALWAYS triggers fire for replicas too");
    assert!(err.to_string().contains("append-only"), "{err}");
    drop(txn);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EBB_TEST_DATABASE_URL"]
async fn an_outbox_event_keeps_its_number_on_postgres() {
    let server = require_postgres("an_outbox_event_keeps_its_number_on_postgres");
    let mut dbs = TestDatabases::on(Some(server));
    let audit_db = dbs.create("audit").await;
    let lifecycle_db = dbs.create("lifecycle").await;
    let audit = start_audit(&dbs, &audit_db, None).await;
    let lc_proc = start_lifecycle(&dbs, &lifecycle_db, &audit.url()).await;
    let mut lc = LifecycleServiceClient::new(lc_proc.channel().await);
    let ws = fixture(&mut lc, None, "w-numbers").await.workspace.id;
    churn(lc.clone(), ws, 3).await;
    let numbered = outbox(&lifecycle_db).await;
    assert!(numbered.values().any(|e| e.len() >= 6), "{numbered:?}");

    let db = Database::connect(lifecycle_db.as_str())
        .await
        .expect("connect");
    for sql in [
        "UPDATE outbox SET org_seq = org_seq + 1000",
        "UPDATE outbox SET org_seq = NULL",
    ] {
        let err = db.execute_unprepared(sql).await.expect_err(sql);
        assert!(err.to_string().contains("never changes"), "{sql}: {err}");
    }
    let err = db
        .execute_unprepared(
            "INSERT INTO outbox (id, organization_id, org_seq, type, subject_type, subject_id, \
             actor, data, created_at) \
             SELECT 'zero', organization_id, 0, 'x', 's', 's', 'a', '{}', 1 FROM outbox LIMIT 1",
        )
        .await
        .expect_err("a number below 1");
    assert!(err.to_string().contains("outbox_org_seq_positive"), "{err}");
    db.close().await.ok();
    drop(lc_proc);
}

// ---------------------------------------------------------------------------------------------
// The outbox relay, end to end through lifecycle-svc's API.

/// Events generated by the burst test; `EBB_TEST_AUDIT_BURST` changes it.
fn burst_size() -> usize {
    std::env::var("EBB_TEST_AUDIT_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000)
}

async fn start_lifecycle(dbs: &TestDatabases, url: &str, audit_url: &str) -> Process {
    let p = Process::spawn(
        "lifecycle-svc",
        &["--database-url", url],
        &[("EBB_AUDIT_URL", audit_url.to_owned())],
        dbs.dir(),
    )
    .await
    .expect("start lifecycle-svc");
    p.wait_serving("").await.expect("lifecycle-svc serving");
    p
}

/// Locks and unlocks the workspace `pairs` times: two events per pair.
async fn churn(mut lc: LifecycleServiceClient<Channel>, ws: String, pairs: usize) {
    for i in 0..pairs {
        lc.lock_workspace(LockWorkspaceRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            workspace_id: ws.clone(),
            reason: format!("burst {i}"),
        })
        .await
        .expect("lock");
        lc.unlock_workspace(UnlockWorkspaceRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            workspace_id: ws.clone(),
        })
        .await
        .expect("unlock");
    }
}

/// Lifecycle's outbox once every committed event has its number (on PostgreSQL the relay
/// numbers them after their commit): per organization, the event ids in org_seq order, which
/// are gapless from 1.
async fn outbox(lifecycle_db: &str) -> BTreeMap<String, Vec<(i64, String)>> {
    let db = Database::connect(lifecycle_db)
        .await
        .expect("connect lifecycle db");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let unnumbered = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT COUNT(*) FROM outbox WHERE org_seq IS NULL",
            ))
            .await
            .expect("count unnumbered")
            .expect("a count")
            .try_get_by_index::<i64>(0)
            .expect("count");
        if unnumbered == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{unnumbered} events still have no number"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT organization_id, org_seq, id FROM outbox ORDER BY organization_id, org_seq",
        ))
        .await
        .expect("read outbox");
    let mut out: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for row in rows {
        let org: String = row.try_get_by_index(0).expect("org");
        out.entry(org).or_default().push((
            row.try_get_by_index(1).expect("seq"),
            row.try_get_by_index(2).expect("id"),
        ));
    }
    db.close().await.ok();
    for (org, events) in &out {
        let numbers: Vec<i64> = events.iter().map(|(n, _)| *n).collect();
        let gapless: Vec<i64> = (1..=events.len() as i64).collect();
        assert_eq!(numbers, gapless, "{org}: numbers with a gap");
    }
    out
}

/// Waits until audit holds as many events per organization as the outbox, then checks that
/// it holds exactly the outbox's events, in org_seq order, and that every chain verifies.
async fn assert_audit_mirrors_outbox(audit: &mut Audit, lifecycle_db: &str) -> usize {
    let expected = outbox(lifecycle_db).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    for (org, events) in &expected {
        loop {
            let v = audit
                .verify_chain(VerifyChainRequest {
                    organization_id: org.clone(),
                    ..Default::default()
                })
                .await;
            if let Ok(v) = v {
                let v = v.into_inner();
                assert!(v.intact, "{org}: {v:?}");
                assert!(
                    v.head_sequence <= events.len() as i64,
                    "{org}: more than sent"
                );
                if v.head_sequence == events.len() as i64 {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "audit did not catch up with the outbox of {org}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut total = 0;
    for (org, events) in &expected {
        let mut stream = audit
            .export_events(ExportEventsRequest {
                organization_id: org.clone(),
                ..Default::default()
            })
            .await
            .expect("export")
            .into_inner();
        let mut got = Vec::new();
        while let Some(chunk) = stream.message().await.expect("chunk") {
            for e in chunk.events {
                got.push((e.sequence, e.event.expect("event").id));
            }
        }
        // Exactly once and in lifecycle's commit order: audit's sequence is the org_seq.
        assert_eq!(&got, events, "{org}");
        total += got.len();
    }
    total
}

#[tokio::test]
async fn the_relay_delivers_every_event_once_and_in_order_across_an_audit_outage() {
    let mut dbs = TestDatabases::new();
    let audit_db = dbs.create("audit").await;
    let lifecycle_db = dbs.create("lifecycle").await;
    let audit = start_audit(&dbs, &audit_db, None).await;
    let addr = audit.addr.to_string();
    let lc_proc = start_lifecycle(&dbs, &lifecycle_db, &audit.url()).await;
    let mut lc = LifecycleServiceClient::new(lc_proc.channel().await);

    let orgs = 4;
    let pairs = burst_size() / (2 * orgs);
    let mut workspaces = Vec::new();
    for i in 0..orgs {
        workspaces.push(fixture(&mut lc, None, &format!("w-{i}")).await.workspace.id);
    }
    let burst: Vec<_> = workspaces
        .into_iter()
        .map(|ws| tokio::spawn(churn(lc.clone(), ws, pairs)))
        .collect();

    // Take audit away while the burst runs, then bring it back on the same address.
    tokio::time::sleep(Duration::from_millis(700)).await;
    audit.kill().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let audit = start_audit(&dbs, &audit_db, Some(&addr)).await;
    for task in burst {
        task.await.expect("burst");
    }
    let mut client = audit_client(&audit).await;
    let total = assert_audit_mirrors_outbox(&mut client, &lifecycle_db).await;
    assert!(total >= orgs * pairs * 2, "{total}");
    drop(lc_proc);
}

#[tokio::test]
async fn two_lifecycle_replicas_relay_without_duplicates_or_gaps() {
    let mut dbs = TestDatabases::new();
    let audit_db = dbs.create("audit").await;
    let lifecycle_db = dbs.create("lifecycle").await;
    let audit = start_audit(&dbs, &audit_db, None).await;
    let first = start_lifecycle(&dbs, &lifecycle_db, &audit.url()).await;
    let second = start_lifecycle(&dbs, &lifecycle_db, &audit.url()).await;
    let mut lc1 = LifecycleServiceClient::new(first.channel().await);
    let lc2 = LifecycleServiceClient::new(second.channel().await);

    let pairs = burst_size() / 8;
    let ws1 = fixture(&mut lc1, None, "w-one").await.workspace.id;
    let ws2 = fixture(&mut lc1, None, "w-two").await.workspace.id;
    // Both replicas write to both organizations while both relay.
    let tasks = vec![
        tokio::spawn(churn(lc1.clone(), ws1.clone(), pairs)),
        tokio::spawn(churn(lc2.clone(), ws2.clone(), pairs)),
    ];
    for t in tasks {
        t.await.expect("burst");
    }
    // The leader may be either; stopping the first mid-way hands over to the second.
    first.kill().await;
    tokio::spawn(churn(lc2.clone(), ws1, 20))
        .await
        .expect("after failover");
    let mut client = audit_client(&audit).await;
    let total = assert_audit_mirrors_outbox(&mut client, &lifecycle_db).await;
    assert!(total >= pairs * 4, "{total}");
    drop(second);
}
