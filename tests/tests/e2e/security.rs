//! The hardening of issue "Security hardening": each test here is an attack that once
//! worked, and now must not.

use std::time::Duration;

use crate::deprovision::{trigger_webhook_tenant, webhook_catalog};
use ebb_tests::cluster::eventually;
use ebb_tests::proto::audit::v1::audit_service_client::AuditServiceClient;
use ebb_tests::proto::audit::v1::{
    AppendEventsRequest, EventInput, ExportEventsRequest, VerifyChainRequest,
};
use ebb_tests::{Process, TestDatabases};
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
        let mut child = ebb_tests::command("audit-svc")
            .args(["--database-url", &url, "--listen", "127.0.0.1:0"])
            .env("EBB_AUTH__SERVICE_TOKEN", ebb_tests::SERVICE_TOKEN)
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

/// The fields an INVALID_ARGUMENT names in its `google.rpc.BadRequest`.
fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
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

/// Values far out of bounds are refused with the field named, not accepted (a grace period
/// of 1e15 seconds) nor silently clamped (a ClaimRun wait of 1e12 seconds); names cannot hide
/// bidirectional overrides or invisible characters.
#[tokio::test]
async fn out_of_bound_values_and_hidden_characters_are_refused_with_their_field() {
    use ebb_tests::cluster::{Cluster, fixture, from_now, secs};
    use ebb_tests::proto::lifecycle::v1 as pb;
    use ebb_tests::proto::lifecycle::v1::runner_service_client::RunnerServiceClient;

    let cluster = Cluster::start_on(
        TestDatabases::new(),
        0,
        &[("EBB_MAX_GRACE_PERIOD", "30d".into())],
    )
    .await;
    let mut api = cluster.api().await;
    let mut dep = cluster.deprovision().await;
    dep.apply_catalog(pb::ApplyCatalogRequest {
        yaml: include_str!("../../../deploy/catalog/deprovision-tenant.yaml").into(),
        ..Default::default()
    })
    .await
    .expect("apply catalog");
    let f = fixture(&mut api, None, "ws").await;
    let tenant = dep
        .create_entity(pb::CreateEntityRequest {
            organization_id: f.org.id.clone(),
            kind: "tenant".into(),
            name: "acme".into(),
            ..Default::default()
        })
        .await
        .expect("create entity")
        .into_inner()
        .entity
        .expect("entity");

    // The configured maximum (30 days) holds, and its bound itself is accepted.
    for seconds in [1e15, 30.0 * 86_400.0 + 1.0, 0.5] {
        let err = dep
            .trigger_action(pb::TriggerActionRequest {
                entity_id: tenant.id.clone(),
                action: "DeprovisionTenant".into(),
                parameters: grace(seconds),
                dry_run: true,
                ..Default::default()
            })
            .await
            .expect_err("grace period out of bounds");
        assert!(
            violated_fields(&err).contains(&"parameters.gracePeriodSeconds".to_owned()),
            "{err:?}"
        );
        let err = dep
            .schedule_action(pb::ScheduleActionRequest {
                entity_id: tenant.id.clone(),
                action: "DeprovisionTenant".into(),
                parameters: grace(seconds),
                scheduled_time: Some(from_now(Duration::from_secs(3600))),
                ..Default::default()
            })
            .await
            .expect_err("grace period out of bounds");
        assert!(
            violated_fields(&err).contains(&"parameters.gracePeriodSeconds".to_owned()),
            "{err:?}"
        );
    }
    dep.trigger_action(pb::TriggerActionRequest {
        entity_id: tenant.id.clone(),
        action: "DeprovisionTenant".into(),
        parameters: grace(30.0 * 86_400.0),
        dry_run: true,
        ..Default::default()
    })
    .await
    .expect("the maximum itself");

    // A wait past the 60 s long-poll is refused, not clamped.
    let mut runner = RunnerServiceClient::new(cluster.lifecycle.channel().await);
    let err = runner
        .claim_run(pb::ClaimRunRequest {
            organization_id: f.org.id.clone(),
            runner_id: "r".into(),
            wait: Some(secs(1_000_000_000_000)),
        })
        .await
        .expect_err("wait of 1e12 s");
    assert_eq!(violated_fields(&err), ["wait"]);

    // Names and labels with bidirectional overrides or invisible characters.
    for name in [
        "prod\u{202E}dlrow",
        "a\u{2066}b\u{2069}",
        "zero\u{200B}width",
    ] {
        let err = api
            .create_workspace(pb::CreateWorkspaceRequest {
                project_id: f.project.id.clone(),
                name: name.into(),
                ..Default::default()
            })
            .await
            .expect_err("hidden characters in a name");
        assert_eq!(violated_fields(&err), ["name"], "{name:?}");
    }
    let err = api
        .create_workspace(pb::CreateWorkspaceRequest {
            project_id: f.project.id.clone(),
            name: "fine".into(),
            labels: [("team".to_owned(), "ops\u{202E}".to_owned())].into(),
            ..Default::default()
        })
        .await
        .expect_err("hidden characters in a label");
    assert_eq!(violated_fields(&err), ["labels[team]"]);
    api.create_workspace(pb::CreateWorkspaceRequest {
        project_id: f.project.id.clone(),
        name: "Zürich 東京 🚀".into(),
        ..Default::default()
    })
    .await
    .expect("non-ASCII names stay welcome");
}

