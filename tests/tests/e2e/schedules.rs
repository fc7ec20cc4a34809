//! Recurring schedules and owners end to end (the schedules issue, items 1 and 5), against
//! real lifecycle-svc and scheduler-svc processes. The daylight-saving test moves lifecycle's
//! clock with the test clock (`EBB_TEST_CLOCK_FILE`): every other process keeps real time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ebb_tests::Channel;
use ebb_tests::TestDatabases;
use ebb_tests::cluster::{
    Cluster, create_workspace, events, eventually, fixture, runs, secs, workspace,
};
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use tonic::Code;
use tonic_types::StatusExt;

const WAIT: Duration = Duration::from_secs(20);
/// The scheduler task that queues due destroys.
const CHECK: &str = "auto_destroy_check";
/// The scheduler task that sends reminders.
const REMINDERS: &str = "auto_destroy_reminders";

/// Epoch milliseconds of an RFC 3339 time.
pub(crate) fn ms(t: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t)
        .expect("rfc3339")
        .timestamp_millis()
}

pub(crate) fn ts_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos / 1_000_000)
}

/// The RFC 3339 text events carry.
pub(crate) fn text(t: &str) -> String {
    ebb_common::time::rfc3339(ms(t))
}

/// The test clock lifecycle reads: an offset file the test rewrites.
pub(crate) struct Clock(pub(crate) PathBuf);

impl Clock {
    pub(crate) fn new(dir: &Path) -> Self {
        let clock = Self(dir.join("clock-offset"));
        std::fs::write(&clock.0, "0").expect("write the clock offset");
        clock
    }

    /// Moves lifecycle's clock so that it reads `at` now.
    pub(crate) fn set(&self, at: &str) {
        let offset = ms(at) - chrono::Utc::now().timestamp_millis();
        std::fs::write(&self.0, offset.to_string()).expect("write the clock offset");
    }
}

async fn apply(api: &mut LifecycleServiceClient<Channel>, ws: &str, serial: i64) {
    api.record_state_version(pb::RecordStateVersionRequest {
        workspace_id: ws.into(),
        serial,
        ..Default::default()
    })
    .await
    .expect("record a state version");
}

