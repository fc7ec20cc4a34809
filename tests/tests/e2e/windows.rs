//! Destroy windows end to end (the schedules issue, item 2), against real lifecycle-svc and
//! scheduler-svc processes with lifecycle on the test clock: a destroy that comes due outside
//! every window waits for the next opening (WAITING_FOR_WINDOW, reminders for the real time,
//! the preview says so), one the scheduler reaches late waits too, scheduled actions obey, a
//! project's windows replace its organization's, and the CLI sets and shows them.

use std::time::Duration;

use ebb_tests::cluster::{Cluster, create_workspace, eventually, fixture, secs, workspace};
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use ebb_tests::{Channel, TestDatabases};
use tonic::Code;
use tonic_types::StatusExt;

use crate::cli::{Ebb, start_server, string};
use crate::deprovision::apply_catalog;
use crate::schedules::{Clock, destroy_runs, event_dues, field, ms, text, ts_ms};

const WAIT: Duration = Duration::from_secs(20);
const CHECK: &str = "auto_destroy_check";
const REMINDERS: &str = "auto_destroy_reminders";

fn office_hours() -> pb::DestroyWindows {
    pb::DestroyWindows {
        time_zone: "Europe/Berlin".into(),
        windows: vec![pb::DestroyWindow {
            days: "mon-fri".into(),
            start: "09:00".into(),
            end: "17:00".into(),
        }],
    }
}

fn at(t: &str) -> prost_types::Timestamp {
    let ms = ms(t);
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: 0,
    }
}

/// Workspaces of a status, by id.
async fn with_status(
    api: &mut LifecycleServiceClient<Channel>,
    org: &str,
    status: pb::AutoDestroyStatus,
) -> Vec<String> {
    api.list_workspaces(pb::ListWorkspacesRequest {
        organization_id: org.into(),
        auto_destroy_status: status as i32,
        ..Default::default()
    })
    .await
    .expect("list workspaces")
    .into_inner()
    .workspaces
    .into_iter()
    .map(|w| w.id)
    .collect()
}

