//! The CLI's answers against a live `ebb serve` (on PostgreSQL when `EBB_TEST_DATABASE_URL`
//! is set): tables that fit a narrow terminal with long JSON summarised, `-o wide|yaml|name`
//! and `--no-headers`; tokens created, listed and revoked; workspaces renamed, archived and
//! restored; `ebb status`; a bulk redelivery that lists with `--dry-run` and asks first.

use std::time::{Duration, Instant};

use crate::cli::{Ebb, row, string};
use crate::cli_contexts::{admin_token, assert_code, serve};
use crate::support::read_request;
use ebb_tests::TestDatabases;
use ebb_tests::proto::notifier::v1 as nt;
use ebb_tests::proto::notifier::v1::notifier_service_client::NotifierServiceClient;
use tokio::io::AsyncWriteExt;

/// An organization, a project and three workspaces, one scheduled; their ids.
async fn fleet(ebb: &Ebb) -> (String, String, Vec<String>) {
    let org = string(&ebb.json(&["orgs", "create", "tables"]).await, "id");
    let project = ebb
        .json(&["projects", "create", "--org", &org, "previews"])
        .await;
    let project = string(&project, "id");
    let mut ids = Vec::new();
    for name in ["pr-1", "pr-2", "pr-3"] {
        let ws = ebb
            .json(&[
                "workspaces",
                "create",
                "--project",
                &project,
                name,
                "--label",
                "team=web-platform-and-friends",
                "--working-directory",
                "/srv/a/rather/long/working/directory/for/this/workspace",
            ])
            .await;
        ids.push(string(&ws, "id"));
    }
    ebb.ok(&["workspaces", "schedule", &ids[0], "--in", "2h"])
        .await;
    (org, project, ids)
}

fn widest(text: &str) -> usize {
    text.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

#[tokio::test]
async fn tables_fit_the_terminal_and_other_formats_print_the_same_answer() {
    let mut dbs = TestDatabases::new();
    let (server, data) = serve(&mut dbs, &[]).await;
    let ebb = Ebb::new(&server, &data, &dbs);
    let (org, project, ids) = fleet(&ebb).await;
    let list = ["workspaces", "list", "--org", org.as_str()];

    // A narrow terminal: every line fits in 60 columns, the names are all there.
    let narrow = ebb
        .run_env(&list, &[("COLUMNS", "60")])
        .await
        .ok("narrow list");
    assert!(widest(&narrow) <= 60, "wider than 60 columns:\n{narrow}");
    for name in ["pr-1", "pr-2", "pr-3"] {
        assert!(narrow.contains(name), "{narrow}");
    }
    // Piped without COLUMNS: lines are not broken, so each id is whole on its row.
    let table = ebb.ok(&list).await;
    for id in &ids {
        assert!(row(&table, id).contains("active"), "{table}");
    }
    assert!(widest(&table) > 60, "{table}");
    // The plain table leaves columns out that -o wide shows.
    assert!(
        !table.contains("inactivity") && !table.contains("protected"),
        "{table}"
    );
    let wide = ebb
        .ok(&["workspaces", "list", "--org", &org, "-o", "wide"])
        .await;
    assert!(
        wide.contains("inactivity") && wide.contains("protected"),
        "{wide}"
    );
    assert!(row(&wide, &ids[0]).contains("in 1h 59m") || row(&wide, &ids[0]).contains("in 2h"));

    // -o name: kind/id per line, for xargs.
    let names = ebb
        .ok(&["workspaces", "list", "--org", &org, "-o", "name"])
        .await;
    let mut got: Vec<&str> = names.lines().collect();
    got.sort_unstable();
    let mut want: Vec<String> = ids.iter().map(|i| format!("workspace/{i}")).collect();
    want.sort();
    assert_eq!(got, want);
    let shown = ebb.ok(&["workspaces", "show", &ids[1], "-o", "name"]).await;
    assert_eq!(shown.trim(), format!("workspace/{}", ids[1]));

    // --no-headers: bare columns, the id first.
    let bare = ebb
        .ok(&["workspaces", "list", "--org", &org, "--no-headers"])
        .await;
    assert_eq!(bare.lines().count(), 3, "{bare}");
    for line in bare.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        assert!(ids.iter().any(|i| i == first), "{bare}");
        assert!(!line.contains('│'), "{bare}");
    }

    // -o yaml: the same answer as -o json.
    let yaml = ebb.ok(&["workspaces", "show", &ids[0], "-o", "yaml"]).await;
    let yaml: serde_json::Value = serde_norway::from_str(&yaml).expect("YAML");
    let json = ebb.json(&["workspaces", "show", &ids[0]]).await;
    assert_eq!(yaml, json);
    assert_eq!(yaml["projectId"], project.as_str());

    // The audit log's JSON column is summarised in a table and whole with -o wide.
    let events = ["audit", "events", "--org", org.as_str()];
    let summarised = ebb
        .run_env(&events, &[("COLUMNS", "100")])
        .await
        .ok("events");
    assert!(widest(&summarised) <= 100, "{summarised}");
    // The schedule's data is cut before its last key; -o wide shows it.
    assert!(
        summarised.contains('…') && !summarised.contains("next_auto_destroy_at"),
        "{summarised}"
    );
    let mut all = events.to_vec();
    all.extend(["-o", "wide"]);
    let whole = ebb.ok(&all).await;
    assert!(
        row(&whole, "workspace.auto_destroy.scheduled").contains("\"next_auto_destroy_at\":"),
        "{whole}"
    );
    server.kill().await;
}

