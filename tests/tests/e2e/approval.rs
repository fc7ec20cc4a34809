//! Approval before destroy: in an organization that requires it, an auto-destroy run waits
//! for an admin or operator; no runner takes it before (the database refuses it too); a
//! runner's token cannot approve; approved it runs, rejected or left past its deadline it is
//! canceled and the workspace stays — every decision with its actor and reason in the trail.

use std::time::Duration;

use ebb_tests::cluster::{Cluster, events, eventually, fixture, from_now, runs, secs};
use ebb_tests::proto::lifecycle::v1 as pb;
use pb::runner_service_client::RunnerServiceClient;
use pb::token_service_client::TokenServiceClient;
use sea_orm::ConnectionTrait;
use tonic::Code;

const REMINDERS: &str = "auto_destroy_reminders";
const WAIT: Duration = Duration::from_secs(20);

async fn token(cluster: &Cluster, org: &str, role: pb::TokenRole) -> String {
    let mut tokens = TokenServiceClient::new(cluster.lifecycle.channel().await);
    tokens
        .create_token(pb::CreateTokenRequest {
            organization_id: org.to_owned(),
            role: role as i32,
            description: format!("{role:?} for approvals"),
            ..Default::default()
        })
        .await
        .expect("create token")
        .into_inner()
        .secret
}

/// Schedules `id` to be destroyed now and waits for its run.
async fn destroy_run(
    api: &mut pb::lifecycle_service_client::LifecycleServiceClient<ebb_tests::Channel>,
    org: &str,
    id: &str,
) -> pb::Run {
    api.set_auto_destroy(pb::SetAutoDestroyRequest {
        workspace_id: id.into(),
        auto_destroy_at: Some(from_now(Duration::from_millis(500))),
        ..Default::default()
    })
    .await
    .expect("set");
    eventually(WAIT, "the destroy run", || {
        let mut api = api.clone();
        let (org, id) = (org.to_owned(), id.to_owned());
        async move { runs(&mut api, &org, &id).await.into_iter().next() }
    })
    .await
}

async fn get_run(
    api: &mut pb::lifecycle_service_client::LifecycleServiceClient<ebb_tests::Channel>,
    id: &str,
) -> pb::Run {
    api.get_run(pb::GetRunRequest { run_id: id.into() })
        .await
        .expect("get run")
        .into_inner()
        .run
        .expect("run")
}

async fn claim(
    runner: &mut RunnerServiceClient<ebb_tests::Channel>,
    org: &str,
) -> Option<(pb::Run, String)> {
    let claimed = runner
        .claim_run(pb::ClaimRunRequest {
            organization_id: org.into(),
            runner_id: "approval-test".into(),
            wait: Some(secs(1)),
        })
        .await
        .expect("claim")
        .into_inner();
    claimed.run.map(|r| (r, claimed.lease_token))
}