/// The example catalog with an alias bomb in a parameter's default: an anchor of 2,000 values
/// referenced 3,000 times, six million values once expanded.
fn alias_bomb() -> String {
    let anchor: Vec<String> = (0..2000).map(|i| format!("x{i}")).collect();
    let aliases = vec!["*a"; 3000].join(", ");
    include_str!("../../../deploy/catalog/deprovision-tenant.yaml").replacen(
        "        parameters:\n",
        &format!(
            "        parameters:\n          - name: pad\n            type: string\n            \
             default: &a [{}]\n          - name: bomb\n            type: string\n            \
             default: [{aliases}]\n",
            anchor.join(", ")
        ),
        1,
    )
}

/// An alias bomb is refused at once with the `yaml` field named, and health keeps answering
/// while bombs are parsed.
#[tokio::test]
async fn a_yaml_alias_bomb_is_refused_quickly_and_health_never_stalls() {
    use ebb_tests::cluster::Cluster;
    use ebb_tests::proto::lifecycle::v1 as pb;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let cluster = Cluster::start(0).await;
    let bomb = alias_bomb();
    let started = std::time::Instant::now();
    let dep = cluster.deprovision().await;
    let bombs: Vec<_> = (0..3)
        .map(|_| {
            let yaml = bomb.clone();
            let mut dep = dep.clone();
            tokio::spawn(async move {
                dep.apply_catalog(pb::ApplyCatalogRequest {
                    yaml,
                    ..Default::default()
                })
                .await
            })
        })
        .collect();
    let health_channel = tonic::transport::Channel::from_shared(cluster.lifecycle.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(health_channel);
    let mut slowest = Duration::ZERO;
    while bombs.iter().any(|b| !b.is_finished()) {
        let asked = std::time::Instant::now();
        tokio::time::timeout(
            Duration::from_secs(2),
            health.check(HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await
        .expect("health answers within 2s while bombs are parsed")
        .expect("health");
        slowest = slowest.max(asked.elapsed());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "bombs still being parsed after 10s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for b in bombs {
        let err = b.await.expect("task").expect_err("bomb refused");
        assert_eq!(violated_fields(&err), ["yaml"], "{err:?}");
        assert!(err.message().contains("expands to more than"), "{err:?}");
    }
    assert!(
        slowest < Duration::from_millis(500),
        "health took {slowest:?}"
    );
}

/// A webhook step whose receiver redirects to an internal address: lifecycle does not follow
/// the redirect, the internal address is never contacted, the step's error (which readers see)
/// quotes the status line and not the body, and the request was signed with Standard Webhooks
/// headers. The catalog refuses metadata and (by default) loopback URLs outright.
#[tokio::test]
async fn webhook_steps_go_through_the_egress_guard_and_never_follow_redirects() {
    use crate::support::read_request;
    use ebb_tests::cluster::Cluster;
    use ebb_tests::proto::lifecycle::v1 as pb;
    use ebb_tests::proto::lifecycle::v1::deprovision_service_client::DeprovisionServiceClient;
    use ebb_tests::proto::lifecycle::v1::token_service_client::TokenServiceClient;
    use tokio::io::AsyncWriteExt;

    let secret = ebb_common::signing::generate_secret();
    let cluster = Cluster::start_on(
        TestDatabases::new(),
        0,
        &[("EBB_STEP_SIGNING_SECRET", secret.clone())],
    )
    .await;

    // The internal service the redirect points at: any request to it is a failure.
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let internal_addr = internal.local_addr().expect("addr");
    let (hit_tx, mut hit_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = internal.accept().await {
            let _ = hit_tx.send(());
            let body = "db_password=hunter2";
            let _ = socket
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    // The step's receiver: answers with a redirect to the internal service.
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", receiver.local_addr().expect("addr"));
    let (req_tx, req_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = receiver.accept().await.expect("accept");
        let request = read_request(&mut socket, &mut Vec::new())
            .await
            .expect("read")
            .expect("a request");
        let body = "moved; db_password=hunter2";
        let reply = format!(
            "HTTP/1.1 302 Found\r\nlocation: http://{internal_addr}/admin\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(reply.as_bytes()).await.expect("reply");
        let _ = req_tx.send(request);
    });

    let (mut dep, tenant, run) = trigger_webhook_tenant(&cluster, &url).await;

    // Signed as the notifier signs: webhook-id, webhook-timestamp, webhook-signature.
    let request = tokio::time::timeout(Duration::from_secs(20), req_rx)
        .await
        .expect("the webhook was called")
        .expect("request");
    let id = &request.headers["webhook-id"];
    let timestamp: i64 = request.headers["webhook-timestamp"]
        .parse()
        .expect("timestamp");
    let expected = ebb_common::signing::standard_signature(&secret, id, timestamp, &request.body)
        .expect("sign");
    assert_eq!(request.headers["webhook-signature"], expected);

    // A reader of the organization sees the step failed with the status line only.
    let mut tokens = TokenServiceClient::new(cluster.lifecycle.channel().await);
    let reader = tokens
        .create_token(pb::CreateTokenRequest {
            organization_id: tenant.organization_id.clone(),
            role: pb::TokenRole::Reader as i32,
            description: "reader".into(),
            ..Default::default()
        })
        .await
        .expect("token")
        .into_inner()
        .secret;
    let mut as_reader = DeprovisionServiceClient::new(cluster.lifecycle.channel_as(&reader).await);
    let step = eventually(Duration::from_secs(20), "the step to fail", || {
        let mut as_reader = as_reader.clone();
        let id = run.id.clone();
        async move {
            let run = as_reader
                .get_action_run(pb::GetActionRunRequest { action_run_id: id })
                .await
                .expect("get")
                .into_inner()
                .action_run
                .expect("run");
            run.steps
                .into_iter()
                .find(|s| s.status == pb::ActionStepStatus::Failed as i32)
        }
    })
    .await;
    assert!(step.error.contains("302 Found"), "{}", step.error);
    assert!(!step.error.contains("hunter2"), "{}", step.error);
    assert!(!step.error.contains("moved"), "{}", step.error);
    assert!(hit_rx.try_recv().is_err(), "the redirect was followed");
    as_reader
        .get_action_run(pb::GetActionRunRequest {
            action_run_id: run.id.clone(),
        })
        .await
        .expect("still readable");

    // Metadata and link-local URLs are refused by the catalog; loopback too where it is not
    // allowed explicitly.
    let err = dep
        .apply_catalog(pb::ApplyCatalogRequest {
            yaml: webhook_catalog("http://169.254.169.254/latest/meta-data/"),
            ..Default::default()
        })
        .await
        .expect_err("metadata URL");
    assert_eq!(violated_fields(&err), ["yaml"]);
    assert!(err.message().contains("169.254.169.254"), "{err:?}");
    let strict = Cluster::start_on(
        TestDatabases::new(),
        0,
        &[("EBB_EGRESS__ALLOW_LOOPBACK", "false".into())],
    )
    .await;
    let err = strict
        .deprovision()
        .await
        .apply_catalog(pb::ApplyCatalogRequest {
            yaml: webhook_catalog(&url),
            ..Default::default()
        })
        .await
        .expect_err("loopback URL");
    assert!(err.message().contains("loopback"), "{err:?}");
    let err = strict
        .deprovision()
        .await
        .apply_catalog(pb::ApplyCatalogRequest {
            yaml: webhook_catalog("http://[::ffff:127.0.0.1]:9/x"),
            ..Default::default()
        })
        .await
        .expect_err("loopback as a mapped IPv6 address");
    assert!(err.message().contains("loopback"), "{err:?}");
}

/// A flood of refused calls is one `auth.denied` event per caller, method and code per window
/// (1 s in tests, a minute by default) with their count; a call about another organization's
/// resource leaves no event naming it, exactly as for an id that exists nowhere.
#[tokio::test]
async fn refused_calls_are_aggregated_and_never_reveal_foreign_ids() {
    use ebb_tests::cluster::{Cluster, events, fixture};
    use ebb_tests::proto::lifecycle::v1 as pb;
    use ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
    use ebb_tests::proto::lifecycle::v1::token_service_client::TokenServiceClient;

    let cluster = Cluster::start(0).await;
    let mut api = cluster.api().await;
    let a = fixture(&mut api, None, "ws-a").await;
    let b = fixture(&mut api, None, "ws-b").await;
    let reader = TokenServiceClient::new(cluster.lifecycle.channel().await)
        .create_token(pb::CreateTokenRequest {
            organization_id: b.org.id.clone(),
            role: pb::TokenRole::Reader as i32,
            description: "b reader".into(),
            ..Default::default()
        })
        .await
        .expect("token")
        .into_inner()
        .secret;
    let as_reader = LifecycleServiceClient::new(cluster.lifecycle.channel_as(&reader).await);

    // Foreign and missing ids: the same answer.
    let missing = uuid::Uuid::new_v4().to_string();
    for id in [&a.workspace.id, &missing] {
        let err = as_reader
            .clone()
            .get_workspace(pb::GetWorkspaceRequest {
                workspace_id: id.clone(),
            })
            .await
            .expect_err("not visible");
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), format!("workspace {id} not found"));
    }
    // 50 refused writes at once.
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let mut c = as_reader.clone();
            let project_id = b.project.id.clone();
            tokio::spawn(async move {
                c.create_workspace(pb::CreateWorkspaceRequest {
                    project_id,
                    name: format!("nope-{i}"),
                    ..Default::default()
                })
                .await
            })
        })
        .collect();
    for call in calls {
        let r = call.await.expect("task");
        assert_eq!(r.expect_err("reader").code(), Code::PermissionDenied);
    }

    let count_of = |e: &pb::OutboxEvent| {
        e.data
            .as_ref()
            .and_then(|d| d.fields.get("count"))
            .and_then(|v| match v.kind {
                Some(prost_types::value::Kind::NumberValue(n)) => Some(n as u64),
                _ => None,
            })
            .unwrap_or(0)
    };
    let denied = eventually(Duration::from_secs(15), "the aggregated event", || {
        let mut api = api.clone();
        let org = b.org.id.clone();
        async move {
            let denied = events(&mut api, &org, "auth.denied").await;
            let total: u64 = denied.iter().map(count_of).sum();
            (total >= 50).then_some(denied)
        }
    })
    .await;
    assert_eq!(denied.len(), 1, "{denied:#?}");
    assert_eq!(count_of(&denied[0]), 50);
    let text = format!("{denied:?}");
    assert!(text.contains("CreateWorkspace"), "{text}");
    assert!(
        !text.contains(&a.workspace.id),
        "a foreign id leaked: {text}"
    );
    assert!(!text.contains(&missing), "{text}");
}

/// Health over a fresh connection, within `limit`.
async fn health_answers(p: &Process, limit: Duration) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let check = async {
        let channel = tonic::transport::Channel::from_shared(p.url())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health")
    };
    tokio::time::timeout(limit, check)
        .await
        .expect("health answers in time");
}

