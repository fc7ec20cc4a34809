//! Recurring entity actions and entity owners end to end (the schedules issue, items 1 and 5),
//! against real lifecycle-svc and scheduler-svc processes with lifecycle on the test clock:
//! each occurrence fires once with its reminder, the reminder and the result name the owner,
//! a late scheduler skips what passed rather than firing it, and cancelling ends the series.

use std::time::Duration;

use ebb_tests::TestDatabases;
use ebb_tests::cluster::{Cluster, events, eventually, fixture, secs};
use ebb_tests::proto::lifecycle::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::schedules::{Clock, field, ms, text, ts_ms};

const WAIT: Duration = Duration::from_secs(20);

/// A kind whose action can run again and again: `Reset` returns the sandbox to `active`.
pub(crate) const SANDBOX_CATALOG: &str = "kinds:
  - name: sandbox
    states: [active, resetting]
    initialState: active
    actions:
      - name: Reset
        scope: instance
        operation: transition-entity
        conditions:
          - state == active
        onTrigger: resetting
        onSuccess: active
        onFailure: active
        trigger:
          type: noop
";

fn owner_of(e: &pb::OutboxEvent) -> String {
    match e
        .data
        .as_ref()
        .and_then(|d| d.fields.get("owner")?.kind.clone())
    {
        Some(prost_types::value::Kind::StructValue(s)) => match s.fields.get("email") {
            Some(prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(email)),
            }) => email.clone(),
            _ => String::new(),
        },
        _ => String::new(),
    }
}

async fn scheduled(dep: &mut crate::deprovision::Dep, org: &str) -> Vec<pb::ScheduledAction> {
    dep.list_scheduled_actions(pb::ListScheduledActionsRequest {
        organization_id: org.into(),
        ..Default::default()
    })
    .await
    .expect("list scheduled actions")
    .into_inner()
    .scheduled_actions
}

async fn action_runs(dep: &mut crate::deprovision::Dep, org: &str) -> Vec<pb::ActionRun> {
    dep.list_action_runs(pb::ListActionRunsRequest {
        organization_id: org.into(),
        ..Default::default()
    })
    .await
    .expect("list action runs")
    .into_inner()
    .action_runs
}

