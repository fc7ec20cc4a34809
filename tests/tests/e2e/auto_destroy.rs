//! Auto-destroy end to end (DESIGN "Auto-destroy", rules 1–11), against real lifecycle-svc and
//! scheduler-svc processes and, where a runner is needed, the real `ebb runner`.

use std::time::Duration;

use ebb_tests::Process;
use ebb_tests::cluster::{
    Cluster, create_workspace, events, eventually, fixture, from_now, runs, secs, sleep_until,
    workspace,
};
use ebb_tests::proto::lifecycle::v1 as pb;
use sea_orm::ConnectionTrait;
use tonic::Code;
use tonic_types::StatusExt;

const WAIT: Duration = Duration::from_secs(20);
/// The scheduler task that queues due destroys.
const CHECK: &str = "auto_destroy_check";
/// The scheduler task that sends reminders.
const REMINDERS: &str = "auto_destroy_reminders";

async fn start_runner(cluster: &Cluster, org: &str, rule: &str, max_runs: u32) -> Process {
    Process::spawn_worker(
        "ebb",
        &[
            "runner",
            "--lifecycle-url",
            &cluster.lifecycle.url(),
            "--organization-id",
            org,
            "--simulate",
            rule,
            "--claim-wait",
            "1s",
            "--max-runs",
            &max_runs.to_string(),
        ],
        &[],
        cluster.dbs.dir(),
    )
    .await
    .expect("ebb runner")
}