/// notifier settings for a delivery that fails at once into a dead letter: one attempt,
/// loopback allowed, short timeouts.
fn fast_dead_letters() -> Vec<(&'static str, String)> {
    vec![
        ("EBB_NOTIFIER__DELIVERY__RETRY_SCHEDULE", "[\"0s\"]".into()),
        ("EBB_NOTIFIER__DELIVERY__JITTER", "0.0".into()),
        ("EBB_NOTIFIER__DELIVERY__POLL_INTERVAL", "50ms".into()),
        ("EBB_NOTIFIER__DELIVERY__CONNECT_TIMEOUT", "500ms".into()),
        ("EBB_NOTIFIER__DELIVERY__REQUEST_TIMEOUT", "500ms".into()),
        ("EBB_NOTIFIER__EGRESS__ALLOW_LOOPBACK", "true".into()),
    ]
}

/// A webhook receiver on loopback that answers 200 to the first request (the verification)
/// and 500 to every later one; its URL.
async fn refusing_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut served = 0u32;
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = Vec::new();
            while let Ok(Some(_)) = read_request(&mut stream, &mut buf).await {
                let status = if served == 0 {
                    "200 OK"
                } else {
                    "500 Internal Server Error"
                };
                served += 1;
                let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
    });
    url
}

/// The deliveries of `org`, as `ebb notifier deliveries` prints them in JSON.
async fn deliveries(ebb: &Ebb, org: &str) -> Vec<serde_json::Value> {
    ebb.json(&["notifier", "deliveries", "--org", org]).await["deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn tokens_workspace_changes_status_and_a_confirmed_bulk_redelivery() {
    let mut dbs = TestDatabases::new();
    let (server, data) = serve(&mut dbs, &fast_dead_letters()).await;
    let ebb = Ebb::new(&server, &data, &dbs);
    let (org, _, ids) = fleet(&ebb).await;

    // A reader token: its secret once, then listed without it, then revoked.
    let created = ebb
        .json(&[
            "tokens",
            "create",
            "--org",
            &org,
            "--role",
            "reader",
            "--description",
            "dashboards",
            "--expires-in",
            "30d",
        ])
        .await;
    let secret = string(&created, "secret");
    let token_id = string(&created, "token.id");
    let listed = ebb.ok(&["tokens", "list", "--org", &org]).await;
    assert!(row(&listed, &token_id).contains("reader"), "{listed}");
    assert!(!listed.contains(&secret), "{listed}");
    let names = ebb
        .ok(&["tokens", "list", "--org", &org, "-o", "name"])
        .await;
    assert!(
        names.lines().any(|l| l == format!("token/{token_id}")),
        "{names}"
    );
    let read = ebb
        .ok(&["workspaces", "list", "--org", &org, "--token", &secret])
        .await;
    assert!(read.contains(&ids[0]), "the reader reads: {read}");
    let revoked = ebb.json(&["tokens", "revoke", &token_id]).await;
    assert!(revoked["revokeTime"].is_string(), "{revoked:#}");
    let r = ebb
        .run(&["workspaces", "list", "--org", &org, "--token", &secret])
        .await;
    assert_code(&r, 1, "a revoked token");
    assert!(r.stderr.contains("unauthenticated"), "{}", r.stderr);
    let active = ebb.ok(&["tokens", "list", "--org", &org]).await;
    assert!(!active.contains(&token_id), "{active}");
    let all = ebb
        .ok(&[
            "tokens",
            "list",
            "--org",
            &org,
            "--include-revoked",
            "-o",
            "wide",
        ])
        .await;
    assert!(row(&all, &token_id).contains("dashboards"), "{all}");

    // Update, archive, restore.
    let updated = ebb
        .json(&[
            "workspaces",
            "update",
            &ids[1],
            "--name",
            "pr-2-renamed",
            "--label",
            "team=data",
            "--protected",
            "true",
            "--owner-email",
            "dev@example.com",
        ])
        .await;
    assert_eq!(updated["name"], "pr-2-renamed");
    assert_eq!(updated["owner"]["email"], "dev@example.com", "{updated:#}");
    assert_eq!(updated["labels"], serde_json::json!({"team": "data"}));
    assert_eq!(updated["protected"], true);
    let r = ebb.run(&["workspaces", "update", &ids[1]]).await;
    assert_code(&r, 2, "an update without changes");
    let archived = ebb.json(&["workspaces", "archive", &ids[2]]).await;
    assert_eq!(archived["state"], "WORKSPACE_STATE_ARCHIVED");
    let listed = ebb
        .ok(&[
            "workspaces",
            "list",
            "--org",
            &org,
            "--state",
            "archived",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(listed.trim(), format!("workspace/{}", ids[2]));
    let restored = ebb.json(&["workspaces", "restore", &ids[2]]).await;
    assert_eq!(restored["state"], "WORKSPACE_STATE_ACTIVE");

    // A webhook that accepts its verification and refuses everything after, and one event
    // for it: one attempt, then a dead letter.
    let hook = refusing_receiver().await;
    let token = admin_token(&data);
    let mut notifier = NotifierServiceClient::new(server.channel_as(&token).await);
    notifier
        .create_notification_configuration(nt::CreateNotificationConfigurationRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            configuration: Some(nt::NotificationConfiguration {
                organization_id: org.clone(),
                name: "refuses deliveries".into(),
                scope_type: nt::ScopeType::Organization as i32,
                destination_type: nt::DestinationType::Webhook as i32,
                url: hook,
                event_types: vec!["workspace.auto_destroy.scheduled".into()],
                enabled: true,
                ..Default::default()
            }),
        })
        .await
        .expect("configuration");
    notifier
        .publish_event(nt::PublishEventRequest {
            event: Some(nt::Event {
                id: uuid::Uuid::new_v4().to_string(),
                organization_id: org.clone(),
                r#type: "workspace.auto_destroy.scheduled".into(),
                subject_type: "workspace".into(),
                subject_id: ids[0].clone(),
                occur_time: Some(prost_types::Timestamp {
                    seconds: chrono::Utc::now().timestamp(),
                    nanos: 0,
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("publish");
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let failed = deliveries(&ebb, &org).await;
        if !failed.is_empty() {
            break failed;
        }
        assert!(Instant::now() < deadline, "the delivery never failed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(failed.len(), 1, "{failed:#?}");
    let delivery = string(&failed[0], "id");
    assert_eq!(failed[0]["attemptCount"], 1);

    // ebb status: every service serving, the dead letter and the due destroy counted.
    let status = ebb.ok(&["status", "--org", &org]).await;
    for service in [
        "LifecycleService: SERVING",
        "SchedulerService: SERVING",
        "NotifierService: SERVING",
        "AuditService: SERVING",
    ] {
        assert!(status.contains(service), "{status}");
    }
    let line = row(&status, "tables");
    assert!(line.contains('1'), "one dead letter: {status}");
    let json = ebb.json(&["status", "--org", &org]).await;
    assert_eq!(
        json["organizations"][0]["deadLetters"]["count"], 1,
        "{json:#}"
    );
    assert_eq!(
        json["organizations"][0]["dueDestroys"]["count"], 0,
        "{json:#}"
    );
    assert_eq!(json["organizations"][0]["overdueGracePeriods"]["count"], 0);
    assert!(
        json["services"]
            .as_array()
            .expect("services")
            .iter()
            .all(|s| s["status"] == "SERVING"),
        "{json:#}"
    );

    // A bulk redelivery: without a terminal to ask on, it needs --yes and sends nothing.
    let window = [
        "notifier",
        "redeliver-window",
        "--org",
        org.as_str(),
        "--since",
        "1h",
    ];
    let r = ebb.run(&window).await;
    assert_code(&r, 2, "redeliver-window without --yes");
    assert!(
        r.stderr.contains("--yes") && r.stderr.contains("send 1 deliveries"),
        "{}",
        r.stderr
    );
    let mut dry = window.to_vec();
    dry.push("--dry-run");
    let listed = ebb.ok(&dry).await;
    assert!(row(&listed, &delivery).contains("failed"), "{listed}");
    assert!(
        listed.contains("1 deliveries would be sent again"),
        "{listed}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = deliveries(&ebb, &org).await;
    assert_eq!(still[0]["attemptCount"], 1, "nothing was sent: {still:#?}");

    let mut yes = window.to_vec();
    yes.push("--yes");
    let sent = ebb.ok(&yes).await;
    assert!(sent.contains("1 deliveries scheduled again"), "{sent}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let again = ebb
            .json(&[
                "notifier",
                "deliveries",
                "--org",
                &org,
                "--status",
                "failed",
                "--status",
                "pending",
            ])
            .await;
        if again["deliveries"][0]["attemptCount"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never attempted again: {again:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.kill().await;
}