#[tokio::test]
async fn destroys_wait_for_approval_and_nothing_approves_itself() {
    let cluster = Cluster::start(1).await;
    let mut api = cluster.api().await;
    let settings = pb::OrganizationSettings {
        require_approval: true,
        approval_window: Some(secs(4)),
        reminder_lead_times: vec![secs(1)],
        minimum_notice: Some(secs(0)),
        ..Default::default()
    };
    let f = fixture(&mut api, Some(settings), "approved").await;
    let org = f.org.id.clone();
    let operator = token(&cluster, &org, pb::TokenRole::Operator).await;
    let runner_token = token(&cluster, &org, pb::TokenRole::Runner).await;
    let mut runner = RunnerServiceClient::new(cluster.lifecycle.channel_as(&runner_token).await);
    let mut as_operator = pb::lifecycle_service_client::LifecycleServiceClient::new(
        cluster.lifecycle.channel_as(&operator).await,
    );
    let mut as_runner = pb::lifecycle_service_client::LifecycleServiceClient::new(
        cluster.lifecycle.channel_as(&runner_token).await,
    );

    let run = destroy_run(&mut api, &org, &f.workspace.id).await;
    assert_eq!(run.status, pb::RunStatus::AwaitingApproval as i32);
    let approval = run.approval.clone().expect("approval");
    assert_eq!(approval.state, "PENDING");
    assert!(approval.deadline.is_some());
    let listed = api
        .list_runs(pb::ListRunsRequest {
            organization_id: org.clone(),
            status: pb::RunStatus::AwaitingApproval as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .runs;
    assert_eq!(listed.len(), 1);

    // No runner takes it, one at a time or several, and the database refuses to hand it to
    // one.
    assert!(claim(&mut runner, &org).await.is_none());
    let several = runner
        .claim_runs(pb::ClaimRunsRequest {
            organization_id: org.clone(),
            runner_id: "approval-test".into(),
            wait: Some(secs(1)),
            max_runs: 10,
        })
        .await
        .expect("claim several")
        .into_inner();
    assert!(several.claims.is_empty(), "{several:?}");
    let sql = cluster.lifecycle_sql().await;
    let refused = sql
        .execute_unprepared(&format!(
            "UPDATE runs SET status = 'running', lease_token = 'x', runner_id = 'sneaky' \
             WHERE id = '{}'",
            run.id
        ))
        .await
        .expect_err("the database refuses an unapproved claim");
    // SQLite's trigger says so; PostgreSQL names the CHECK constraint.
    assert!(
        refused
            .to_string()
            .replace('_', " ")
            .contains("awaiting approval"),
        "{refused}"
    );
    // Nor may a run wait for approval without a deadline.
    sql.execute_unprepared(&format!(
        "UPDATE runs SET approval_deadline = NULL WHERE id = '{}'",
        run.id
    ))
    .await
    .expect_err("the database refuses an approval without a deadline");

    // A runner may not approve; a reason is required.
    let denied = as_runner
        .approve_run(pb::ApproveRunRequest {
            run_id: run.id.clone(),
            reason: "runners approve themselves".into(),
            ..Default::default()
        })
        .await
        .expect_err("runner");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let no_reason = as_operator
        .approve_run(pb::ApproveRunRequest {
            run_id: run.id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("no reason");
    assert_eq!(no_reason.code(), Code::InvalidArgument);
    assert!(
        no_reason.message().contains("reason"),
        "{}",
        no_reason.message()
    );

    let approved = as_operator
        .approve_run(pb::ApproveRunRequest {
            run_id: run.id.clone(),
            reason: "sandbox is done".into(),
            ..Default::default()
        })
        .await
        .expect("approve")
        .into_inner()
        .run
        .expect("run");
    assert_eq!(approved.status, pb::RunStatus::Queued as i32);
    let approval = approved.approval.expect("approval");
    assert_eq!(approval.state, "APPROVED");
    assert!(
        approval.decided_by.starts_with("token:"),
        "{}",
        approval.decided_by
    );
    assert_eq!(approval.reason, "sandbox is done");
    let again = as_operator
        .reject_run(pb::RejectRunRequest {
            run_id: run.id.clone(),
            reason: "changed my mind".into(),
            ..Default::default()
        })
        .await
        .expect_err("final");
    assert_eq!(again.code(), Code::FailedPrecondition);
    // Nor does the database let the decision change underneath.
    let changed = sql
        .execute_unprepared(&format!(
            "UPDATE runs SET approval = 'rejected' WHERE id = '{}'",
            run.id
        ))
        .await
        .expect_err("the database refuses changing a decision");
    assert!(changed.to_string().contains("is final"), "{changed}");
    let (claimed, lease_token) = claim(&mut runner, &org)
        .await
        .expect("the approved run is claimed");
    assert_eq!(claimed.id, run.id);
    runner
        .complete_run(pb::CompleteRunRequest {
            run_id: claimed.id.clone(),
            lease_token,
            outcome: pb::RunOutcome::Succeeded as i32,
            ..Default::default()
        })
        .await
        .expect("complete");

    // Rejected: canceled, the workspace stays, the trail says who and why.
    let rejected_ws =
        ebb_tests::cluster::create_workspace(&mut api, &f.project.id, "rejected").await;
    let run = destroy_run(&mut api, &org, &rejected_ws.id).await;
    // Through the CLI, as an operator would.
    let out = tokio::process::Command::new(ebb_tests::bin_path("ebb"))
        .args([
            "runs",
            "reject",
            &run.id,
            "--reason",
            "still in use by the demo",
            "--server",
            &cluster.lifecycle.addr.to_string(),
            "-o",
            "json",
        ])
        .env("EBB_TOKEN", &operator)
        .env_remove("EBB_CONFIG")
        .output()
        .await
        .expect("ebb runs reject");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rejected: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rejected["status"], "RUN_STATUS_CANCELED");
    assert_eq!(rejected["approval"]["state"], "REJECTED");
    assert_eq!(rejected["approval"]["reason"], "still in use by the demo");
    let rejected = get_run(&mut api, &run.id).await;
    assert_eq!(rejected.status, pb::RunStatus::Canceled as i32);
    assert_eq!(rejected.approval.expect("approval").state, "REJECTED");
    let ws = ebb_tests::cluster::workspace(&mut api, &rejected_ws.id).await;
    assert_eq!(ws.state, pb::WorkspaceState::Active as i32);
    let skipped = events(&mut api, &org, "workspace.auto_destroy.skipped").await;
    let by_rejection = skipped
        .iter()
        .find(|e| e.subject_id == rejected_ws.id)
        .expect("a skipped event");
    assert!(
        by_rejection.actor.starts_with("token:"),
        "{}",
        by_rejection.actor
    );

    // Left past its deadline: canceled by the scheduler, never approved.
    let expired_ws = ebb_tests::cluster::create_workspace(&mut api, &f.project.id, "expired").await;
    let run = destroy_run(&mut api, &org, &expired_ws.id).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.scheduler_rounds(REMINDERS, 1).await;
    let expired = get_run(&mut api, &run.id).await;
    assert_eq!(expired.status, pb::RunStatus::Canceled as i32);
    assert_eq!(expired.approval.expect("approval").state, "EXPIRED");
    let late = as_operator
        .approve_run(pb::ApproveRunRequest {
            run_id: run.id.clone(),
            reason: "too late".into(),
            ..Default::default()
        })
        .await
        .expect_err("expired");
    assert_eq!(late.code(), Code::FailedPrecondition);
    let skipped = events(&mut api, &org, "workspace.auto_destroy.skipped").await;
    let by_expiry = skipped
        .iter()
        .find(|e| e.subject_id == expired_ws.id)
        .expect("a skipped event");
    assert_eq!(by_expiry.actor, "scheduler:auto_destroy_reminders");
    let left = claim(&mut runner, &org).await.map(|(r, _)| r);
    assert!(left.is_none(), "nothing is left to claim: {left:?}");
    cluster.check_destroy_causes().await;
}

/// A run of the organization awaiting approval, other than `except`.
async fn awaiting(
    api: &mut pb::lifecycle_service_client::LifecycleServiceClient<ebb_tests::Channel>,
    org: &str,
    except: &str,
) -> Option<pb::Run> {
    api.list_runs(pb::ListRunsRequest {
        organization_id: org.into(),
        status: pb::RunStatus::AwaitingApproval as i32,
        ..Default::default()
    })
    .await
    .ok()?
    .into_inner()
    .runs
    .into_iter()
    .find(|r| r.id != except)
}

/// With `approval_cascade_threshold`, each destroy run of a cascade tearing down more entities
/// waits for approval: approved it runs and the cascade goes on, rejected its step fails and
/// the cascade stops with the tenant back to its onFailure state; a smaller cascade needs none.
#[tokio::test]
async fn large_cascades_wait_for_approval_of_each_destroy() {
    let cluster = Cluster::start(1).await;
    let (mut api, mut dep) = (cluster.api().await, cluster.deprovision().await);
    let stack = crate::deprovision::stack(&mut api, &mut dep, true).await;
    let org = stack.org.clone();
    api.update_organization_settings(pb::UpdateOrganizationSettingsRequest {
        organization_id: org.clone(),
        settings: Some(pb::OrganizationSettings {
            require_approval: true,
            approval_cascade_threshold: Some(3),
            approval_window: Some(secs(60)),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec![
                "require_approval".into(),
                "approval_cascade_threshold".into(),
                "approval_window".into(),
            ],
        }),
        ..Default::default()
    })
    .await
    .expect("require approval for cascades over 3 entities");
    let operator = token(&cluster, &org, pb::TokenRole::Operator).await;
    let runner_token = token(&cluster, &org, pb::TokenRole::Runner).await;
    let mut runner = RunnerServiceClient::new(cluster.lifecycle.channel_as(&runner_token).await);
    let mut as_operator = pb::lifecycle_service_client::LifecycleServiceClient::new(
        cluster.lifecycle.channel_as(&operator).await,
    );

    // A lone tenant without a workspace: a cascade of one, no approval.
    let solo = dep
        .create_entity(pb::CreateEntityRequest {
            organization_id: org.clone(),
            kind: "tenant".into(),
            name: "solo".into(),
            ..Default::default()
        })
        .await
        .expect("tenant")
        .into_inner()
        .entity
        .expect("entity");
    let small = dep
        .trigger_action(pb::TriggerActionRequest {
            entity_id: solo.id.clone(),
            action: "DeprovisionTenant".into(),
            ..Default::default()
        })
        .await
        .expect("trigger a small cascade")
        .into_inner()
        .action_run
        .expect("action run");
    assert_eq!(small.approval_window, None);

    // Four entities, over the threshold of three.
    let run = dep
        .trigger_action(pb::TriggerActionRequest {
            entity_id: stack.tenant.id.clone(),
            action: "DeprovisionTenant".into(),
            ..Default::default()
        })
        .await
        .expect("trigger")
        .into_inner()
        .action_run
        .expect("action run");
    assert_eq!(run.approval_window, Some(secs(60)));
    let tenant_run = eventually(WAIT, "the tenant's destroy run", || {
        let (mut api, org) = (api.clone(), org.clone());
        async move { awaiting(&mut api, &org, "").await }
    })
    .await;
    assert!(
        claim(&mut runner, &org).await.is_none(),
        "not before approval"
    );
    as_operator
        .approve_run(pb::ApproveRunRequest {
            run_id: tenant_run.id.clone(),
            reason: "tenant confirmed gone".into(),
            ..Default::default()
        })
        .await
        .expect("approve");
    let (claimed, lease) = claim(&mut runner, &org)
        .await
        .expect("approved: a runner takes it");
    assert_eq!(claimed.id, tenant_run.id);
    runner
        .complete_run(pb::CompleteRunRequest {
            run_id: claimed.id.clone(),
            lease_token: lease,
            outcome: pb::RunOutcome::Succeeded as i32,
            ..Default::default()
        })
        .await
        .expect("complete");

    // The next step's run waits for its own approval; rejected, the cascade stops there.
    let next = eventually(WAIT, "the app stack's destroy run", || {
        let (mut api, org, done) = (api.clone(), org.clone(), tenant_run.id.clone());
        async move { awaiting(&mut api, &org, &done).await }
    })
    .await;
    as_operator
        .reject_run(pb::RejectRunRequest {
            run_id: next.id.clone(),
            reason: "the app stack still serves traffic".into(),
            ..Default::default()
        })
        .await
        .expect("reject");
    let failed = eventually(WAIT, "the cascade stops", || {
        let (mut dep, id) = (dep.clone(), run.id.clone());
        async move {
            let r = crate::deprovision::action_run(&mut dep, &id).await;
            (r.status == pb::ActionRunStatus::Failed as i32).then_some(r)
        }
    })
    .await;
    assert!(
        failed
            .steps
            .iter()
            .all(|s| s.status != pb::ActionStepStatus::Running as i32)
    );
    let tenant = crate::deprovision::entity(&mut dep, &stack.tenant.id).await;
    assert_eq!(tenant.state, "active", "back to its onFailure state");
    assert!(
        claim(&mut runner, &org).await.is_none(),
        "nothing else runs"
    );
    let not_approved = events(&mut api, &org, "run.not_approved").await;
    assert_eq!(not_approved.len(), 1, "{not_approved:?}");
    assert_eq!(not_approved[0].subject_id, next.id);
    cluster.check_destroy_causes().await;
}
