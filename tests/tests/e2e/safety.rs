//! Destruction safety end to end (DESIGN "Auto-destroy" 12 and 13, "Rules for every RPC":
//! structured actors): schedules that come due while protected are consumed, policy changes
//! give the minimum notice and are held to the blast-radius guard, organization settings never
//! lose a concurrent update, a corrupt protection policy protects, and every change names who
//! caused it.

use std::time::Duration;

use ebb_tests::Channel;
use ebb_tests::cluster::{
    Cluster, create_workspace, events, eventually, fixture, from_now, runs, secs, workspace,
};
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use ebb_tests::proto::lifecycle::v1::token_service_client::TokenServiceClient;
use sea_orm::ConnectionTrait;
use tonic::Code;
use tonic_types::StatusExt;

const WAIT: Duration = Duration::from_secs(20);

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

fn seconds_until(t: &prost_types::Timestamp) -> f64 {
    let now = chrono::Utc::now();
    (t.seconds as f64 + f64::from(t.nanos) / 1e9) - now.timestamp_millis() as f64 / 1000.0
}

async fn set_protected(api: &mut LifecycleServiceClient<Channel>, id: &str, protected: bool) {
    api.update_workspace(pb::UpdateWorkspaceRequest {
        workspace: Some(pb::Workspace {
            id: id.to_owned(),
            protected,
            ..Default::default()
        }),
        update_mask: mask(&["protected"]),
        ..Default::default()
    })
    .await
    .expect("update protection");
}

async fn apply_state(api: &mut LifecycleServiceClient<Channel>, id: &str, serial: i64) {
    api.record_state_version(pb::RecordStateVersionRequest {
        workspace_id: id.to_owned(),
        serial,
        ..Default::default()
    })
    .await
    .expect("record state version");
}

pub(crate) fn data_str<'a>(event: &'a pb::OutboxEvent, path: &[&str]) -> Option<&'a str> {
    let mut value = event.data.as_ref()?.fields.get(path[0])?;
    for key in &path[1..] {
        match &value.kind {
            Some(prost_types::value::Kind::StructValue(s)) => value = s.fields.get(*key)?,
            _ => return None,
        }
    }
    match &value.kind {
        Some(prost_types::value::Kind::StringValue(s)) => Some(s),
        _ => None,
    }
}