#[tokio::test]
async fn destroys_due_outside_every_window_wait_for_the_next_opening() {
    let dbs = TestDatabases::new();
    let clock = Clock::new(dbs.dir());
    // Friday 2026-12-04, 18:30 in Berlin: the office is closed until Monday 09:00 (08:00 UTC).
    clock.set("2026-12-04T17:30:00Z");
    let env = [("EBB_TEST_CLOCK_FILE", clock.0.display().to_string())];
    let cluster = Cluster::start_on(dbs, 1, &env).await;
    let (mut api, mut dep) = (cluster.api().await, cluster.deprovision().await);

    // Refusals name the field.
    let mut bad = office_hours();
    bad.time_zone = "Mars/Olympus".into();
    bad.windows.push(pb::DestroyWindow {
        days: "weekdays".into(),
        start: "17:00".into(),
        end: "09:00".into(),
    });
    let err = api
        .create_organization(pb::CreateOrganizationRequest {
            name: "refused".into(),
            settings: Some(pb::OrganizationSettings {
                destroy_windows: Some(bad),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("bad windows are refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = err
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default();
    assert!(
        fields.contains(&"settings.destroy_windows.time_zone".to_owned()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"settings.destroy_windows.windows[1].days".to_owned()),
        "{fields:?}"
    );

    let settings = pb::OrganizationSettings {
        reminder_lead_times: vec![secs(3600)],
        minimum_notice: Some(secs(0)),
        destroy_windows: Some(office_hours()),
        ..Default::default()
    };
    let f = fixture(&mut api, Some(settings), "friday-evening").await;
    let org = f.org.id.clone();
    assert_eq!(
        f.org
            .settings
            .as_ref()
            .and_then(|s| s.destroy_windows.clone()),
        Some(office_hours()),
        "the organization shows its windows"
    );
    let evening = f.workspace.id.clone();
    let late = create_workspace(&mut api, &f.project.id, "late").await.id;

    // Due Friday 19:00 Berlin: it waits for Monday 09:00.
    let ws = api
        .set_auto_destroy(pb::SetAutoDestroyRequest {
            workspace_id: evening.clone(),
            auto_destroy_at: Some(at("2026-12-04T18:00:00Z")),
            ..Default::default()
        })
        .await
        .expect("schedule")
        .into_inner()
        .workspace
        .expect("workspace");
    assert_eq!(
        ws.auto_destroy_status,
        pb::AutoDestroyStatus::WaitingForWindow as i32
    );
    assert_eq!(
        ws.next_auto_destroy_at.as_ref().map(ts_ms),
        Some(ms("2026-12-07T08:00:00Z"))
    );
    assert_eq!(
        ws.window_held_due_time.as_ref().map(ts_ms),
        Some(ms("2026-12-04T18:00:00Z"))
    );
    assert_eq!(
        with_status(&mut api, &org, pb::AutoDestroyStatus::WaitingForWindow).await,
        vec![evening.clone()]
    );
    assert!(
        !with_status(&mut api, &org, pb::AutoDestroyStatus::Idle)
            .await
            .contains(&evening)
    );
    // The preview shows the real time.
    let preview = api
        .preview_auto_destroy(pb::PreviewAutoDestroyRequest {
            organization_id: org.clone(),
            ..Default::default()
        })
        .await
        .expect("preview")
        .into_inner();
    let item = preview
        .items
        .iter()
        .find(|i| i.workspace_id == evening)
        .expect("previewed");
    assert!(item.waiting_for_window);
    assert_eq!(
        item.destroy_time.as_ref().map(ts_ms),
        Some(ms("2026-12-07T08:00:00Z"))
    );
    assert_eq!(
        item.scheduled_time.as_ref().map(ts_ms),
        Some(ms("2026-12-04T18:00:00Z"))
    );

    // A scheduled deprovisioning for Saturday fires Monday at the opening too.
    apply_catalog(&mut dep).await;
    let tenant = dep
        .create_entity(pb::CreateEntityRequest {
            organization_id: org.clone(),
            kind: "tenant".into(),
            name: "weekend-trial".into(),
            ..Default::default()
        })
        .await
        .expect("tenant")
        .into_inner()
        .entity
        .expect("tenant");
    let scheduled = dep
        .schedule_action(pb::ScheduleActionRequest {
            entity_id: tenant.id.clone(),
            action: "DeprovisionTenant".into(),
            scheduled_time: Some(at("2026-12-05T10:00:00Z")),
            ..Default::default()
        })
        .await
        .expect("schedule an action")
        .into_inner()
        .scheduled_action
        .expect("scheduled");
    assert_eq!(
        scheduled.fire_time.as_ref().map(ts_ms),
        Some(ms("2026-12-07T08:00:00Z"))
    );

    // Friday 19:00 passes: nothing fires.
    clock.set("2026-12-04T18:00:30Z");
    cluster.scheduler_rounds(CHECK, 3).await;
    cluster.scheduler_rounds("scheduled_actions", 2).await;
    assert!(destroy_runs(&mut api, &org, &evening).await.is_empty());

    // Monday 08:00 Berlin: the reminder an hour before the real time, for the real time.
    clock.set("2026-12-07T07:00:10Z");
    cluster.scheduler_rounds(REMINDERS, 2).await;
    assert_eq!(
        event_dues(&mut api, &org, "workspace.auto_destroy.reminder", &evening).await,
        vec![(text("2026-12-07T08:00:00Z"), "auto_destroy_at".to_owned())]
    );
    let reminders = ebb_tests::cluster::events(&mut api, &org, "scheduled_action.reminder").await;
    assert_eq!(reminders.len(), 1, "{reminders:?}");
    assert_eq!(
        field(&reminders[0], "scheduled_at"),
        text("2026-12-07T08:00:00Z")
    );

    // Monday 09:00 Berlin: both fire, once, at the opening.
    clock.set("2026-12-07T07:59:58Z");
    eventually(WAIT, "the destroy at the opening", || {
        let (mut api, org, id) = (api.clone(), org.clone(), evening.clone());
        async move { (!destroy_runs(&mut api, &org, &id).await.is_empty()).then_some(()) }
    })
    .await;
    let fired = eventually(WAIT, "the scheduled action at the opening", || {
        let (mut dep, org) = (dep.clone(), org.clone());
        async move {
            dep.list_action_runs(pb::ListActionRunsRequest {
                organization_id: org,
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner()
            .action_runs
            .into_iter()
            .next()
        }
    })
    .await;
    assert_eq!(fired.scheduled_action_id, scheduled.id);
    assert!(fired.create_time.as_ref().map(ts_ms) >= Some(ms("2026-12-07T08:00:00Z")));
    cluster.scheduler_rounds(CHECK, 2).await;
    assert_eq!(
        destroy_runs(&mut api, &org, &evening).await,
        vec![ms("2026-12-07T08:00:00Z")],
        "one run, its fire key the opening"
    );

    // Due Monday 16:59 Berlin, inside the window, but the scheduler only gets to it at
    // 17:05: it waits for Tuesday 09:00 rather than starting after hours.
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: late.clone(),
        auto_destroy_at: Some(at("2026-12-07T15:59:00Z")),
        ..Default::default()
    })
    .await
    .expect("schedule");
    assert_eq!(
        workspace(&mut api, &late)
            .await
            .next_auto_destroy_at
            .as_ref()
            .map(ts_ms),
        Some(ms("2026-12-07T15:59:00Z")),
        "inside the window: its own time"
    );
    clock.set("2026-12-07T16:05:00Z");
    eventually(WAIT, "the late destroy moved to the next opening", || {
        let (mut api, id) = (api.clone(), late.clone());
        async move {
            let ws = workspace(&mut api, &id).await;
            (ws.next_auto_destroy_at.as_ref().map(ts_ms) == Some(ms("2026-12-08T08:00:00Z")))
                .then_some(ws)
        }
    })
    .await;
    let waiting =
        ebb_tests::cluster::events(&mut api, &org, "workspace.auto_destroy.waiting_for_window")
            .await;
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(field(&waiting[0], "opens_at"), text("2026-12-08T08:00:00Z"));
    cluster.scheduler_rounds(CHECK, 2).await;
    assert!(destroy_runs(&mut api, &org, &late).await.is_empty());

    // The project's own windows (every day, all day) replace the organization's: the late
    // workspace is due at its own time again, which has passed, so it fires now.
    let project = api
        .update_project(pb::UpdateProjectRequest {
            project_id: f.project.id.clone(),
            destroy_windows: Some(pb::DestroyWindows {
                time_zone: "UTC".into(),
                windows: vec![pb::DestroyWindow {
                    days: String::new(),
                    start: "00:00".into(),
                    end: "24:00".into(),
                }],
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["destroy_windows".into()],
            }),
            ..Default::default()
        })
        .await
        .expect("project windows")
        .into_inner()
        .project
        .expect("project");
    assert!(project.destroy_windows.is_some());
    eventually(WAIT, "the late destroy under the project's windows", || {
        let (mut api, org, id) = (api.clone(), org.clone(), late.clone());
        async move { (!destroy_runs(&mut api, &org, &id).await.is_empty()).then_some(()) }
    })
    .await;
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn the_cli_sets_destroy_windows_and_schedules_recurring_entity_actions() {
    let dbs = TestDatabases::new();
    let (server, data) = start_server(&dbs).await;
    let ebb = Ebb::new(&server, &data, &dbs);
    let org = string(&ebb.json(&["orgs", "create", "windowed"]).await, "id");
    let project = string(
        &ebb.json(&["projects", "create", "--org", &org, "previews"])
            .await,
        "id",
    );

    let shown = ebb
        .ok(&[
            "windows",
            "set",
            "--org",
            &org,
            "--time-zone",
            "Europe/Berlin",
            "mon-fri 09:00-17:00",
            "sat 10:00-12:00",
        ])
        .await;
    assert!(
        shown.contains("mon-fri 09:00–17:00 (Europe/Berlin)") && shown.contains("sat 10:00–12:00"),
        "{shown}"
    );
    let json = ebb.json(&["windows", "show", "--org", &org]).await;
    assert_eq!(json["timeZone"], "Europe/Berlin", "{json}");
    assert_eq!(json["windows"][0]["days"], "mon-fri", "{json}");
    // A project without its own shows the organization's, and says so.
    // By name, too.
    let shown = ebb
        .ok(&["windows", "show", "--project", "windowed/previews"])
        .await;
    assert!(
        shown.contains("mon-fri 09:00–17:00") && shown.contains("the organization's"),
        "{shown}"
    );
    let shown = ebb
        .ok(&[
            "windows",
            "set",
            "--project",
            &project,
            "--time-zone",
            "UTC",
            "00:00-24:00",
        ])
        .await;
    assert!(
        shown.contains("every day 00:00–24:00 (UTC)") && shown.contains("the project's own"),
        "{shown}"
    );

    // Mistakes are named: by the CLI for the shape, by the server for the rest.
    let run = ebb
        .run(&[
            "windows",
            "set",
            "--org",
            &org,
            "--time-zone",
            "UTC",
            "mon 9-5 extra",
        ])
        .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("[DAYS] HH:MM-HH:MM"), "{}", run.stderr);
    let run = ebb
        .run(&[
            "windows",
            "set",
            "--org",
            &org,
            "--time-zone",
            "UTC",
            "mon 17:00-09:00",
        ])
        .await;
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr
            .contains("settings.destroy_windows.windows[0].end"),
        "{}",
        run.stderr
    );

    let shown = ebb.ok(&["windows", "clear", "--project", &project]).await;
    assert!(shown.contains("the organization's"), "{shown}");
    let shown = ebb.ok(&["windows", "clear", "--org", &org]).await;
    assert!(shown.contains("any time"), "{shown}");

    // Recurring entity actions and entity owners from the command line.
    let catalog = dbs.dir().join("sandbox.yaml");
    std::fs::write(&catalog, crate::entity_schedules::SANDBOX_CATALOG).expect("catalog file");
    ebb.ok(&[
        "deprovision",
        "apply-catalog",
        catalog.to_str().expect("utf-8"),
    ])
    .await;
    ebb.ok(&[
        "deprovision",
        "create-entity",
        "--org",
        "windowed",
        "--kind",
        "sandbox",
        "box-1",
        "--owner-email",
        "ana@example.com",
    ])
    .await;
    let owned = ebb
        .ok(&[
            "deprovision",
            "entities",
            "--org",
            "windowed",
            "--owner",
            "ana@example.com",
        ])
        .await;
    assert!(
        owned.contains("box-1") && owned.contains("ana@example.com"),
        "{owned}"
    );
    let scheduled = ebb
        .json(&[
            "deprovision",
            "schedule",
            "sandbox/box-1",
            "--org",
            "windowed",
            "--action",
            "Reset",
            "--recurring",
            "0 7 * * MON-FRI",
            "--time-zone",
            "Europe/Berlin",
        ])
        .await;
    let id = string(&scheduled, "id");
    assert_eq!(scheduled["seriesId"], serde_json::json!(id), "{scheduled}");
    assert_eq!(
        scheduled["recurring"]["nextOccurrences"]
            .as_array()
            .map(Vec::len),
        Some(5),
        "{scheduled}"
    );
    let listed = ebb
        .ok(&["deprovision", "scheduled", "--org", "windowed"])
        .await;
    assert!(
        listed.contains(&id) && listed.contains("0 7 * * MON-FRI (Europe/Berlin)"),
        "{listed}"
    );
    let run = ebb
        .run(&[
            "deprovision",
            "schedule",
            "sandbox/box-1",
            "--org",
            "windowed",
            "--action",
            "Reset",
        ])
        .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("say when"), "{}", run.stderr);
    let canceled = ebb.json(&["deprovision", "unschedule", &id]).await;
    assert_eq!(canceled["status"], "canceled", "{canceled}");
}