#[tokio::test]
async fn a_recurring_entity_action_fires_each_occurrence_once_and_reaches_the_owner() {
    let dbs = TestDatabases::new();
    let clock = Clock::new(dbs.dir());
    // Monday 2026-12-07, 06:00 in Berlin.
    clock.set("2026-12-07T05:00:00Z");
    let env = [("EBB_TEST_CLOCK_FILE", clock.0.display().to_string())];
    let cluster = Cluster::start_on(dbs, 1, &env).await;
    let (mut api, mut dep) = (cluster.api().await, cluster.deprovision().await);
    let settings = pb::OrganizationSettings {
        reminder_lead_times: vec![secs(1800)],
        ..Default::default()
    };
    let f = fixture(&mut api, Some(settings), "unused").await;
    let org = f.org.id.clone();
    dep.apply_catalog(pb::ApplyCatalogRequest {
        yaml: SANDBOX_CATALOG.into(),
        ..Default::default()
    })
    .await
    .expect("apply the catalog");
    let mut entities = Vec::new();
    for (name, owner) in [("box-1", "ana@example.com"), ("box-2", "")] {
        let e = dep
            .create_entity(pb::CreateEntityRequest {
                organization_id: org.clone(),
                kind: "sandbox".into(),
                name: name.into(),
                owner: (!owner.is_empty()).then(|| pb::Owner {
                    email: owner.into(),
                    slack_user_id: "U024BE7LH".into(),
                }),
                ..Default::default()
            })
            .await
            .expect("create an entity")
            .into_inner()
            .entity
            .expect("entity");
        entities.push(e);
    }
    let sandbox = entities[0].clone();
    assert_eq!(
        sandbox.owner.as_ref().map(|o| o.email.as_str()),
        Some("ana@example.com")
    );
    // Everything one person owns.
    let owned = dep
        .list_entities(pb::ListEntitiesRequest {
            organization_id: org.clone(),
            owner: "ana@example.com".into(),
            ..Default::default()
        })
        .await
        .expect("list by owner")
        .into_inner()
        .entities;
    assert_eq!(
        owned.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [sandbox.id.as_str()]
    );
    let bad_owner = dep
        .create_entity(pb::CreateEntityRequest {
            organization_id: org.clone(),
            kind: "sandbox".into(),
            name: "box-3".into(),
            owner: Some(pb::Owner {
                email: "not an address".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("a bad owner is refused");
    assert_eq!(bad_owner.code(), Code::InvalidArgument);

    // Refusals name the field.
    let schedule = |recurring: Option<pb::RecurringSchedule>,
                    at: Option<prost_types::Timestamp>| {
        pb::ScheduleActionRequest {
            entity_id: sandbox.id.clone(),
            action: "Reset".into(),
            scheduled_time: at,
            recurring,
            ..Default::default()
        }
    };
    let every_weekday = || pb::RecurringSchedule {
        cron: "0 7 * * MON-FRI".into(),
        time_zone: "Europe/Berlin".into(),
        ..Default::default()
    };
    for (request, field_name) in [
        (
            schedule(
                Some(pb::RecurringSchedule {
                    cron: "0 7 * *".into(),
                    time_zone: "Europe/Berlin".into(),
                    ..Default::default()
                }),
                None,
            ),
            "recurring.cron",
        ),
        (
            schedule(
                Some(every_weekday()),
                Some(prost_types::Timestamp {
                    seconds: ms("2026-12-08T00:00:00Z") / 1000,
                    nanos: 0,
                }),
            ),
            "recurring",
        ),
    ] {
        let err = dep.schedule_action(request).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let fields: Vec<String> = err
            .get_details_bad_request()
            .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default();
        assert!(fields.contains(&field_name.to_owned()), "{fields:?}");
    }

    // The database refuses a scheduled action that fires before its time, a recurring
    // schedule without its time zone, and an occurrence that belongs to no series.
    let once = dep
        .schedule_action(schedule(
            None,
            Some(prost_types::Timestamp {
                seconds: ms("2026-12-20T00:00:00Z") / 1000,
                nanos: 0,
            }),
        ))
        .await
        .expect("schedule once")
        .into_inner()
        .scheduled_action
        .expect("scheduled");
    let sql = cluster.lifecycle_sql().await;
    for (statement, what) in [
        (
            "UPDATE scheduled_actions SET fire_at = scheduled_at - 1 WHERE id = '{id}'",
            "firing before its time",
        ),
        (
            "UPDATE scheduled_actions SET recurring_cron = '0 7 * * *' WHERE id = '{id}'",
            "a cron without its time zone",
        ),
        (
            "UPDATE scheduled_actions SET recurring_cron = '0 7 * * *', \
             recurring_time_zone = 'UTC' WHERE id = '{id}'",
            "a recurring occurrence outside any series",
        ),
    ] {
        let refused = sea_orm::ConnectionTrait::execute_unprepared(
            &sql,
            &statement.replace("{id}", &once.id),
        )
        .await;
        assert!(refused.is_err(), "the database accepted {what}");
    }
    dep.cancel_scheduled_action(pb::CancelScheduledActionRequest {
        scheduled_action_id: once.id.clone(),
        ..Default::default()
    })
    .await
    .expect("cancel the one-off");

    // Every weekday at 07:00 Berlin: the first is today, 06:00 UTC.
    let first = dep
        .schedule_action(schedule(Some(every_weekday()), None))
        .await
        .expect("schedule a recurring action")
        .into_inner()
        .scheduled_action
        .expect("scheduled");
    assert_eq!(first.series_id, first.id);
    let next: Vec<i64> = first
        .recurring
        .as_ref()
        .expect("recurring")
        .next_occurrences
        .iter()
        .map(ts_ms)
        .collect();
    assert_eq!(
        next[..3],
        [
            ms("2026-12-07T06:00:00Z"),
            ms("2026-12-08T06:00:00Z"),
            ms("2026-12-09T06:00:00Z")
        ]
    );

    // The reminder half an hour before names the owner.
    clock.set("2026-12-07T05:30:10Z");
    cluster.scheduler_rounds("auto_destroy_reminders", 2).await;
    let reminders = events(&mut api, &org, "scheduled_action.reminder").await;
    assert_eq!(reminders.len(), 1, "{reminders:?}");
    assert_eq!(
        field(&reminders[0], "scheduled_at"),
        text("2026-12-07T06:00:00Z")
    );
    assert_eq!(owner_of(&reminders[0]), "ana@example.com");

    // It fires once; the next occurrence is scheduled, a fire key of its own.
    clock.set("2026-12-07T05:59:58Z");
    eventually(WAIT, "the first occurrence's action run", || {
        let (mut dep, org) = (dep.clone(), org.clone());
        async move { (!action_runs(&mut dep, &org).await.is_empty()).then_some(()) }
    })
    .await;
    cluster.scheduler_rounds("scheduled_actions", 2).await;
    let runs = action_runs(&mut dep, &org).await;
    assert_eq!(runs.len(), 1, "one run per occurrence");
    assert_eq!(runs[0].scheduled_action_id, first.id);
    let series = scheduled(&mut dep, &org).await;
    let pending: Vec<&pb::ScheduledAction> =
        series.iter().filter(|s| s.status == "pending").collect();
    assert_eq!(pending.len(), 1, "{series:?}");
    assert_eq!(pending[0].series_id, first.id);
    assert_eq!(
        pending[0].scheduled_time.as_ref().map(ts_ms),
        Some(ms("2026-12-08T06:00:00Z"))
    );
    // The result names the owner too.
    let done = eventually(WAIT, "the action run's result", || {
        let (mut api, org) = (api.clone(), org.clone());
        async move {
            events(&mut api, &org, "action_run.succeeded")
                .await
                .into_iter()
                .next()
        }
    })
    .await;
    assert_eq!(owner_of(&done), "ana@example.com");

    // The scheduler comes back on Thursday noon: Tuesday's occurrence fires (late, once),
    // Wednesday's and Thursday's are skipped rather than fired in a burst; Friday's is next.
    clock.set("2026-12-10T11:00:00Z");
    eventually(WAIT, "the late occurrence's action run", || {
        let (mut dep, org) = (dep.clone(), org.clone());
        async move { (action_runs(&mut dep, &org).await.len() == 2).then_some(()) }
    })
    .await;
    cluster.scheduler_rounds("scheduled_actions", 3).await;
    assert_eq!(action_runs(&mut dep, &org).await.len(), 2);
    let series = scheduled(&mut dep, &org).await;
    let pending: Vec<&pb::ScheduledAction> =
        series.iter().filter(|s| s.status == "pending").collect();
    assert_eq!(pending.len(), 1, "{series:?}");
    assert_eq!(
        pending[0].scheduled_time.as_ref().map(ts_ms),
        Some(ms("2026-12-11T06:00:00Z"))
    );

    // Cancelling by the first occurrence's id ends the series.
    let canceled = dep
        .cancel_scheduled_action(pb::CancelScheduledActionRequest {
            scheduled_action_id: first.id.clone(),
            ..Default::default()
        })
        .await
        .expect("cancel the series")
        .into_inner()
        .scheduled_action
        .expect("scheduled");
    assert_eq!(canceled.id, pending[0].id);
    assert_eq!(canceled.status, "canceled");
    clock.set("2026-12-11T06:00:05Z");
    cluster.scheduler_rounds("scheduled_actions", 3).await;
    assert_eq!(action_runs(&mut dep, &org).await.len(), 2);
    assert!(
        scheduled(&mut dep, &org)
            .await
            .iter()
            .all(|s| s.status != "pending")
    );
}