#[tokio::test]
async fn unprotecting_never_fires_a_schedule_that_came_due_while_protected() {
    let cluster = Cluster::start(1).await;
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "held").await;
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: f.workspace.id.clone(),
        auto_destroy_at: Some(from_now(Duration::from_secs(2))),
        ..Default::default()
    })
    .await
    .expect("schedule");
    set_protected(&mut api, &f.workspace.id, true).await;

    // The one-shot comes due while protected: the scheduler consumes it and says so.
    let skipped = eventually(WAIT, "the skipped schedule", || {
        let mut api = api.clone();
        let org = f.org.id.clone();
        async move {
            events(&mut api, &org, "workspace.auto_destroy.skipped")
                .await
                .into_iter()
                .next()
        }
    })
    .await;
    assert_eq!(data_str(&skipped, &["reason"]), Some("protected"));
    assert_eq!(data_str(&skipped, &["schedule"]), Some("auto_destroy_at"));
    assert_eq!(skipped.actor, "scheduler:auto_destroy_check");
    assert_eq!(
        data_str(&skipped, &["actor", "kind"]),
        Some("scheduler"),
        "the scheduler's task, shard and replica are recorded"
    );
    assert!(data_str(&skipped, &["actor", "replica"]).is_some_and(|r| !r.is_empty()));
    let held = workspace(&mut api, &f.workspace.id).await;
    assert!(held.auto_destroy_at.is_none(), "the one-shot is consumed");

    // Lifting protection queues nothing for the time that passed.
    set_protected(&mut api, &f.workspace.id, false).await;
    let ws = workspace(&mut api, &f.workspace.id).await;
    assert!(ws.next_auto_destroy_at.is_none());
    let mut scheduling = cluster.scheduling().await;
    let due = skipped
        .data
        .as_ref()
        .and_then(|d| d.fields.get("due_at"))
        .cloned();
    assert!(due.is_some());
    let result = scheduling
        .queue_auto_destroy_runs(pb::QueueAutoDestroyRunsRequest {
            fire_keys: vec![pb::FireKey {
                workspace_id: f.workspace.id.clone(),
                due_time: Some(from_now(Duration::ZERO)),
                ..Default::default()
            }],
        })
        .await
        .expect("queue")
        .into_inner();
    assert_eq!(result.results[0].decision, pb::QueueDecision::Stale as i32);
    assert!(runs(&mut api, &f.org.id, &f.workspace.id).await.is_empty());
    assert_eq!(
        events(&mut api, &f.org.id, "workspace.auto_destroy.skipped")
            .await
            .len(),
        1,
        "consumed once"
    );

    // The database refuses a held schedule on an unprotected workspace.
    let sql = cluster.lifecycle_sql().await;
    let refused = sql
        .execute_unprepared(&format!(
            "UPDATE workspaces SET held_due_at = 1 WHERE id = '{}'",
            f.workspace.id
        ))
        .await;
    assert!(refused.is_err(), "a held schedule needs protection");
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn lowering_an_inactivity_policy_gives_the_minimum_notice_with_every_reminder() {
    let cluster = Cluster::start(1).await;
    let mut api = cluster.api().await;
    // Reminders 4 s and 2 s before; the minimum notice defaults to the longest, 4 s.
    let settings = pb::OrganizationSettings {
        reminder_lead_times: vec![secs(4), secs(2)],
        ..Default::default()
    };
    let f = fixture(&mut api, Some(settings), "idle").await;
    apply_state(&mut api, &f.workspace.id, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A 1 s default would have made it due half a second ago: the preview says what will
    // really happen.
    let preview = api
        .preview_auto_destroy(pb::PreviewAutoDestroyRequest {
            organization_id: f.org.id.clone(),
            project_id: f.project.id.clone(),
            auto_destroy_inactivity: "1s".into(),
            ..Default::default()
        })
        .await
        .expect("preview")
        .into_inner();
    assert_eq!(preview.items.len(), 1);
    assert_eq!(preview.items[0].reason, "minimum_notice");
    assert_eq!(preview.confirm_count, 1);
    let previewed = seconds_until(preview.items[0].destroy_time.as_ref().expect("time"));
    assert!((3.0..=4.5).contains(&previewed), "{previewed}s ahead");

    let changed = api
        .update_project(pb::UpdateProjectRequest {
            project_id: f.project.id.clone(),
            default_auto_destroy_inactivity: "1s".into(),
            update_mask: mask(&["default_auto_destroy_inactivity"]),
            ..Default::default()
        })
        .await
        .expect("lower the default")
        .into_inner();
    assert_eq!(
        changed.scheduled.len(),
        1,
        "the answer names what it scheduled"
    );
    assert_eq!(changed.scheduled[0].reason, "minimum_notice");
    let ws = workspace(&mut api, &f.workspace.id).await;
    assert_eq!(ws.next_auto_destroy_reason, "minimum_notice");
    let ahead = seconds_until(ws.next_auto_destroy_at.as_ref().expect("scheduled"));
    assert!((3.0..=4.5).contains(&ahead), "due {ahead}s ahead");

    // The destroy comes only after both reminders went out.
    let run = eventually(WAIT, "the destroy run", || {
        let mut api = api.clone();
        let (org, id) = (f.org.id.clone(), f.workspace.id.clone());
        async move { runs(&mut api, &org, &id).await.into_iter().next() }
    })
    .await;
    let reminders = events(&mut api, &f.org.id, "workspace.auto_destroy.reminder").await;
    assert_eq!(reminders.len(), 2, "every reminder still goes out");
    let queued = events(&mut api, &f.org.id, "run.queued").await;
    let queued = queued
        .iter()
        .find(|e| e.subject_id == run.id)
        .expect("run.queued");
    assert!(reminders.iter().all(|r| r.sequence < queued.sequence));
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn a_policy_change_past_the_blast_radius_needs_its_count_confirmed() {
    let cluster = Cluster::start(0).await;
    let mut api = cluster.api().await;
    let settings = pb::OrganizationSettings {
        confirm_threshold: Some(2),
        minimum_notice: Some(secs(0)),
        ..Default::default()
    };
    let f = fixture(&mut api, Some(settings), "a").await;
    let mut ids = vec![f.workspace.id.clone()];
    for name in ["b", "c"] {
        ids.push(create_workspace(&mut api, &f.project.id, name).await.id);
    }
    for id in &ids {
        apply_state(&mut api, id, 1).await;
    }
    let lower = |confirm_count| pb::UpdateProjectRequest {
        project_id: f.project.id.clone(),
        default_auto_destroy_inactivity: "2d".into(),
        update_mask: mask(&["default_auto_destroy_inactivity"]),
        confirm_count,
        ..Default::default()
    };
    let err = api
        .update_project(lower(0))
        .await
        .expect_err("over the threshold");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("schedule 3 workspaces"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("confirm_count = 3"),
        "{}",
        err.message()
    );
    let info = err.get_details_error_info().expect("a stable reason");
    assert_eq!(info.reason, "CONFIRM_COUNT_REQUIRED");
    assert_eq!(info.metadata.get("count").map(String::as_str), Some("3"));
    let err = api.update_project(lower(2)).await.expect_err("wrong count");
    assert_eq!(err.code(), Code::FailedPrecondition);
    for id in &ids {
        assert!(
            workspace(&mut api, id).await.next_auto_destroy_at.is_none(),
            "a refused change changes nothing"
        );
    }
    let preview = api
        .preview_auto_destroy(pb::PreviewAutoDestroyRequest {
            organization_id: f.org.id.clone(),
            project_id: f.project.id.clone(),
            auto_destroy_inactivity: "2d".into(),
            ..Default::default()
        })
        .await
        .expect("preview")
        .into_inner();
    assert_eq!(preview.confirm_count, 3, "the preview tells the count");
    let done = api
        .update_project(lower(preview.confirm_count))
        .await
        .expect("confirmed")
        .into_inner();
    assert_eq!(done.scheduled.len(), 3);
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn settings_updates_lose_nothing_and_a_stale_etag_is_refused() {
    let cluster = Cluster::start(0).await;
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "ws").await;
    let first = f.org.etag.clone();
    assert!(!first.is_empty());
    let updated = api
        .update_organization_settings(pb::UpdateOrganizationSettingsRequest {
            organization_id: f.org.id.clone(),
            settings: Some(pb::OrganizationSettings {
                destroy_retry_limit: 5,
                ..Default::default()
            }),
            update_mask: mask(&["destroy_retry_limit"]),
            etag: first.clone(),
            ..Default::default()
        })
        .await
        .expect("update with a fresh etag")
        .into_inner()
        .organization
        .expect("organization");
    assert_ne!(updated.etag, first);
    let err = api
        .update_organization_settings(pb::UpdateOrganizationSettingsRequest {
            organization_id: f.org.id.clone(),
            settings: Some(pb::OrganizationSettings {
                destroy_retry_limit: 7,
                ..Default::default()
            }),
            update_mask: mask(&["destroy_retry_limit"]),
            etag: first,
            ..Default::default()
        })
        .await
        .expect_err("stale etag");
    assert_eq!(err.code(), Code::Aborted);

    // Concurrent masked updates of different fields: every one lands.
    let mut calls = Vec::new();
    for i in 0..8 {
        let mut api = api.clone();
        let org = f.org.id.clone();
        calls.push(tokio::spawn(async move {
            let (settings, path) = if i % 2 == 0 {
                (
                    pb::OrganizationSettings {
                        destroy_retry_limit: 3,
                        ..Default::default()
                    },
                    "destroy_retry_limit",
                )
            } else {
                (
                    pb::OrganizationSettings {
                        max_inactivity: Some(secs(30 * 86_400)),
                        ..Default::default()
                    },
                    "max_inactivity",
                )
            };
            api.update_organization_settings(pb::UpdateOrganizationSettingsRequest {
                organization_id: org,
                settings: Some(settings),
                update_mask: mask(&[path]),
                ..Default::default()
            })
            .await
        }));
    }
    for call in calls {
        call.await.expect("join").expect("update");
    }
    let org = api
        .get_organization(pb::GetOrganizationRequest {
            organization_id: f.org.id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .organization
        .expect("organization");
    let s = org.settings.expect("settings");
    assert_eq!(s.destroy_retry_limit, 3);
    assert_eq!(s.max_inactivity, Some(secs(30 * 86_400)));
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn an_unreadable_protection_policy_protects_every_workspace() {
    let cluster = Cluster::start(1).await;
    let mut api = cluster.api().await;
    let settings = pb::OrganizationSettings {
        protected_labels: [("env".to_owned(), "prod".to_owned())].into(),
        ..Default::default()
    };
    let f = fixture(&mut api, Some(settings), "dev-box").await;
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: f.workspace.id.clone(),
        auto_destroy_at: Some(from_now(Duration::from_secs(3))),
        ..Default::default()
    })
    .await
    .expect("schedule");
    let sql = cluster.lifecycle_sql().await;
    sql.execute_unprepared(&format!(
        "UPDATE organizations SET protected_labels = '{{\"env\": ' WHERE id = '{}'",
        f.org.id
    ))
    .await
    .expect("corrupt the policy");
    // Any change re-reads the policy: it cannot be read, so the workspace counts as protected.
    let ws = api
        .update_workspace(pb::UpdateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                id: f.workspace.id.clone(),
                labels: [("env".to_owned(), "dev".to_owned())].into(),
                ..Default::default()
            }),
            update_mask: mask(&["labels"]),
            ..Default::default()
        })
        .await
        .expect("relabel")
        .into_inner()
        .workspace
        .expect("ws");
    assert!(ws.protected_by_policy, "fails closed");
    assert!(ws.next_auto_destroy_at.is_none());
    eventually(WAIT, "the schedule consumed, not fired", || {
        let mut api = api.clone();
        let org = f.org.id.clone();
        async move {
            (!events(&mut api, &org, "workspace.auto_destroy.skipped")
                .await
                .is_empty())
            .then_some(())
        }
    })
    .await;
    assert!(runs(&mut api, &f.org.id, &f.workspace.id).await.is_empty());
    let err = api
        .get_organization(pb::GetOrganizationRequest {
            organization_id: f.org.id.clone(),
        })
        .await
        .expect_err("the corrupt row is not shown as if empty");
    assert!(
        err.message().contains("ref") || err.message().contains("protected_labels"),
        "{}",
        err.message()
    );
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn every_change_names_the_token_scheduler_or_runner_that_caused_it() {
    let cluster = Cluster::start(1).await;
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "traced").await;
    let mut tokens = TokenServiceClient::new(cluster.lifecycle.channel().await);
    let created = tokens
        .create_token(pb::CreateTokenRequest {
            organization_id: f.org.id.clone(),
            role: pb::TokenRole::Operator as i32,
            description: "release pipeline".into(),
            ..Default::default()
        })
        .await
        .expect("token")
        .into_inner();
    let token = created.token.expect("token");
    let mut as_operator =
        LifecycleServiceClient::new(cluster.lifecycle.channel_as(&created.secret).await);
    as_operator
        .set_auto_destroy(pb::SetAutoDestroyRequest {
            workspace_id: f.workspace.id.clone(),
            auto_destroy_at: Some(from_now(Duration::from_secs(2))),
            ..Default::default()
        })
        .await
        .expect("schedule as the operator");
    let scheduled = events(&mut api, &f.org.id, "workspace.auto_destroy.scheduled").await;
    let scheduled = scheduled.first().expect("scheduled event");
    assert_eq!(scheduled.actor, format!("token:{}", token.id));
    assert_eq!(data_str(scheduled, &["actor", "role"]), Some("operator"));
    assert_eq!(
        data_str(scheduled, &["actor", "description"]),
        Some("release pipeline")
    );

    // The scheduler queues the destroy run, naming its task; the run links to its fire key.
    let run = eventually(WAIT, "the destroy run", || {
        let mut api = api.clone();
        let (org, id) = (f.org.id.clone(), f.workspace.id.clone());
        async move { runs(&mut api, &org, &id).await.into_iter().next() }
    })
    .await;
    let queued = events(&mut api, &f.org.id, "run.queued").await;
    let queued = queued
        .iter()
        .find(|e| e.subject_id == run.id)
        .expect("queued");
    assert_eq!(queued.actor, "scheduler:auto_destroy_check");
    assert!(data_str(queued, &["fire_due_at"]).is_some(), "the cause");

    // A runner completes it: the outcome names the runner and the run.
    let mut runner = cluster.runner().await;
    let claimed = runner
        .claim_run(pb::ClaimRunRequest {
            organization_id: f.org.id.clone(),
            runner_id: "runner-7".into(),
            ..Default::default()
        })
        .await
        .expect("claim")
        .into_inner();
    runner
        .complete_run(pb::CompleteRunRequest {
            run_id: run.id.clone(),
            lease_token: claimed.lease_token,
            outcome: pb::RunOutcome::Succeeded as i32,
            ..Default::default()
        })
        .await
        .expect("complete");
    let done = events(&mut api, &f.org.id, "workspace.auto_destroy.succeeded").await;
    let done = done.first().expect("succeeded");
    assert_eq!(done.actor, "runner:runner-7");
    assert_eq!(data_str(done, &["actor", "run_id"]), Some(run.id.as_str()));
    cluster.check_destroy_causes().await;
}