/// 300 connections that never finish their HTTP/2 preface (silent, or half a preface) are
/// closed after the handshake timeout, and health answers while they are held.
#[tokio::test]
async fn idle_and_half_open_connections_are_closed_and_health_still_answers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut dbs = TestDatabases::new();
    let p = start_audit(&mut dbs, &[("EBB_LIMITS__HANDSHAKE_TIMEOUT", "1s".into())]).await;
    let mut held = Vec::new();
    for i in 0..300 {
        let mut socket = tokio::net::TcpStream::connect(p.addr)
            .await
            .expect("connect");
        if i % 2 == 0 {
            socket
                .write_all(b"PRI * HTTP/2.0\r\n")
                .await
                .expect("half a preface");
        }
        held.push(socket);
    }
    health_answers(&p, Duration::from_secs(2)).await;
    let started = std::time::Instant::now();
    for mut socket in held {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a connection stayed open");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    health_answers(&p, Duration::from_secs(2)).await;
}

/// HTTP/2 rapid reset (CVE-2023-44487): a client opening and cancelling streams as fast as it
/// can does not take the server down; health answers on another connection.
#[tokio::test]
async fn an_http2_rapid_reset_flood_leaves_the_server_responsive() {
    use tokio::io::AsyncWriteExt;
    let mut dbs = TestDatabases::new();
    let p = start_audit(&mut dbs, &[]).await;
    let mut socket = tokio::net::TcpStream::connect(p.addr)
        .await
        .expect("connect");
    let mut frames = Vec::new();
    frames.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
    for n in 0..5000u32 {
        let id = (2 * n + 1).to_be_bytes();
        // HEADERS (END_HEADERS): :method POST, :scheme http, :path / from the static table.
        frames.extend_from_slice(&[0, 0, 3, 1, 4, id[0], id[1], id[2], id[3], 0x83, 0x86, 0x84]);
        // RST_STREAM CANCEL.
        frames.extend_from_slice(&[0, 0, 4, 3, 0, id[0], id[1], id[2], id[3], 0, 0, 0, 8]);
    }
    // The server may close the connection part way: that is a fine answer to a flood.
    let _ = socket.write_all(&frames).await;
    health_answers(&p, Duration::from_secs(2)).await;
    let mut audit = AuditServiceClient::new(p.channel().await);
    audit
        .append_events(AppendEventsRequest {
            events: vec![audit_event("org-rr", 1)],
        })
        .await
        .expect("still serving calls");
}