async fn set_recurring(
    api: &mut LifecycleServiceClient<Channel>,
    ws: &str,
    cron: &str,
    zone: &str,
) -> Result<pb::Workspace, tonic::Status> {
    Ok(api
        .set_auto_destroy(pb::SetAutoDestroyRequest {
            workspace_id: ws.into(),
            recurring: Some(pb::RecurringSchedule {
                cron: cron.into(),
                time_zone: zone.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .workspace
        .expect("workspace"))
}

fn next_occurrences(ws: &pb::Workspace) -> Vec<i64> {
    ws.recurring_auto_destroy
        .as_ref()
        .expect("a recurring schedule")
        .next_occurrences
        .iter()
        .map(ts_ms)
        .collect()
}

/// Claims the organization's queued run and completes it as succeeded.
pub(crate) async fn runner_succeeds(cluster: &Cluster, org: &str) -> pb::Run {
    let mut runner = cluster.runner().await;
    let claim = runner
        .claim_run(pb::ClaimRunRequest {
            organization_id: org.into(),
            runner_id: "test-runner".into(),
            wait: Some(secs(5)),
        })
        .await
        .expect("claim")
        .into_inner();
    let run = claim.run.expect("a queued run");
    runner
        .complete_run(pb::CompleteRunRequest {
            run_id: run.id.clone(),
            lease_token: claim.lease_token,
            outcome: pb::RunOutcome::Succeeded as i32,
            ..Default::default()
        })
        .await
        .expect("complete");
    run
}

/// Auto-destroy runs of a workspace.
pub(crate) async fn destroy_runs(
    api: &mut LifecycleServiceClient<Channel>,
    org: &str,
    ws: &str,
) -> Vec<i64> {
    runs(api, org, ws)
        .await
        .into_iter()
        .filter(|r| r.source == pb::RunSource::AutoDestroy as i32)
        .filter_map(|r| r.fire_due_time.as_ref().map(ts_ms))
        .collect()
}

/// The `due_at` and `reason` of a workspace's events of `kind`.
pub(crate) async fn event_dues(
    api: &mut LifecycleServiceClient<Channel>,
    org: &str,
    kind: &str,
    ws: &str,
) -> Vec<(String, String)> {
    events(api, org, kind)
        .await
        .into_iter()
        .filter(|e| e.subject_id == ws)
        .map(|e| (field(&e, "due_at"), field(&e, "reason")))
        .collect()
}

/// A string field of an event's data, or empty.
pub(crate) fn field(e: &pb::OutboxEvent, name: &str) -> String {
    match e
        .data
        .as_ref()
        .and_then(|d| d.fields.get(name)?.kind.clone())
    {
        Some(prost_types::value::Kind::StringValue(s)) => s,
        _ => String::new(),
    }
}

/// "30 2 * * *" in Berlin across both 2026 transitions, on a clock the test moves: on the
/// spring-forward day (02:30 does not exist) the occurrence fires once at 03:00 CEST, an
/// occurrence with nothing to destroy is recorded as skipped, reminders go out once; on the
/// autumn day (02:30 happens twice) it fires at the first 02:30 and never at the second.
#[tokio::test]
async fn a_recurring_destroy_fires_once_across_both_daylight_saving_transitions() {
    let dbs = TestDatabases::new();
    let clock = Clock::new(dbs.dir());
    clock.set("2026-03-29T00:58:00Z");
    let env = [("EBB_TEST_CLOCK_FILE", clock.0.display().to_string())];
    let cluster = Cluster::start_on(dbs, 1, &env).await;
    let mut api = cluster.api().await;
    let settings = pb::OrganizationSettings {
        reminder_lead_times: vec![secs(60)],
        minimum_notice: Some(secs(0)),
        ..Default::default()
    };
    let f = fixture(&mut api, Some(settings), "applied").await;
    let org = f.org.id.clone();
    let applied = f.workspace.id.clone();
    let idle = create_workspace(&mut api, &f.project.id, "never-applied")
        .await
        .id;
    apply(&mut api, &applied, 1).await;

    // Spring: the first occurrence is 03:00 CEST (01:00 UTC), then 02:30 CEST each day.
    for id in [&applied, &idle] {
        let ws = set_recurring(&mut api, id, "30 2 * * *", "Europe/Berlin")
            .await
            .expect("set a recurring destroy");
        assert_eq!(
            next_occurrences(&ws)[..3],
            [
                ms("2026-03-29T01:00:00Z"),
                ms("2026-03-30T00:30:00Z"),
                ms("2026-03-31T00:30:00Z")
            ]
        );
        assert_eq!(ws.next_auto_destroy_reason, "recurring");
    }
    // The reminder a minute before: only for the workspace that has something to destroy.
    clock.set("2026-03-29T00:59:10Z");
    cluster.scheduler_rounds(REMINDERS, 2).await;
    let due = text("2026-03-29T01:00:00Z");
    assert_eq!(
        event_dues(&mut api, &org, "workspace.auto_destroy.reminder", &applied).await,
        vec![(due.clone(), "recurring".to_owned())]
    );
    assert!(
        event_dues(&mut api, &org, "workspace.auto_destroy.reminder", &idle)
            .await
            .is_empty(),
        "no reminder when there is nothing to destroy"
    );

    clock.set("2026-03-29T00:59:58Z");
    eventually(WAIT, "the spring occurrence's run", || {
        let (mut api, org, id) = (api.clone(), org.clone(), applied.clone());
        async move { (!destroy_runs(&mut api, &org, &id).await.is_empty()).then_some(()) }
    })
    .await;
    cluster.scheduler_rounds(CHECK, 3).await;
    cluster.scheduler_rounds(REMINDERS, 1).await;
    assert_eq!(
        destroy_runs(&mut api, &org, &applied).await,
        vec![ms("2026-03-29T01:00:00Z")],
        "one run, at the first instant after the gap"
    );
    assert!(destroy_runs(&mut api, &org, &idle).await.is_empty());
    assert_eq!(
        event_dues(&mut api, &org, "workspace.auto_destroy.skipped", &idle).await,
        vec![(due.clone(), "nothing_to_destroy".to_owned())]
    );
    assert_eq!(
        event_dues(&mut api, &org, "workspace.auto_destroy.reminder", &applied)
            .await
            .len(),
        1,
        "each (occurrence, lead time) reminded once"
    );
    for id in [&applied, &idle] {
        let ws = workspace(&mut api, id).await;
        assert_eq!(
            ws.next_auto_destroy_at.as_ref().map(ts_ms),
            Some(ms("2026-03-30T00:30:00Z")),
            "the next occurrence is its own fire key"
        );
    }
    // The destroy succeeds; a recurring workspace stays active for its next apply.
    runner_succeeds(&cluster, &org).await;
    let ws = workspace(&mut api, &applied).await;
    assert_eq!(ws.state, pb::WorkspaceState::Active as i32);
    assert_eq!(
        ws.auto_destroy_status,
        pb::AutoDestroyStatus::Succeeded as i32
    );
    for id in [&applied, &idle] {
        api.clear_auto_destroy(pb::ClearAutoDestroyRequest {
            workspace_id: id.to_string(),
            clear_recurring: true,
            ..Default::default()
        })
        .await
        .expect("clear the recurring destroy");
    }

    // Autumn: 02:30 happens twice (00:30 UTC in CEST, 01:30 UTC in CET).
    clock.set("2026-10-25T00:29:00Z");
    let autumn = create_workspace(&mut api, &f.project.id, "autumn").await.id;
    apply(&mut api, &autumn, 1).await;
    let ws = set_recurring(&mut api, &autumn, "30 2 * * *", "Europe/Berlin")
        .await
        .expect("set a recurring destroy");
    assert_eq!(
        next_occurrences(&ws)[..2],
        [ms("2026-10-25T00:30:00Z"), ms("2026-10-26T01:30:00Z")]
    );
    clock.set("2026-10-25T00:29:58Z");
    eventually(WAIT, "the autumn occurrence's run", || {
        let (mut api, org, id) = (api.clone(), org.clone(), autumn.clone());
        async move { (!destroy_runs(&mut api, &org, &id).await.is_empty()).then_some(()) }
    })
    .await;
    runner_succeeds(&cluster, &org).await;
    // Something to destroy again before the second 02:30: still, it must not fire.
    apply(&mut api, &autumn, 2).await;
    clock.set("2026-10-25T01:30:01Z");
    cluster.scheduler_rounds(CHECK, 3).await;
    assert_eq!(
        destroy_runs(&mut api, &org, &autumn).await,
        vec![ms("2026-10-25T00:30:00Z")],
        "never twice on the autumn day"
    );
    let ws = workspace(&mut api, &autumn).await;
    assert_eq!(
        ws.next_auto_destroy_at.as_ref().map(ts_ms),
        Some(ms("2026-10-26T01:30:00Z"))
    );
    // And the next day's 02:30 (CET) fires as usual.
    clock.set("2026-10-26T01:29:58Z");
    eventually(WAIT, "the next day's run", || {
        let (mut api, org, id) = (api.clone(), org.clone(), autumn.clone());
        async move { (destroy_runs(&mut api, &org, &id).await.len() == 2).then_some(()) }
    })
    .await;
    assert_eq!(
        destroy_runs(&mut api, &org, &autumn).await,
        vec![ms("2026-10-26T01:30:00Z"), ms("2026-10-25T00:30:00Z")]
    );
    cluster.check_destroy_causes().await;
    assert!(
        cluster
            .lifecycle
            .log_text()
            .contains("the test clock is on"),
        "a process on the test clock says so"
    );
}

/// Refusals name the field; the minimum notice skips occurrences to the first after it; the
/// preview shows the next occurrences; an extension moves only the current occurrence;
/// protection refuses a recurring schedule and clearing removes it.
#[tokio::test]
async fn recurring_schedules_are_validated_noticed_previewed_and_extended() {
    let cluster = Cluster::start(1).await;
    let mut api = cluster.api().await;
    // The default minimum notice: the longest lead time, 24 hours.
    let f = fixture(&mut api, None, "weekly").await;
    let id = f.workspace.id.clone();
    for (cron, zone, field) in [
        ("0 19 * *", "Europe/Berlin", "recurring.cron"),
        ("0 25 * * FRI", "Europe/Berlin", "recurring.cron"),
        ("0 19 * * FRI", "Europe/Berlinn", "recurring.time_zone"),
        ("0 19 * * FRI", "", "recurring.time_zone"),
    ] {
        let status = set_recurring(&mut api, &id, cron, zone)
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{cron} {zone}");
        let fields: Vec<String> = status
            .get_details_bad_request()
            .expect("field violations")
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, vec![field.to_owned()], "{cron} {zone}");
    }

    apply(&mut api, &id, 1).await;
    let now = chrono::Utc::now().timestamp_millis();
    let ws = set_recurring(&mut api, &id, "0 * * * *", "UTC")
        .await
        .expect("hourly");
    let next = ws.next_auto_destroy_at.as_ref().map(ts_ms).expect("due");
    assert!(
        next >= now + 24 * 3_600_000 && next < now + 25 * 3_600_000 + 60_000,
        "the first occurrence at or after the minimum notice"
    );
    assert_eq!(next % 3_600_000, 0, "on the hour, as the cron names");
    let occurrences = next_occurrences(&ws);
    assert_eq!(occurrences.len(), 5);
    assert!(occurrences.windows(2).all(|p| p[1] - p[0] == 3_600_000));

    // The preview of a weekly schedule on the project: the next occurrences, Friday 19:00
    // Berlin time.
    let preview = api
        .preview_auto_destroy(pb::PreviewAutoDestroyRequest {
            organization_id: f.org.id.clone(),
            recurring: Some(pb::RecurringSchedule {
                cron: "0 19 * * FRI".into(),
                time_zone: "Europe/Berlin".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("preview")
        .into_inner();
    let item = preview
        .items
        .iter()
        .find(|i| i.workspace_id == id)
        .expect("the applied workspace");
    assert_eq!(item.next_occurrences.len(), 5);
    for t in &item.next_occurrences {
        let local = chrono::DateTime::from_timestamp_millis(ts_ms(t))
            .expect("time")
            .with_timezone(&chrono_tz::Europe::Berlin);
        assert_eq!(local.format("%a %H:%M").to_string(), "Fri 19:00", "{local}");
    }

    // An extension applies to the current occurrence only.
    let ws = api
        .extend_auto_destroy(pb::ExtendAutoDestroyRequest {
            workspace_id: id.clone(),
            extend_by: "30m".into(),
            ..Default::default()
        })
        .await
        .expect("extend")
        .into_inner()
        .workspace
        .expect("workspace");
    let extended = next_occurrences(&ws);
    assert_eq!(extended[0], occurrences[0] + 30 * 60_000);
    assert_eq!(extended[1], occurrences[1], "the next occurrence stays");

    let ws = api
        .clear_auto_destroy(pb::ClearAutoDestroyRequest {
            workspace_id: id.clone(),
            clear_recurring: true,
            ..Default::default()
        })
        .await
        .expect("clear")
        .into_inner()
        .workspace
        .expect("workspace");
    assert!(ws.recurring_auto_destroy.is_none());
    assert!(ws.next_auto_destroy_at.is_none());

    let protected = api
        .create_workspace(pb::CreateWorkspaceRequest {
            project_id: f.project.id.clone(),
            name: "protected".into(),
            protected: true,
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .workspace
        .expect("workspace");
    let status = set_recurring(&mut api, &protected.id, "0 19 * * FRI", "UTC")
        .await
        .expect_err("protected");
    assert_eq!(status.code(), Code::FailedPrecondition);
}

/// The database refuses a recurring schedule without its time zone or its occurrence.
#[tokio::test]
async fn the_database_refuses_a_partial_recurring_schedule() {
    use sea_orm::ConnectionTrait;
    let cluster = Cluster::start(0).await;
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "partial").await;
    let sql = cluster.lifecycle_sql().await;
    for set in [
        "recurring_cron = '0 19 * * FRI'",
        "recurring_cron = '0 19 * * FRI', recurring_time_zone = 'UTC'",
        "recurring_time_zone = 'UTC', recurring_due_at = 1",
    ] {
        let refused = sql
            .execute_unprepared(&format!(
                "UPDATE workspaces SET {set} WHERE id = '{}'",
                f.workspace.id
            ))
            .await;
        assert!(refused.is_err(), "the database accepted {set}");
    }
}

/// Owners: set at creation and by update (refused naming the field when malformed), listed by
/// `owner`, and carried by the workspace's reminders and results as `data.owner`.
#[tokio::test]
async fn owners_filter_the_list_and_ride_on_reminders() {
    let cluster = Cluster::start(1).await;
    let mut api = cluster.api().await;
    let settings = pb::OrganizationSettings {
        reminder_lead_times: vec![secs(60)],
        minimum_notice: Some(secs(0)),
        ..Default::default()
    };
    let f = fixture(&mut api, Some(settings), "unowned").await;
    let create = |name: &str, email: &str, slack: &str| pb::CreateWorkspaceRequest {
        project_id: f.project.id.clone(),
        name: name.into(),
        owner: Some(pb::Owner {
            email: email.into(),
            slack_user_id: slack.into(),
        }),
        ..Default::default()
    };
    let status = api
        .create_workspace(create("bad", "not-an-address", "#general"))
        .await
        .expect_err("malformed owner");
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut fields: Vec<String> = status
        .get_details_bad_request()
        .expect("field violations")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    fields.sort();
    assert_eq!(fields, ["owner.email", "owner.slack_user_id"]);

    let ana = api
        .create_workspace(create("ana", "ana@example.com", "U024BE7LH"))
        .await
        .expect("create")
        .into_inner()
        .workspace
        .expect("workspace");
    let bo = api
        .create_workspace(create("bo", "bo@example.com", ""))
        .await
        .expect("create")
        .into_inner()
        .workspace
        .expect("workspace");
    let owned_by = |owner: &str| pb::ListWorkspacesRequest {
        organization_id: f.org.id.clone(),
        owner: owner.into(),
        ..Default::default()
    };
    for (owner, expected) in [
        ("ana@example.com", vec![ana.id.clone()]),
        ("U024BE7LH", vec![ana.id.clone()]),
        ("bo@example.com", vec![bo.id.clone()]),
        ("nobody@example.com", vec![]),
    ] {
        let ids: Vec<String> = api
            .list_workspaces(owned_by(owner))
            .await
            .expect("list")
            .into_inner()
            .workspaces
            .into_iter()
            .map(|w| w.id)
            .collect();
        assert_eq!(ids, expected, "owner {owner}");
    }
    // Handing the workspace over.
    let moved = api
        .update_workspace(pb::UpdateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                id: bo.id.clone(),
                owner: Some(pb::Owner {
                    email: "ana@example.com".into(),
                    slack_user_id: String::new(),
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["owner".into()],
            }),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner()
        .workspace
        .expect("workspace");
    assert_eq!(
        moved.owner.as_ref().map(|o| o.email.as_str()),
        Some("ana@example.com")
    );
    let listed = api
        .list_workspaces(owned_by("ana@example.com"))
        .await
        .expect("list")
        .into_inner()
        .workspaces;
    assert_eq!(listed.len(), 2);

    // A reminder names the owner.
    apply(&mut api, &ana.id, 1).await;
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: ana.id.clone(),
        auto_destroy_at: Some(ebb_tests::cluster::from_now(Duration::from_secs(30))),
        ..Default::default()
    })
    .await
    .expect("schedule");
    cluster.scheduler_rounds(REMINDERS, 2).await;
    let reminder = eventually(WAIT, "the reminder", || {
        let (mut api, org) = (api.clone(), f.org.id.clone());
        async move {
            events(&mut api, &org, "workspace.auto_destroy.reminder")
                .await
                .into_iter()
                .next()
        }
    })
    .await;
    let owner = match reminder
        .data
        .as_ref()
        .and_then(|d| d.fields.get("owner")?.kind.clone())
    {
        Some(prost_types::value::Kind::StructValue(s)) => s,
        other => panic!("no owner in the reminder: {other:?}"),
    };
    let part = |name: &str| match owner.fields.get(name).and_then(|v| v.kind.clone()) {
        Some(prost_types::value::Kind::StringValue(s)) => s,
        _ => String::new(),
    };
    assert_eq!(part("email"), "ana@example.com");
    assert_eq!(part("slack_user_id"), "U024BE7LH");
}

/// The notifier sends an event that names an owner to the owner too: the real notifier
/// binary, an email configuration and an SMTP server the test stands up.
#[tokio::test]
async fn the_owner_of_an_event_gets_the_email() {
    use crate::notifier::{config_toml, create, event, publish, start_notifier, wait_delivery};
    use crate::support::SmtpSink;
    use ebb_tests::proto::notifier::v1 as npb;
    let sink = SmtpSink::start().await;
    let mut dbs = TestDatabases::new();
    let url = dbs.create("notifier").await;
    let smtp = format!(
        "[smtp]\nrelay = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"Ebb <ebb@example.com>\"\n",
        sink.port
    );
    let notifier = start_notifier(
        &dbs,
        &url,
        &format!("{}{smtp}", config_toml(&["0s", "200ms"], "")),
    )
    .await;
    let mut c = crate::notifier::client(&notifier).await;
    let (config, _) = create(
        &mut c,
        npb::NotificationConfiguration {
            organization_id: "org_o".into(),
            name: "on-call mail".into(),
            destination_type: npb::DestinationType::Email as i32,
            email_addresses: vec!["oncall@example.com".into()],
            event_types: vec!["workspace.auto_destroy.reminder".into()],
            enabled: true,
            ..Default::default()
        },
    )
    .await;
    let mut owned = event("o1", "org_o", "workspace.auto_destroy.reminder", "ws_o");
    let owner = prost_types::Struct {
        fields: [("email", "ana@example.com"), ("slack_user_id", "U024BE7LH")]
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(v.to_owned())),
                    },
                )
            })
            .collect(),
    };
    owned.data.get_or_insert_default().fields.insert(
        "owner".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StructValue(owner)),
        },
    );
    publish(&mut c, owned).await;
    wait_delivery(
        &mut c,
        "org_o",
        &config.id,
        npb::DeliveryStatus::Succeeded,
        Duration::from_secs(10),
    )
    .await;
    let mail = eventually(Duration::from_secs(5), "the reminder email", || {
        let all = sink.messages();
        async move { all.into_iter().find(|m| m.contains("auto-destroyed")) }
    })
    .await;
    assert!(
        mail.contains("To: oncall@example.com, ana@example.com"),
        "{mail}"
    );
    assert!(mail.contains("ana@example.com"), "{mail}");
}