#[tokio::test]
async fn one_shot_destroy_queues_an_auto_apply_destroy_run_and_archives_on_success() {
    let cluster = Cluster::start(1).await;
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "one-shot").await;
    let ws = api
        .set_auto_destroy(pb::SetAutoDestroyRequest {
            workspace_id: f.workspace.id.clone(),
            auto_destroy_at: Some(from_now(Duration::from_secs(3))),
            ..Default::default()
        })
        .await
        .expect("set")
        .into_inner()
        .workspace
        .expect("ws");
    assert_eq!(ws.next_auto_destroy_at, ws.auto_destroy_at);

    let run = eventually(WAIT, "the auto-destroy run", || {
        let mut api = api.clone();
        let (org, id) = (f.org.id.clone(), f.workspace.id.clone());
        async move { runs(&mut api, &org, &id).await.into_iter().next() }
    })
    .await;
    assert_eq!(run.source, pb::RunSource::AutoDestroy as i32);
    assert!(run.is_destroy && run.auto_apply);
    let due = run.fire_due_time.expect("fire key due time");
    let created = run.create_time.expect("create time");
    let lag_ms =
        (created.seconds - due.seconds) * 1000 + i64::from(created.nanos - due.nanos) / 1_000_000;
    assert!(
        (0..=1000).contains(&lag_ms),
        "queued {lag_ms}ms after the due time"
    );

    let runner = start_runner(&cluster, &f.org.id, "succeed", 1).await;
    let ws = eventually(WAIT, "the workspace archived", || {
        let mut api = api.clone();
        let id = f.workspace.id.clone();
        async move {
            let w = workspace(&mut api, &id).await;
            (w.state == pb::WorkspaceState::Archived as i32).then_some(w)
        }
    })
    .await;
    assert_eq!(
        ws.auto_destroy_status,
        pb::AutoDestroyStatus::Succeeded as i32
    );
    assert!(ws.auto_destroy_at.is_none(), "the one-shot is cleared");
    assert!(ws.next_auto_destroy_at.is_none());
    let succeeded = events(&mut api, &f.org.id, "workspace.auto_destroy.succeeded").await;
    assert_eq!(succeeded.len(), 1);
    runner.kill().await;
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn inactivity_moves_with_each_state_version_and_rearms_only_after_a_new_one() {
    let cluster = Cluster::start(1).await;
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "inactive").await;
    let id = f.workspace.id.clone();
    let ws = api
        .set_auto_destroy(pb::SetAutoDestroyRequest {
            workspace_id: id.clone(),
            auto_destroy_inactivity: "3s".into(),
            ..Default::default()
        })
        .await
        .expect("set")
        .into_inner()
        .workspace
        .expect("ws");
    assert!(
        ws.next_auto_destroy_at.is_none(),
        "no schedule before the first applied state version"
    );

    let recorder = api.clone();
    let record = |serial: i64| {
        let mut api = recorder.clone();
        let id = id.clone();
        async move {
            api.record_state_version(pb::RecordStateVersionRequest {
                workspace_id: id,
                serial,
                ..Default::default()
            })
            .await
            .expect("record")
            .into_inner()
            .workspace
            .expect("ws")
        }
    };
    let first = record(1)
        .await
        .next_auto_destroy_at
        .expect("scheduled after apply");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = record(2)
        .await
        .next_auto_destroy_at
        .expect("still scheduled");
    assert!(
        second.seconds * 1000 + i64::from(second.nanos / 1_000_000)
            >= first.seconds * 1000 + i64::from(first.nanos / 1_000_000) + 1400,
        "the timer moved with the new state version"
    );

    // Nothing fires at the old deadline: a check that ran after it queued nothing.
    sleep_until(&first).await;
    cluster.scheduler_rounds(CHECK, 1).await;
    assert!(
        runs(&mut api, &f.org.id, &id).await.is_empty(),
        "the old deadline must not fire"
    );

    let run = eventually(WAIT, "the inactivity destroy run", || {
        let mut api = api.clone();
        let (org, id) = (f.org.id.clone(), id.clone());
        async move { runs(&mut api, &org, &id).await.into_iter().next() }
    })
    .await;
    assert_eq!(run.source, pb::RunSource::AutoDestroy as i32);

    let runner = start_runner(&cluster, &f.org.id, "succeed", 1).await;
    eventually(WAIT, "archive", || {
        let mut api = api.clone();
        let id = id.clone();
        async move {
            (workspace(&mut api, &id).await.state == pb::WorkspaceState::Archived as i32)
                .then_some(())
        }
    })
    .await;
    runner.kill().await;
    let restored = api
        .restore_workspace(pb::RestoreWorkspaceRequest {
            workspace_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("restore")
        .into_inner()
        .workspace
        .expect("ws");
    assert!(
        restored.auto_destroy_inactivity.is_some(),
        "the inactivity setting is kept"
    );
    assert!(
        restored.next_auto_destroy_at.is_none(),
        "no schedule again after a destroy until a new state version"
    );
    let again = record(3).await;
    assert!(
        again.next_auto_destroy_at.is_some(),
        "a new applied state version schedules it again"
    );
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn deferred_while_locked_or_busy_then_queued() {
    let cluster = Cluster::start(1).await;
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "locked").await;
    let id = f.workspace.id.clone();
    api.lock_workspace(pb::LockWorkspaceRequest {
        workspace_id: id.clone(),
        reason: "maintenance".into(),
        ..Default::default()
    })
    .await
    .expect("lock");
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: id.clone(),
        auto_destroy_at: Some(from_now(Duration::from_secs(1))),
        ..Default::default()
    })
    .await
    .expect("set");
    eventually(WAIT, "deferred status", || {
        let mut api = api.clone();
        let id = id.clone();
        async move {
            (workspace(&mut api, &id).await.auto_destroy_status
                == pb::AutoDestroyStatus::Deferred as i32)
                .then_some(())
        }
    })
    .await;
    cluster.scheduler_rounds(CHECK, 3).await;
    assert!(
        runs(&mut api, &f.org.id, &id).await.is_empty(),
        "no run while locked"
    );
    assert_eq!(
        events(&mut api, &f.org.id, "workspace.auto_destroy.deferred")
            .await
            .len(),
        1,
        "deferral is recorded once, not every cycle"
    );

    api.unlock_workspace(pb::UnlockWorkspaceRequest {
        workspace_id: id.clone(),
        ..Default::default()
    })
    .await
    .expect("unlock");
    eventually(WAIT, "queued after unlock", || {
        let mut api = api.clone();
        let (org, id) = (f.org.id.clone(), id.clone());
        async move {
            runs(&mut api, &org, &id)
                .await
                .into_iter()
                .find(|r| r.source == pb::RunSource::AutoDestroy as i32)
        }
    })
    .await;

    // A workspace with an active run is deferred too.
    let busy = create_workspace(&mut api, &f.project.id, "busy").await;
    let manual = api
        .create_run(pb::CreateRunRequest {
            workspace_id: busy.id.clone(),
            is_destroy: false,
            auto_apply: true,
            ..Default::default()
        })
        .await
        .expect("manual run")
        .into_inner()
        .run
        .expect("run");
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: busy.id.clone(),
        auto_destroy_at: Some(from_now(Duration::from_secs(1))),
        ..Default::default()
    })
    .await
    .expect("set");
    eventually(WAIT, "deferred while a run is active", || {
        let mut api = api.clone();
        let id = busy.id.clone();
        async move {
            (workspace(&mut api, &id).await.auto_destroy_status
                == pb::AutoDestroyStatus::Deferred as i32)
                .then_some(())
        }
    })
    .await;
    api.cancel_run(pb::CancelRunRequest {
        run_id: manual.id.clone(),
        ..Default::default()
    })
    .await
    .expect("cancel");
    eventually(WAIT, "queued after the active run ended", || {
        let mut api = api.clone();
        let (org, id) = (f.org.id.clone(), busy.id.clone());
        async move {
            runs(&mut api, &org, &id)
                .await
                .into_iter()
                .find(|r| r.source == pb::RunSource::AutoDestroy as i32)
        }
    })
    .await;
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn stale_and_repeated_fire_keys_are_no_ops() {
    let cluster = Cluster::start(0).await;
    let mut api = cluster.api().await;
    let mut scheduling = cluster.scheduling().await;
    let f = fixture(&mut api, None, "stale").await;
    let id = f.workspace.id.clone();
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: id.clone(),
        auto_destroy_at: Some(from_now(Duration::from_millis(1200))),
        ..Default::default()
    })
    .await
    .expect("set");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let due = scheduling
        .find_due_workspaces(pb::FindDueWorkspacesRequest {
            shard: 0,
            shard_count: 1,
            limit: 10,
            after: None,
        })
        .await
        .expect("find")
        .into_inner()
        .due;
    assert_eq!(due.len(), 1);
    let key = due[0].clone();
    let mut wrong = key.clone();
    wrong.due_time = Some(prost_types::Timestamp {
        seconds: key.due_time.expect("due").seconds - 60,
        nanos: 0,
    });
    let decide = |keys: Vec<pb::FireKey>| {
        let mut s = scheduling.clone();
        async move {
            s.queue_auto_destroy_runs(pb::QueueAutoDestroyRunsRequest { fire_keys: keys })
                .await
                .expect("queue")
                .into_inner()
                .results
                .into_iter()
                .map(|r| r.decision)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        decide(vec![wrong]).await,
        vec![pb::QueueDecision::Stale as i32],
        "a changed schedule is a no-op"
    );
    assert_eq!(
        decide(vec![key.clone()]).await,
        vec![pb::QueueDecision::Queued as i32]
    );
    assert_eq!(
        decide(vec![key.clone(), key]).await,
        vec![pb::QueueDecision::Stale as i32; 2],
        "a fired key never fires twice"
    );
    assert_eq!(runs(&mut api, &f.org.id, &id).await.len(), 1);
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn queue_due_workspaces_pages_through_a_shard_and_fires_each_key_once() {
    let cluster = Cluster::start(0).await;
    let mut api = cluster.api().await;
    let scheduling = cluster.scheduling().await;
    let f = fixture(&mut api, None, "paged").await;
    let mut ids = vec![f.workspace.id.clone()];
    for i in 0..4 {
        ids.push(
            create_workspace(&mut api, &f.project.id, &format!("paged-{i}"))
                .await
                .id,
        );
    }
    let held = ids[4].clone();
    api.lock_workspace(pb::LockWorkspaceRequest {
        workspace_id: held.clone(),
        reason: "maintenance".into(),
        ..Default::default()
    })
    .await
    .expect("lock");
    for id in &ids {
        api.set_auto_destroy(pb::SetAutoDestroyRequest {
            workspace_id: id.clone(),
            auto_destroy_at: Some(from_now(Duration::from_millis(1200))),
            ..Default::default()
        })
        .await
        .expect("set");
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let sweep = |after: Option<pb::FireKey>, limit: i32| {
        let mut s = scheduling.clone();
        async move {
            s.queue_due_workspaces(pb::QueueDueWorkspacesRequest {
                shard: 0,
                shard_count: 1,
                limit,
                after,
            })
            .await
        }
    };
    let decided = |page: &pb::QueueDueWorkspacesResponse| {
        page.results
            .iter()
            .map(|r| {
                let key = r.fire_key.as_ref().expect("fire key");
                (key.workspace_id.clone(), r.decision)
            })
            .collect::<Vec<_>>()
    };

    // Pages of two: full pages say where the next one starts, the last one does not.
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = sweep(after, 2).await.expect("queue due").into_inner();
        pages += 1;
        assert!(page.results.len() <= 2);
        seen.extend(decided(&page));
        match page.last {
            Some(last) => {
                assert_eq!(page.results.len(), 2, "only a full page has a next one");
                after = Some(last);
            }
            None => break,
        }
    }
    assert_eq!(pages, 3, "five due in pages of two");
    seen.sort();
    let mut expected: Vec<(String, i32)> = ids
        .iter()
        .map(|id| {
            let decision = if *id == held {
                pb::QueueDecision::Deferred
            } else {
                pb::QueueDecision::Queued
            };
            (id.clone(), decision as i32)
        })
        .collect();
    expected.sort();
    assert_eq!(seen, expected, "each due workspace decided once");

    // The next sweep finds only what is still due: the locked workspace, deferred again.
    let again = sweep(None, 10).await.expect("second sweep").into_inner();
    assert_eq!(
        decided(&again),
        vec![(held.clone(), pb::QueueDecision::Deferred as i32)]
    );
    assert!(again.last.is_none());
    for id in &ids {
        let n = runs(&mut api, &f.org.id, id).await.len();
        assert_eq!(n, usize::from(*id != held), "runs of {id}");
    }

    for (request, field) in [
        (
            pb::QueueDueWorkspacesRequest {
                shard: 0,
                shard_count: 0,
                limit: 10,
                after: None,
            },
            "shard_count",
        ),
        (
            pb::QueueDueWorkspacesRequest {
                shard: 0,
                shard_count: 1,
                limit: 0,
                after: None,
            },
            "limit",
        ),
        (
            pb::QueueDueWorkspacesRequest {
                shard: 0,
                shard_count: 1,
                limit: 10,
                after: Some(pb::FireKey {
                    workspace_id: "not-an-id".into(),
                    due_time: Some(from_now(Duration::ZERO)),
                    ..Default::default()
                }),
            },
            "after.workspace_id",
        ),
    ] {
        let err = scheduling
            .clone()
            .queue_due_workspaces(request)
            .await
            .expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        let details = err.get_error_details();
        let bad = details.bad_request().expect("field violations");
        assert_eq!(bad.field_violations[0].field, field);
    }

    api.unlock_workspace(pb::UnlockWorkspaceRequest {
        workspace_id: held.clone(),
        ..Default::default()
    })
    .await
    .expect("unlock");
    if cluster.dbs.is_postgres() {
        // A due row another transaction holds is passed over, not waited for; the next
        // sweep fires it.
        use sea_orm::TransactionTrait;
        let sql = cluster.lifecycle_sql().await;
        let txn = sql.begin().await.expect("begin");
        txn.execute_unprepared(&format!(
            "SELECT id FROM workspaces WHERE id = '{held}' FOR UPDATE"
        ))
        .await
        .expect("hold the row");
        let page = tokio::time::timeout(Duration::from_secs(5), sweep(None, 10))
            .await
            .expect("the sweep does not wait for the held row")
            .expect("sweep");
        assert!(
            page.into_inner().results.is_empty(),
            "the held row is skipped"
        );
        txn.rollback().await.expect("rollback");
    }
    let page = sweep(None, 10).await.expect("sweep").into_inner();
    assert_eq!(
        decided(&page),
        vec![(held.clone(), pb::QueueDecision::Queued as i32)]
    );
    assert_eq!(runs(&mut api, &f.org.id, &held).await.len(), 1);
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn protected_workspaces_refuse_schedules_and_never_fire() {
    let cluster = Cluster::start(1).await;
    let mut api = cluster.api().await;
    let settings = pb::OrganizationSettings {
        protected_labels: [("env".to_owned(), "prod".to_owned())].into(),
        ..Default::default()
    };
    let f = fixture(&mut api, Some(settings), "flagged").await;
    let flagged = api
        .update_workspace(pb::UpdateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                id: f.workspace.id.clone(),
                protected: true,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["protected".into()],
            }),
            ..Default::default()
        })
        .await
        .expect("protect")
        .into_inner()
        .workspace
        .expect("ws");
    assert!(flagged.protected);
    let err = api
        .set_auto_destroy(pb::SetAutoDestroyRequest {
            workspace_id: flagged.id.clone(),
            auto_destroy_at: Some(from_now(Duration::from_secs(5))),
            ..Default::default()
        })
        .await
        .expect_err("protected");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Protection by the organization's label policy.
    let labeled = api
        .create_workspace(pb::CreateWorkspaceRequest {
            project_id: f.project.id.clone(),
            name: "prod-db".into(),
            labels: [("env".to_owned(), "prod".to_owned())].into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .workspace
        .expect("ws");
    assert!(labeled.protected_by_policy);
    let err = api
        .set_auto_destroy(pb::SetAutoDestroyRequest {
            workspace_id: labeled.id.clone(),
            auto_destroy_inactivity: "2h".into(),
            ..Default::default()
        })
        .await
        .expect_err("protected by policy");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // A schedule set before protection never fires.
    let later = create_workspace(&mut api, &f.project.id, "later").await;
    let due = from_now(Duration::from_secs(1));
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: later.id.clone(),
        auto_destroy_at: Some(due),
        ..Default::default()
    })
    .await
    .expect("set");
    let protected = api
        .update_workspace(pb::UpdateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                id: later.id.clone(),
                protected: true,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["protected".into()],
            }),
            ..Default::default()
        })
        .await
        .expect("protect")
        .into_inner()
        .workspace
        .expect("ws");
    assert!(protected.next_auto_destroy_at.is_none());
    sleep_until(&due).await;
    cluster.scheduler_rounds(CHECK, 1).await;
    assert!(
        runs(&mut api, &f.org.id, &later.id).await.is_empty(),
        "a protected workspace never gets a destroy run"
    );

    // A fire key that reaches a protected workspace is skipped, and the skip is recorded.
    let mut scheduling = cluster.scheduling().await;
    let result = scheduling
        .queue_auto_destroy_runs(pb::QueueAutoDestroyRunsRequest {
            fire_keys: vec![pb::FireKey {
                workspace_id: later.id.clone(),
                due_time: Some(from_now(Duration::ZERO)),
                ..Default::default()
            }],
        })
        .await
        .expect("queue")
        .into_inner();
    assert_eq!(
        result.results[0].decision,
        pb::QueueDecision::SkippedProtected as i32
    );
    assert_eq!(
        events(&mut api, &f.org.id, "workspace.auto_destroy.skipped")
            .await
            .len(),
        1
    );

    // The database itself refuses a schedule on a protected workspace.
    let sql = cluster.lifecycle_sql().await;
    let refused = sql
        .execute_unprepared(&format!(
            "UPDATE workspaces SET next_auto_destroy_at = 1 WHERE id = '{}'",
            later.id
        ))
        .await;
    assert!(
        refused.is_err(),
        "the CHECK constraint must refuse a schedule on a protected workspace"
    );
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_field_violations() {
    let cluster = Cluster::start(0).await;
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "bad").await;
    let err = api
        .set_auto_destroy(pb::SetAutoDestroyRequest {
            workspace_id: f.workspace.id.clone(),
            auto_destroy_at: Some(prost_types::Timestamp {
                seconds: 1_600_000_000,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect_err("past");
    assert_eq!(err.code(), Code::InvalidArgument);
    let details = err.get_error_details();
    let bad = details.bad_request().expect("field violations");
    assert_eq!(bad.field_violations[0].field, "auto_destroy_at");

    for (inactivity, why) in [
        ("500ms", "below the minimum"),
        ("10000d", "above 9999 days"),
        ("soon", "not a duration"),
        ("-5", "negative"),
        ("", "missing"),
    ] {
        let err = api
            .set_auto_destroy(pb::SetAutoDestroyRequest {
                workspace_id: f.workspace.id.clone(),
                auto_destroy_inactivity: inactivity.into(),
                ..Default::default()
            })
            .await
            .expect_err(why);
        assert_eq!(err.code(), Code::InvalidArgument, "{inactivity}: {why}");
        let details = err.get_error_details();
        let field = &details.bad_request().expect("violations").field_violations[0].field;
        assert!(field.starts_with("auto_destroy_"), "{inactivity}: {field}");
    }
    let err = api
        .get_workspace(pb::GetWorkspaceRequest {
            workspace_id: "not-an-id".into(),
        })
        .await
        .expect_err("bad id");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = api
        .get_workspace(pb::GetWorkspaceRequest {
            workspace_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn failed_destroys_retry_up_to_the_limit_then_fail() {
    let cluster = Cluster::start(1).await;
    let mut api = cluster.api().await;
    let settings = pb::OrganizationSettings {
        destroy_retry_limit: 2,
        ..Default::default()
    };
    let f = fixture(&mut api, Some(settings), "flaky").await;
    let id = f.workspace.id.clone();
    let runner = start_runner(&cluster, &f.org.id, "fail", 0).await;
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: id.clone(),
        auto_destroy_at: Some(from_now(Duration::from_secs(1))),
        ..Default::default()
    })
    .await
    .expect("set");
    let ws = eventually(WAIT, "status FAILED", || {
        let mut api = api.clone();
        let id = id.clone();
        async move {
            let w = workspace(&mut api, &id).await;
            (w.auto_destroy_status == pb::AutoDestroyStatus::Failed as i32).then_some(w)
        }
    })
    .await;
    assert!(ws.next_auto_destroy_at.is_none(), "left for an operator");
    cluster.scheduler_rounds(CHECK, 2).await;
    let all = runs(&mut api, &f.org.id, &id).await;
    assert_eq!(all.len(), 3, "one attempt and two retries");
    assert!(all.iter().all(|r| r.status == pb::RunStatus::Failed as i32));
    let mut created: Vec<_> = all
        .iter()
        .map(|r| r.create_time.expect("t"))
        .map(|t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
        .collect();
    created.sort_unstable();
    assert!(
        created[2] - created[1] >= created[1] - created[0],
        "the backoff grows"
    );
    runner.kill().await;
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn a_failed_destroy_is_not_retried_once_a_newer_run_exists() {
    let cluster = Cluster::start(1).await;
    let mut api = cluster.api().await;
    let mut runner = cluster.runner().await;
    let f = fixture(&mut api, None, "superseded").await;
    let id = f.workspace.id.clone();
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: id.clone(),
        auto_destroy_at: Some(from_now(Duration::from_secs(1))),
        ..Default::default()
    })
    .await
    .expect("set");
    let claim = eventually(WAIT, "a claimable destroy run", || {
        let mut runner = runner.clone();
        let org = f.org.id.clone();
        async move {
            let c = runner
                .claim_run(pb::ClaimRunRequest {
                    organization_id: org,
                    runner_id: "t".into(),
                    wait: Some(secs(1)),
                })
                .await
                .expect("claim")
                .into_inner();
            c.run.is_some().then_some(c)
        }
    })
    .await;
    // A newer (apply) run makes the destroy run no longer the latest.
    api.create_run(pb::CreateRunRequest {
        workspace_id: id.clone(),
        auto_apply: true,
        ..Default::default()
    })
    .await
    .expect("newer run");
    runner
        .complete_run(pb::CompleteRunRequest {
            run_id: claim.run.expect("run").id,
            lease_token: claim.lease_token,
            outcome: pb::RunOutcome::Failed as i32,
            exit_code: 1,
            ..Default::default()
        })
        .await
        .expect("complete");
    let ws = workspace(&mut api, &id).await;
    assert_eq!(ws.auto_destroy_status, pb::AutoDestroyStatus::Failed as i32);
    assert!(ws.next_auto_destroy_at.is_none());
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn reminders_go_out_once_per_schedule_and_lead_time() {
    let cluster = Cluster::start(1).await;
    let mut api = cluster.api().await;
    let settings = pb::OrganizationSettings {
        reminder_lead_times: vec![
            secs(3),
            prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            },
        ],
        ..Default::default()
    };
    let f = fixture(&mut api, Some(settings), "remind").await;
    let id = f.workspace.id.clone();
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: id.clone(),
        auto_destroy_at: Some(from_now(Duration::from_secs(5))),
        ..Default::default()
    })
    .await
    .expect("set");
    eventually(WAIT, "the destroy run", || {
        let mut api = api.clone();
        let (org, id) = (f.org.id.clone(), id.clone());
        async move { runs(&mut api, &org, &id).await.into_iter().next() }
    })
    .await;
    cluster.scheduler_rounds(REMINDERS, 1).await;
    let reminders = events(&mut api, &f.org.id, "workspace.auto_destroy.reminder").await;
    assert_eq!(reminders.len(), 2, "one per lead time: {reminders:?}");
    let leads: Vec<f64> = reminders
        .iter()
        .filter_map(|e| e.data.as_ref()?.fields.get("lead_time_ms")?.kind.clone())
        .filter_map(|k| match k {
            prost_types::value::Kind::NumberValue(n) => Some(n),
            _ => None,
        })
        .collect();
    assert_eq!(leads, vec![3000.0, 1500.0]);

    // A cleared schedule sends nothing.
    let quiet = create_workspace(&mut api, &f.project.id, "quiet").await;
    let due = from_now(Duration::from_secs(4));
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: quiet.id.clone(),
        auto_destroy_at: Some(due),
        ..Default::default()
    })
    .await
    .expect("set");
    api.clear_auto_destroy(pb::ClearAutoDestroyRequest {
        workspace_id: quiet.id.clone(),
        clear_auto_destroy_at: true,
        ..Default::default()
    })
    .await
    .expect("clear");
    // Past the cleared time, neither task did anything about it.
    sleep_until(&due).await;
    cluster.scheduler_rounds(REMINDERS, 1).await;
    cluster.scheduler_rounds(CHECK, 1).await;
    let for_quiet = events(&mut api, &f.org.id, "workspace.auto_destroy.reminder")
        .await
        .into_iter()
        .filter(|e| e.subject_id == quiet.id)
        .count();
    assert_eq!(for_quiet, 0);
    assert!(runs(&mut api, &f.org.id, &quiet.id).await.is_empty());
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn extend_stays_within_the_maximum_and_preview_changes_nothing() {
    let cluster = Cluster::start(0).await;
    let mut api = cluster.api().await;
    let settings = pb::OrganizationSettings {
        max_inactivity: Some(secs(3 * 86_400)),
        ..Default::default()
    };
    let f = fixture(&mut api, Some(settings), "extend").await;
    let id = f.workspace.id.clone();
    let ws = api
        .set_auto_destroy(pb::SetAutoDestroyRequest {
            workspace_id: id.clone(),
            auto_destroy_at: Some(from_now(Duration::from_secs(3600))),
            ..Default::default()
        })
        .await
        .expect("set")
        .into_inner()
        .workspace
        .expect("ws");
    let before = ws.next_auto_destroy_at.expect("next").seconds;
    let extended = api
        .extend_auto_destroy(pb::ExtendAutoDestroyRequest {
            workspace_id: id.clone(),
            extend_by: "1d".into(),
            ..Default::default()
        })
        .await
        .expect("extend")
        .into_inner()
        .workspace
        .expect("ws");
    assert_eq!(
        extended.next_auto_destroy_at.expect("next").seconds,
        before + 86_400
    );
    let err = api
        .extend_auto_destroy(pb::ExtendAutoDestroyRequest {
            workspace_id: id.clone(),
            extend_by: "5d".into(),
            ..Default::default()
        })
        .await
        .expect_err("beyond the maximum");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = api
        .set_auto_destroy(pb::SetAutoDestroyRequest {
            workspace_id: id.clone(),
            auto_destroy_inactivity: "4d".into(),
            ..Default::default()
        })
        .await
        .expect_err("inactivity beyond the maximum");
    assert_eq!(err.code(), Code::InvalidArgument);

    let other = create_workspace(&mut api, &f.project.id, "applied").await;
    api.record_state_version(pb::RecordStateVersionRequest {
        workspace_id: other.id.clone(),
        serial: 1,
        ..Default::default()
    })
    .await
    .expect("apply");
    let _never_applied = create_workspace(&mut api, &f.project.id, "never-applied").await;
    let preview = api
        .preview_auto_destroy(pb::PreviewAutoDestroyRequest {
            organization_id: f.org.id.clone(),
            auto_destroy_inactivity: "2h".into(),
            ..Default::default()
        })
        .await
        .expect("preview")
        .into_inner();
    let names: Vec<_> = preview
        .items
        .iter()
        .map(|i| i.workspace_name.as_str())
        .collect();
    assert_eq!(
        names,
        vec!["applied", "extend"],
        "soonest first: {preview:?}"
    );
    assert_eq!(
        preview.skipped_count, 1,
        "the never-applied workspace has no inactivity deadline"
    );
    let unchanged = workspace(&mut api, &other.id).await;
    assert!(
        unchanged.next_auto_destroy_at.is_none(),
        "preview changes nothing"
    );

    // Extending an inactivity deadline moves the deadline, not the recorded last change.
    let set = api
        .set_auto_destroy(pb::SetAutoDestroyRequest {
            workspace_id: other.id.clone(),
            auto_destroy_inactivity: "2h".into(),
            ..Default::default()
        })
        .await
        .expect("inactivity")
        .into_inner()
        .workspace
        .expect("ws");
    let extended = api
        .extend_auto_destroy(pb::ExtendAutoDestroyRequest {
            workspace_id: other.id.clone(),
            extend_by: "1h".into(),
            ..Default::default()
        })
        .await
        .expect("extend inactivity")
        .into_inner()
        .workspace
        .expect("ws");
    assert_eq!(
        extended.last_state_change_at, set.last_state_change_at,
        "the last applied state stays what it was"
    );
    assert_eq!(
        extended.next_auto_destroy_at.expect("next").seconds,
        set.next_auto_destroy_at.expect("next").seconds + 3600
    );
    let reapplied = api
        .record_state_version(pb::RecordStateVersionRequest {
            workspace_id: other.id.clone(),
            serial: 2,
            ..Default::default()
        })
        .await
        .expect("apply")
        .into_inner()
        .workspace
        .expect("ws");
    let (next, last) = (
        reapplied.next_auto_destroy_at.expect("next"),
        reapplied.last_state_change_at.expect("last"),
    );
    assert!(
        (next.seconds - last.seconds - 7200).abs() <= 1,
        "a new applied state drops the extension"
    );
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn the_database_refuses_a_second_active_destroy_and_a_second_run_per_fire_key() {
    let cluster = Cluster::start(0).await;
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "db").await;
    let sql = cluster.lifecycle_sql().await;
    let insert = |run: &str, due: &str| {
        format!(
            "INSERT INTO runs (id, organization_id, workspace_id, is_destroy, auto_apply, source, status, fire_due_at, created_at) \
             VALUES ('{run}', '{}', '{}', TRUE, TRUE, 'auto_destroy', 'queued', {due}, 1)",
            f.org.id, f.workspace.id
        )
    };
    sql.execute_unprepared(&insert("r1", "1000"))
        .await
        .expect("first destroy run");
    assert!(
        sql.execute_unprepared(&insert("r2", "2000")).await.is_err(),
        "a second active destroy run is refused"
    );
    sql.execute_unprepared("UPDATE runs SET status = 'failed' WHERE id = 'r1'")
        .await
        .expect("finish r1");
    assert!(
        sql.execute_unprepared(&insert("r3", "1000")).await.is_err(),
        "a second run for one fire key is refused"
    );
    sql.execute_unprepared(&insert("r4", "3000"))
        .await
        .expect("a new fire key is fine");
}

#[tokio::test]
async fn a_successful_manual_destroy_cancels_the_one_shot() {
    let cluster = Cluster::start(0).await;
    let mut api = cluster.api().await;
    let mut runner = cluster.runner().await;
    let f = fixture(&mut api, None, "manual").await;
    let id = f.workspace.id.clone();
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: id.clone(),
        auto_destroy_at: Some(from_now(Duration::from_secs(3600))),
        ..Default::default()
    })
    .await
    .expect("set");
    api.create_run(pb::CreateRunRequest {
        workspace_id: id.clone(),
        is_destroy: true,
        auto_apply: true,
        ..Default::default()
    })
    .await
    .expect("manual destroy");
    let claim = runner
        .claim_run(pb::ClaimRunRequest {
            organization_id: f.org.id.clone(),
            runner_id: "t".into(),
            wait: Some(secs(2)),
        })
        .await
        .expect("claim")
        .into_inner();
    let run = claim.run.expect("run");
    // The lease token fences completion: a wrong token is refused.
    let err = runner
        .complete_run(pb::CompleteRunRequest {
            run_id: run.id.clone(),
            lease_token: "stolen".into(),
            outcome: pb::RunOutcome::Succeeded as i32,
            ..Default::default()
        })
        .await
        .expect_err("wrong token");
    assert_eq!(err.code(), Code::FailedPrecondition);
    runner
        .complete_run(pb::CompleteRunRequest {
            run_id: run.id,
            lease_token: claim.lease_token,
            outcome: pb::RunOutcome::Succeeded as i32,
            ..Default::default()
        })
        .await
        .expect("complete");
    let ws = workspace(&mut api, &id).await;
    assert!(ws.auto_destroy_at.is_none(), "the one-shot is canceled");
    assert!(ws.next_auto_destroy_at.is_none());
    assert_eq!(
        ws.state,
        pb::WorkspaceState::Active as i32,
        "a manual destroy does not archive"
    );
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn an_expired_runner_lease_is_requeued_then_errored() {
    let cluster = Cluster::start(1).await;
    let mut api = cluster.api().await;
    let runner = cluster.runner().await;
    let f = fixture(&mut api, None, "lost").await;
    let run = api
        .create_run(pb::CreateRunRequest {
            workspace_id: f.workspace.id.clone(),
            auto_apply: true,
            ..Default::default()
        })
        .await
        .expect("run")
        .into_inner()
        .run
        .expect("run");
    // Claim three times and vanish each time (the lease lasts 2s; the scheduler allows 3).
    for attempt in 1..=3 {
        let claim = eventually(WAIT, "a claim", || {
            let mut runner = runner.clone();
            let org = f.org.id.clone();
            async move {
                let c = runner
                    .claim_run(pb::ClaimRunRequest {
                        organization_id: org,
                        runner_id: "ghost".into(),
                        wait: Some(secs(1)),
                    })
                    .await
                    .expect("claim")
                    .into_inner();
                c.run
            }
        })
        .await;
        assert_eq!(claim.attempt, attempt);
    }
    let errored = eventually(WAIT, "the run errored", || {
        let mut api = api.clone();
        let id = run.id.clone();
        async move {
            let r = api
                .get_run(pb::GetRunRequest { run_id: id })
                .await
                .expect("get")
                .into_inner()
                .run
                .expect("run");
            (r.status == pb::RunStatus::Errored as i32).then_some(r)
        }
    })
    .await;
    assert_eq!(errored.attempt, 3);
    let mut runner2 = cluster.runner().await;
    let err = runner2
        .heartbeat_run(pb::HeartbeatRunRequest {
            run_id: run.id.clone(),
            lease_token: "old".into(),
        })
        .await
        .expect_err("lost lease");
    assert_eq!(err.code(), Code::FailedPrecondition);
    drop(runner);
    cluster.check_destroy_causes().await;
}