/// Resident memory of a process in kilobytes (`VmRSS` of /proc/PID/status).
fn rss_kb(p: &Process) -> u64 {
    let pid = p.pid().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Appends `n` events of about a kilobyte each to the chain of `org`.
async fn seed_chain(p: &Process, org: &str, n: i64) {
    let mut audit = AuditServiceClient::new(p.channel().await);
    let filler = "x".repeat(1000);
    let mut next = 1;
    while next <= n {
        let events = (next..(next + 1000).min(n + 1))
            .map(|i| {
                let mut event = audit_event(org, i);
                event.data = Some(prost_types::Struct {
                    fields: [(
                        "note".to_owned(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::StringValue(filler.clone())),
                        },
                    )]
                    .into(),
                });
                event
            })
            .collect::<Vec<_>>();
        next += events.len() as i64;
        audit
            .append_events(AppendEventsRequest { events })
            .await
            .expect("append");
    }
}

/// 100 ExportEvents streams that are opened and never read hold at most a megabyte each:
/// the server reads a page from the database only when the client has taken the previous
/// one. (Each once held thousands of events, about 7 MB.)
#[tokio::test]
async fn unread_export_streams_do_not_pin_memory() {
    let mut dbs = TestDatabases::new();
    let p = start_audit(
        &mut dbs,
        &[("EBB_EXPORT__MAX_STREAMS_PER_CALLER", "100".into())],
    )
    .await;
    seed_chain(&p, "org-x", 4000).await;
    let request = ExportEventsRequest {
        organization_id: "org-x".into(),
        ..Default::default()
    };
    // One export read to the end: the whole chain arrives, and the allocator has warmed up.
    let mut audit = AuditServiceClient::new(p.channel().await);
    let mut stream = audit
        .export_events(request.clone())
        .await
        .expect("export")
        .into_inner();
    let mut received = 0;
    while let Some(message) = stream.message().await.expect("message") {
        received += message.events.len();
    }
    assert_eq!(received, 4000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kb(&p);
    let (mut held, mut clients) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        let mut audit = AuditServiceClient::new(p.channel().await);
        for _ in 0..25 {
            let stream = audit
                .export_events(request.clone())
                .await
                .expect("export")
                .into_inner();
            held.push(stream);
        }
        clients.push(audit);
    }
    // Whatever the server would buffer, it has by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kb(&p);
    let grown = after.saturating_sub(before);
    println!(
        "100 unread export streams: audit-svc RSS {before} kB -> {after} kB, grew {grown} kB \
         ({} kB per stream)",
        grown / 100
    );
    assert!(
        grown <= 100 * 1024,
        "100 unread streams grew RSS by {grown} kB (limit 1 MB per stream)"
    );
    drop((held, clients));
}

/// A token may have at most `export.max_streams_per_caller` (default 4) ExportEvents streams
/// open; one more answers RESOURCE_EXHAUSTED naming the limit, and a cancelled stream gives
/// its place back.
#[tokio::test]
async fn export_streams_per_token_are_limited() {
    let mut dbs = TestDatabases::new();
    let p = start_audit(&mut dbs, &[]).await;
    // More than HTTP/2's flow-control windows hold (about 6 MB), so an unread stream stays
    // open instead of finishing into the transport's buffers.
    seed_chain(&p, "org-l", 6000).await;
    let request = ExportEventsRequest {
        organization_id: "org-l".into(),
        ..Default::default()
    };
    let mut audit = AuditServiceClient::new(p.channel().await);
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(
            audit
                .export_events(request.clone())
                .await
                .expect("within the limit")
                .into_inner(),
        );
    }
    let err = audit
        .export_events(request.clone())
        .await
        .expect_err("one too many");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("at most 4") && err.message().contains("max_streams_per_caller"),
        "{err:?}"
    );
    drop(open.pop());
    eventually(
        Duration::from_secs(5),
        "a cancelled stream frees its place",
        || {
            let mut audit = audit.clone();
            let request = request.clone();
            async move { audit.export_events(request).await.ok().map(|_| ()) }
        },
    )
    .await;
}
