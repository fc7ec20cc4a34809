//! Deprovisioning end to end (DESIGN "Deprovisioning", rules 1–9): the example catalog's
//! DeprovisionTenant over a tenant spanning several stacks, against real processes.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::read_request;
use ebb_tests::cluster::{Cluster, create_workspace, events, eventually, fixture, from_now, secs};
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::lifecycle::v1::deprovision_service_client::DeprovisionServiceClient;
use ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use ebb_tests::proto::lifecycle::v1::runner_service_client::RunnerServiceClient;
use ebb_tests::{TestDatabases, require_postgres};
use sea_orm::ConnectionTrait;
use tonic::Code;

const CATALOG: &str = include_str!("../../../deploy/catalog/deprovision-tenant.yaml");
const WAIT: Duration = Duration::from_secs(20);

pub(crate) type Dep = DeprovisionServiceClient<ebb_tests::Channel>;
pub(crate) type Api = LifecycleServiceClient<ebb_tests::Channel>;

pub(crate) struct Stack {
    pub(crate) org: String,
    pub(crate) tenant: pb::Entity,
    /// tenant, app stack, network stack, account — in teardown order.
    pub(crate) chain: Vec<pb::Entity>,
    pub(crate) edges: Vec<pb::Relationship>,
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

pub(crate) async fn apply_catalog(dep: &mut Dep) {
    dep.apply_catalog(pb::ApplyCatalogRequest {
        yaml: CATALOG.into(),
        ..Default::default()
    })
    .await
    .expect("apply catalog");
}

/// A tenant that runs on an app stack, on a network stack, on an account; each materialized by
/// a workspace when `workspaces` is set.
pub(crate) async fn stack(api: &mut Api, dep: &mut Dep, workspaces: bool) -> Stack {
    apply_catalog(dep).await;
    let f = fixture(api, None, "tenant-ws").await;
    let mut chain = Vec::new();
    for (i, kind) in ["tenant", "app_stack", "network_stack", "account"]
        .into_iter()
        .enumerate()
    {
        let ws = if !workspaces {
            String::new()
        } else if i == 0 {
            f.workspace.id.clone()
        } else {
            create_workspace(api, &f.project.id, &format!("{kind}-ws"))
                .await
                .id
        };
        let e = dep
            .create_entity(pb::CreateEntityRequest {
                organization_id: f.org.id.clone(),
                kind: kind.into(),
                name: format!("acme-{kind}"),
                workspace_id: ws,
                ..Default::default()
            })
            .await
            .expect("create entity")
            .into_inner()
            .entity
            .expect("entity");
        chain.push(e);
    }
    let mut edges = Vec::new();
    for pair in chain.windows(2) {
        let r = dep
            .create_relationship(pb::CreateRelationshipRequest {
                r#type: "runs_on".into(),
                from_entity_id: pair[0].id.clone(),
                to_entity_id: pair[1].id.clone(),
                ..Default::default()
            })
            .await
            .expect("relationship")
            .into_inner()
            .relationship
            .expect("relationship");
        edges.push(r);
    }
    Stack {
        org: f.org.id,
        tenant: chain[0].clone(),
        chain,
        edges,
    }
}

async fn deprovision_runs(api: &mut Api, org: &str) -> Vec<pb::Run> {
    api.list_runs(pb::ListRunsRequest {
        organization_id: org.into(),
        source: pb::RunSource::Deprovision as i32,
        page_size: 100,
        ..Default::default()
    })
    .await
    .expect("runs")
    .into_inner()
    .runs
}

pub(crate) async fn claim(
    runner: &mut RunnerServiceClient<ebb_tests::Channel>,
    org: &str,
) -> pb::ClaimRunResponse {
    runner
        .claim_run(pb::ClaimRunRequest {
            organization_id: org.into(),
            runner_id: "test".into(),
            wait: Some(secs(3)),
        })
        .await
        .expect("claim")
        .into_inner()
}

pub(crate) async fn complete(
    runner: &mut RunnerServiceClient<ebb_tests::Channel>,
    c: &pb::ClaimRunResponse,
    ok: bool,
) {
    let outcome = if ok {
        pb::RunOutcome::Succeeded
    } else {
        pb::RunOutcome::Failed
    };
    runner
        .complete_run(pb::CompleteRunRequest {
            run_id: c.run.as_ref().expect("run").id.clone(),
            lease_token: c.lease_token.clone(),
            outcome: outcome as i32,
            ..Default::default()
        })
        .await
        .expect("complete");
}

pub(crate) async fn entity(dep: &mut Dep, id: &str) -> pb::Entity {
    dep.get_entity(pb::GetEntityRequest {
        entity_id: id.into(),
    })
    .await
    .expect("entity")
    .into_inner()
    .entity
    .expect("entity")
}

async fn relationship(dep: &mut Dep, id: &str) -> pb::Relationship {
    dep.get_relationship(pb::GetRelationshipRequest {
        relationship_id: id.into(),
    })
    .await
    .expect("rel")
    .into_inner()
    .relationship
    .expect("rel")
}

pub(crate) async fn action_run(dep: &mut Dep, id: &str) -> pb::ActionRun {
    dep.get_action_run(pb::GetActionRunRequest {
        action_run_id: id.into(),
    })
    .await
    .expect("action run")
    .into_inner()
    .action_run
    .expect("run")
}

#[tokio::test]
async fn a_tenant_spanning_several_stacks_tears_down_leaves_first() {
    let cluster = Cluster::start(0).await;
    let (mut api, mut dep, mut runner) = (
        cluster.api().await,
        cluster.deprovision().await,
        cluster.runner().await,
    );
    let s = stack(&mut api, &mut dep, true).await;
    let triggered = dep
        .trigger_action(pb::TriggerActionRequest {
            entity_id: s.tenant.id.clone(),
            action: "DeprovisionTenant".into(),
            parameters: grace(0.0),
            ..Default::default()
        })
        .await
        .expect("trigger")
        .into_inner();
    let plan: Vec<_> = triggered.plan.iter().map(|p| p.entity_id.clone()).collect();
    assert_eq!(
        plan,
        s.chain.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        "leaves first: tenant, app, network, account"
    );
    let run_id = triggered.action_run.expect("action run").id;
    assert_eq!(entity(&mut dep, &s.tenant.id).await.state, "deprovisioning");
    for edge in &s.edges {
        assert_eq!(
            relationship(&mut dep, &edge.id).await.state,
            pb::RelationshipState::Removing as i32
        );
    }
    for (i, expected) in s.chain.iter().enumerate() {
        // Exactly one destroy run exists per finished step plus the current one.
        let runs = deprovision_runs(&mut api, &s.org).await;
        assert_eq!(
            runs.len(),
            i + 1,
            "a step's run is queued only after every dependent step succeeded"
        );
        let c = claim(&mut runner, &s.org).await;
        let run = c.run.clone().expect("a queued destroy run");
        assert!(run.is_destroy && run.auto_apply);
        assert_eq!(
            run.workspace_id, expected.workspace_id,
            "step {i} destroys {}",
            expected.name
        );
        complete(&mut runner, &c, true).await;
    }
    let done = action_run(&mut dep, &run_id).await;
    assert_eq!(done.status, pb::ActionRunStatus::Succeeded as i32);
    assert_eq!(entity(&mut dep, &s.tenant.id).await.state, "decommissioned");
    for edge in &s.edges {
        let r = relationship(&mut dep, &edge.id).await;
        assert_eq!(
            r.state,
            pb::RelationshipState::Removed as i32,
            "grace 0 removes the edges at once"
        );
        assert!(r.finalize_time.is_some());
    }
    for kind in [
        "action_run.started",
        "action_run.succeeded",
        "entity.transitioned",
        "relationship.transitioned",
    ] {
        assert!(
            !events(&mut api, &s.org, kind).await.is_empty(),
            "{kind} recorded"
        );
    }
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn a_failure_mid_cascade_reverts_the_entity_and_retry_resumes_at_the_failed_step() {
    let cluster = Cluster::start(0).await;
    let (mut api, mut dep, mut runner) = (
        cluster.api().await,
        cluster.deprovision().await,
        cluster.runner().await,
    );
    let s = stack(&mut api, &mut dep, true).await;
    let run_id = dep
        .trigger_action(pb::TriggerActionRequest {
            entity_id: s.tenant.id.clone(),
            action: "DeprovisionTenant".into(),
            ..Default::default()
        })
        .await
        .expect("trigger")
        .into_inner()
        .action_run
        .expect("run")
        .id;
    let c = claim(&mut runner, &s.org).await;
    complete(&mut runner, &c, true).await; // tenant
    let c = claim(&mut runner, &s.org).await;
    assert_eq!(
        c.run.as_ref().expect("run").workspace_id,
        s.chain[1].workspace_id
    );
    complete(&mut runner, &c, false).await; // the app stack fails
    let failed = action_run(&mut dep, &run_id).await;
    assert_eq!(failed.status, pb::ActionRunStatus::Failed as i32);
    assert_eq!(
        entity(&mut dep, &s.tenant.id).await.state,
        "active",
        "onFailure"
    );
    for edge in &s.edges {
        assert_eq!(
            relationship(&mut dep, &edge.id).await.state,
            pb::RelationshipState::Removing as i32,
            "edges stay removing"
        );
    }
    let err = dep
        .trigger_action(pb::TriggerActionRequest {
            entity_id: s.tenant.id.clone(),
            action: "DeprovisionTenant".into(),
            dry_run: true,
            ..Default::default()
        })
        .await;
    assert!(err.is_ok(), "the condition holds again after the revert");

    dep.retry_action_run(pb::RetryActionRunRequest {
        action_run_id: run_id.clone(),
        ..Default::default()
    })
    .await
    .expect("retry");
    let c = claim(&mut runner, &s.org).await;
    assert_eq!(
        c.run.as_ref().expect("run").workspace_id,
        s.chain[1].workspace_id,
        "retry resumes at the failed step"
    );
    complete(&mut runner, &c, true).await;
    for expected in &s.chain[2..] {
        let c = claim(&mut runner, &s.org).await;
        assert_eq!(
            c.run.as_ref().expect("run").workspace_id,
            expected.workspace_id
        );
        complete(&mut runner, &c, true).await;
    }
    let runs = deprovision_runs(&mut api, &s.org).await;
    let tenant_runs = runs
        .iter()
        .filter(|r| r.workspace_id == s.tenant.workspace_id)
        .count();
    assert_eq!(tenant_runs, 1, "the finished tenant step was not redone");
    assert_eq!(runs.len(), 5, "4 steps plus one retried");
    assert_eq!(
        action_run(&mut dep, &run_id).await.status,
        pb::ActionRunStatus::Succeeded as i32
    );
    assert_eq!(entity(&mut dep, &s.tenant.id).await.state, "decommissioned");
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn cycles_dry_runs_and_conditions_are_checked_before_anything_changes() {
    let cluster = Cluster::start(0).await;
    let (mut api, mut dep) = (cluster.api().await, cluster.deprovision().await);
    let s = stack(&mut api, &mut dep, false).await;

    // Dry run: the ordered plan, and nothing changes.
    let dry = dep
        .trigger_action(pb::TriggerActionRequest {
            entity_id: s.tenant.id.clone(),
            action: "DeprovisionTenant".into(),
            dry_run: true,
            ..Default::default()
        })
        .await
        .expect("dry run")
        .into_inner();
    assert!(dry.action_run.is_none());
    assert_eq!(dry.plan.len(), 4);
    assert_eq!(dry.plan[1].waits_for_entity_ids, vec![s.tenant.id.clone()]);
    assert_eq!(entity(&mut dep, &s.tenant.id).await.state, "active");
    assert_eq!(
        relationship(&mut dep, &s.edges[0].id).await.state,
        pb::RelationshipState::Active as i32
    );
    let listed = dep
        .list_action_runs(pb::ListActionRunsRequest {
            organization_id: s.org.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.action_runs.is_empty());

    // Bad parameters are refused with the field.
    let err = dep
        .trigger_action(pb::TriggerActionRequest {
            entity_id: s.tenant.id.clone(),
            action: "DeprovisionTenant".into(),
            parameters: grace(-5.0),
            ..Default::default()
        })
        .await
        .expect_err("negative grace");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("gracePeriodSeconds"),
        "{}",
        err.message()
    );

    // A cycle (account runs_on tenant) is refused with its path.
    dep.create_relationship(pb::CreateRelationshipRequest {
        r#type: "runs_on".into(),
        from_entity_id: s.chain[3].id.clone(),
        to_entity_id: s.tenant.id.clone(),
        ..Default::default()
    })
    .await
    .expect("closing edge");
    let err = dep
        .trigger_action(pb::TriggerActionRequest {
            entity_id: s.tenant.id.clone(),
            action: "DeprovisionTenant".into(),
            ..Default::default()
        })
        .await
        .expect_err("cycle");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("cycle")
            && err.message().contains("acme-account")
            && err.message().contains("acme-tenant"),
        "{}",
        err.message()
    );
    assert_eq!(
        entity(&mut dep, &s.tenant.id).await.state,
        "active",
        "a refused trigger changes nothing"
    );

    // A condition that does not hold is refused with the condition.
    let other = dep
        .create_entity(pb::CreateEntityRequest {
            organization_id: s.org.clone(),
            kind: "tenant".into(),
            name: "solo".into(),
            ..Default::default()
        })
        .await
        .expect("entity")
        .into_inner()
        .entity
        .expect("entity");
    let done = dep
        .trigger_action(pb::TriggerActionRequest {
            entity_id: other.id.clone(),
            action: "DeprovisionTenant".into(),
            ..Default::default()
        })
        .await
        .expect("no workspace: nothing to destroy")
        .into_inner();
    assert_eq!(
        done.action_run.expect("run").status,
        pb::ActionRunStatus::Succeeded as i32
    );
    let err = dep
        .trigger_action(pb::TriggerActionRequest {
            entity_id: other.id.clone(),
            action: "DeprovisionTenant".into(),
            ..Default::default()
        })
        .await
        .expect_err("already decommissioned");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("state == active"),
        "{}",
        err.message()
    );
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn grace_periods_hold_edges_until_the_sweep_and_force_needs_one() {
    let cluster = Cluster::start(1).await;
    let (mut api, mut dep) = (cluster.api().await, cluster.deprovision().await);
    let s = stack(&mut api, &mut dep, false).await;
    // Force on an edge without a scheduled grace period.
    let err = dep
        .force_finalize_relationship(pb::ForceFinalizeRelationshipRequest {
            relationship_id: s.edges[0].id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("no grace period");
    assert_eq!(err.code(), Code::FailedPrecondition);

    dep.trigger_action(pb::TriggerActionRequest {
        entity_id: s.tenant.id.clone(),
        action: "DeprovisionTenant".into(),
        parameters: grace(2.0),
        ..Default::default()
    })
    .await
    .expect("trigger");
    assert_eq!(
        entity(&mut dep, &s.tenant.id).await.state,
        "decommissioned",
        "the entity is retired at once"
    );
    for edge in &s.edges {
        let r = relationship(&mut dep, &edge.id).await;
        assert_eq!(
            r.state,
            pb::RelationshipState::Removing as i32,
            "held for the grace period"
        );
        assert!(r.deletion_scheduled_time.is_some());
    }
    let scheduled = events(&mut api, &s.org, "deprovision.scheduled").await;
    assert_eq!(scheduled.len(), 3);
    let fields = &scheduled[0].data.as_ref().expect("data").fields;
    assert!(fields.contains_key("gracePeriodSeconds") && fields.contains_key("scheduledAt"));

    // Force one edge; the sweep finalizes the others.
    let forced = dep
        .force_finalize_relationship(pb::ForceFinalizeRelationshipRequest {
            relationship_id: s.edges[0].id.clone(),
            ..Default::default()
        })
        .await
        .expect("force")
        .into_inner()
        .relationship
        .expect("rel");
    assert_eq!(forced.state, pb::RelationshipState::Removed as i32);
    assert_eq!(forced.finalize_method, "force");
    eventually(WAIT, "the sweep", || {
        let mut dep = dep.clone();
        let ids: Vec<String> = s.edges[1..].iter().map(|e| e.id.clone()).collect();
        async move {
            for id in ids {
                if relationship(&mut dep, &id).await.state != pb::RelationshipState::Removed as i32
                {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    let finalized = events(&mut api, &s.org, "deprovision.finalized").await;
    let methods: Vec<String> = finalized
        .iter()
        .filter_map(
            |e| match e.data.as_ref()?.fields.get("method")?.kind.as_ref()? {
                prost_types::value::Kind::StringValue(m) => Some(m.clone()),
                _ => None,
            },
        )
        .collect();
    assert_eq!(methods.iter().filter(|m| *m == "force").count(), 1);
    assert_eq!(methods.iter().filter(|m| *m == "sweep").count(), 2);
    assert_eq!(
        relationship(&mut dep, &s.edges[1].id).await.finalize_method,
        "sweep"
    );
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn overdue_edges_are_listed_and_the_database_refuses_deleting_relationships() {
    let cluster = Cluster::start(0).await;
    let (mut api, mut dep) = (cluster.api().await, cluster.deprovision().await);
    let s = stack(&mut api, &mut dep, false).await;
    dep.trigger_action(pb::TriggerActionRequest {
        entity_id: s.tenant.id.clone(),
        action: "DeprovisionTenant".into(),
        parameters: grace(1.0),
        ..Default::default()
    })
    .await
    .expect("trigger");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // No scheduler runs here: the edges are overdue.
    let overdue = dep
        .list_relationships(pb::ListRelationshipsRequest {
            organization_id: s.org.clone(),
            overdue: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .relationships;
    assert_eq!(overdue.len(), 3);
    let scrape = cluster.lifecycle.scrape().await.expect("scrape");
    assert_eq!(
        scrape.value("ebb_deprovision_overdue_grace_edges", &[]),
        Some(3.0)
    );
    assert!(scrape.value("ebb_scheduler_lag_seconds", &[("kind", "grace_period")]) >= Some(0.2));
    let sql = cluster.lifecycle_sql().await;
    let refused = sql
        .execute_unprepared(&format!(
            "DELETE FROM relationships WHERE id = '{}'",
            s.edges[0].id
        ))
        .await;
    assert!(refused.is_err(), "relationship rows are never deleted");
    assert!(
        sql.execute_unprepared("DELETE FROM relationships")
            .await
            .is_err()
    );
    assert_eq!(
        relationship(&mut dep, &s.edges[0].id).await.id,
        s.edges[0].id
    );
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn a_bad_catalog_is_refused_with_path_and_reason() {
    let cluster = Cluster::start(0).await;
    let mut dep = cluster.deprovision().await;
    let err = dep
        .apply_catalog(pb::ApplyCatalogRequest {
            yaml: CATALOG.replace("onSuccess: decommissioned", "onSuccess: gone"),
            ..Default::default()
        })
        .await
        .expect_err("bad catalog");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("kinds[0].actions[0].onSuccess") && err.message().contains("gone"),
        "{}",
        err.message()
    );

    // At start, a bad catalog file stops lifecycle-svc naming the file, path and reason.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("catalog.yaml");
    std::fs::write(&file, "kinds:\n  - name: tenant\n    states: [active]\n    actions:\n      - name: X\n        onTrigger: active\n        onSuccess: active\n        onFailure: nope\n        trigger: {type: noop}\n").expect("write");
    let (status, stderr) = ebb_tests::run_to_exit(
        "lifecycle-svc",
        &["--listen", "127.0.0.1:0"],
        &[
            ("EBB_CATALOG_FILE", file.display().to_string()),
            (
                "EBB_DATABASE_URL",
                format!("sqlite://{}?mode=rwc", dir.path().join("l.db").display()),
            ),
        ],
    )
    .await
    .expect("run");
    assert!(!status.success());
    assert!(
        stderr.contains("catalog.yaml") && stderr.contains("onFailure") && stderr.contains("nope"),
        "{stderr}"
    );
    cluster.check_destroy_causes().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EBB_TEST_DATABASE_URL"]
async fn three_replicas_sweep_a_thousand_elapsed_edges_exactly_once() {
    let pg = require_postgres("three_replicas_sweep_a_thousand_elapsed_edges_exactly_once");
    let mut cluster = Cluster::start_on(TestDatabases::on(Some(pg)), 0, &[]).await;
    let (mut api, mut dep) = (cluster.api().await, cluster.deprovision().await);
    apply_catalog(&mut dep).await;
    let f = fixture(&mut api, None, "w").await;
    let hub = dep
        .create_entity(pb::CreateEntityRequest {
            organization_id: f.org.id.clone(),
            kind: "account".into(),
            name: "hub".into(),
            ..Default::default()
        })
        .await
        .expect("hub")
        .into_inner()
        .entity
        .expect("hub");
    // Seed 1,000 tenants whose edges to the hub are removing with an elapsed grace period.
    let sql = cluster.lifecycle_sql().await;
    let past = chrono::Utc::now().timestamp_millis() - 1000;
    sql.execute_unprepared(&format!(
        "INSERT INTO entities (id, organization_id, kind, name, state, attributes, created_at, updated_at) \
         SELECT 'e-' || i, '{org}', 'tenant', 't' || i, 'decommissioned', '{{}}', {past}, {past} FROM generate_series(1, 1000) AS i;
         INSERT INTO relationships (id, organization_id, type, from_entity_id, to_entity_id, state, deletion_scheduled_at, created_at, updated_at) \
         SELECT 'r-' || i, '{org}', 'runs_on', 'e-' || i, '{hub}', 'removing', {past}, {past}, {past} FROM generate_series(1, 1000) AS i;",
        org = f.org.id,
        hub = hub.id,
    ))
    .await
    .expect("seed");
    for _ in 0..3 {
        cluster.add_scheduler().await;
    }
    let finalized = eventually(Duration::from_secs(60), "every edge finalized", || {
        let mut api = api.clone();
        let org = f.org.id.clone();
        async move {
            let e = events(&mut api, &org, "deprovision.finalized").await;
            (e.len() >= 1000).then_some(e)
        }
    })
    .await;
    // Sweeps after the last one finalize nothing more.
    cluster.scheduler_rounds("grace_period_sweep", 2).await;
    let again = events(&mut api, &f.org.id, "deprovision.finalized").await;
    assert_eq!(
        again.len(),
        1000,
        "exactly 1,000 deprovision.finalized events"
    );
    let distinct: HashSet<_> = finalized.iter().map(|e| e.subject_id.clone()).collect();
    assert_eq!(distinct.len(), 1000, "each edge finalized exactly once");
    let remaining = dep
        .list_relationships(pb::ListRelationshipsRequest {
            organization_id: f.org.id.clone(),
            state: pb::RelationshipState::Removing as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .relationships;
    assert!(remaining.is_empty());
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn a_scheduled_deprovision_fires_once_at_its_time_after_its_reminder() {
    let cluster = Cluster::start(3).await;
    let (mut api, mut dep) = (cluster.api().await, cluster.deprovision().await);
    apply_catalog(&mut dep).await;
    let settings = pb::OrganizationSettings {
        reminder_lead_times: vec![secs(2)],
        ..Default::default()
    };
    let f = fixture(&mut api, Some(settings), "w").await;
    let tenant = dep
        .create_entity(pb::CreateEntityRequest {
            organization_id: f.org.id.clone(),
            kind: "tenant".into(),
            name: "trial".into(),
            ..Default::default()
        })
        .await
        .expect("tenant")
        .into_inner()
        .entity
        .expect("tenant");
    let at = from_now(Duration::from_secs(4));
    let scheduled = dep
        .schedule_action(pb::ScheduleActionRequest {
            entity_id: tenant.id.clone(),
            action: "DeprovisionTenant".into(),
            scheduled_time: Some(at),
            ..Default::default()
        })
        .await
        .expect("schedule")
        .into_inner()
        .scheduled_action
        .expect("scheduled");
    let fired = eventually(WAIT, "the scheduled action fired", || {
        let mut dep = dep.clone();
        let org = f.org.id.clone();
        async move {
            let runs = dep
                .list_action_runs(pb::ListActionRunsRequest {
                    organization_id: org,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .action_runs;
            runs.into_iter().next()
        }
    })
    .await;
    assert_eq!(fired.scheduled_action_id, scheduled.id);
    let created = fired.create_time.expect("time");
    assert!(created.seconds >= at.seconds, "not before its time");
    // Later runs of the task, on any replica, fire nothing more.
    cluster.scheduler_rounds("scheduled_actions", 2).await;
    let all = dep
        .list_action_runs(pb::ListActionRunsRequest {
            organization_id: f.org.id.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .action_runs;
    assert_eq!(all.len(), 1, "fired once with three replicas");
    let reminders = events(&mut api, &f.org.id, "scheduled_action.reminder").await;
    assert_eq!(reminders.len(), 1, "one reminder");
    let started = events(&mut api, &f.org.id, "action_run.started").await;
    assert!(
        reminders[0].sequence < started[0].sequence,
        "the reminder came before the action"
    );
    assert_eq!(entity(&mut dep, &tenant.id).await.state, "decommissioned");
}

/// Receives one POST on 127.0.0.1 and answers `status`; hands the JSON body to the test.
async fn one_webhook(status: u16) -> (String, tokio::sync::oneshot::Receiver<serde_json::Value>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let request = read_request(&mut socket, &mut Vec::new())
            .await
            .expect("read")
            .expect("connection closed before the body");
        let reply =
            format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        socket.write_all(reply.as_bytes()).await.expect("reply");
        let _ = tx.send(serde_json::from_slice(&request.body).expect("json body"));
    });
    (url, rx)
}

/// A catalog whose `pr_tenant` kind is deprovisioned by a webhook step to `url`.
pub(crate) fn webhook_catalog(url: &str) -> String {
    format!(
        "kinds:\n  - name: pr_tenant\n    states: [active, deprovisioning, decommissioned]\n    actions:\n      - name: DeprovisionByPr\n        conditions: [state == active]\n        onTrigger: deprovisioning\n        onSuccess: decommissioned\n        onFailure: active\n        trigger:\n          type: webhook\n          url: {url}\n"
    )
}

/// On `cluster`: the webhook catalog to `url` applied, a tenant, and its action triggered.
pub(crate) async fn trigger_webhook_tenant(
    cluster: &Cluster,
    url: &str,
) -> (Dep, pb::Entity, pb::ActionRun) {
    let (mut api, mut dep) = (cluster.api().await, cluster.deprovision().await);
    dep.apply_catalog(pb::ApplyCatalogRequest {
        yaml: webhook_catalog(url),
        ..Default::default()
    })
    .await
    .expect("catalog");
    let f = fixture(&mut api, None, "w").await;
    let tenant = dep
        .create_entity(pb::CreateEntityRequest {
            organization_id: f.org.id.clone(),
            kind: "pr_tenant".into(),
            name: "acme".into(),
            ..Default::default()
        })
        .await
        .expect("entity")
        .into_inner()
        .entity
        .expect("entity");
    let run = dep
        .trigger_action(pb::TriggerActionRequest {
            entity_id: tenant.id.clone(),
            action: "DeprovisionByPr".into(),
            ..Default::default()
        })
        .await
        .expect("trigger")
        .into_inner()
        .action_run
        .expect("run");
    (dep, tenant, run)
}

/// A cluster whose catalog deprovisions a tenant through a webhook answering `status`, with
/// the tenant's action triggered: the run, and the body the webhook received.
async fn webhook_tenant_triggered(
    status: u16,
) -> (
    Cluster,
    Dep,
    pb::Entity,
    pb::ActionRun,
    tokio::sync::oneshot::Receiver<serde_json::Value>,
) {
    let cluster = Cluster::start(0).await;
    let (url, body) = one_webhook(status).await;
    let (dep, tenant, run) = trigger_webhook_tenant(&cluster, &url).await;
    (cluster, dep, tenant, run, body)
}

#[tokio::test]
async fn a_webhook_step_is_completed_by_its_callback_token_only() {
    let (cluster, mut dep, tenant, run, body) = webhook_tenant_triggered(202).await;
    // The external system has no Ebb token: the callback token is its only credential.
    let mut callback = DeprovisionServiceClient::new(cluster.lifecycle.channel_as("").await);
    let request = tokio::time::timeout(WAIT, body)
        .await
        .expect("the webhook was called")
        .expect("body");
    let step_id = request["callback"]["step_id"]
        .as_str()
        .expect("step id")
        .to_owned();
    let token = request["callback"]["callback_token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(request["entity"]["id"], serde_json::json!(tenant.id));
    assert_eq!(
        action_run(&mut dep, &run.id).await.status,
        pb::ActionRunStatus::Running as i32,
        "waits for the callback"
    );

    // A token for another step, or a forged one, is refused and changes nothing.
    let forged = format!("{}.{}", i64::MAX, "00".repeat(32));
    for (step, bad) in [
        (step_id.clone(), forged),
        (step_id.clone(), token.replace('.', ".0")),
        (uuid::Uuid::now_v7().to_string(), token.clone()),
    ] {
        let err = callback
            .complete_action_step(pb::CompleteActionStepRequest {
                step_id: step,
                callback_token: bad,
                outcome: pb::StepOutcome::Succeeded as i32,
                ..Default::default()
            })
            .await
            .expect_err("bad token");
        assert_eq!(err.code(), Code::PermissionDenied);
    }
    assert_eq!(
        action_run(&mut dep, &run.id).await.status,
        pb::ActionRunStatus::Running as i32
    );

    let complete = pb::CompleteActionStepRequest {
        request_id: "callback-1".into(),
        step_id: step_id.clone(),
        callback_token: token.clone(),
        outcome: pb::StepOutcome::Succeeded as i32,
        ..Default::default()
    };
    let done = callback
        .complete_action_step(complete.clone())
        .await
        .expect("callback")
        .into_inner()
        .action_run
        .expect("run");
    assert_eq!(done.status, pb::ActionRunStatus::Succeeded as i32);
    // A retry of the same request answers the same; a second use of the token is refused.
    let again = callback
        .complete_action_step(complete)
        .await
        .expect("retried callback")
        .into_inner();
    assert_eq!(again.action_run.expect("run").status, done.status);
    let reuse = callback
        .complete_action_step(pb::CompleteActionStepRequest {
            step_id,
            callback_token: token,
            outcome: pb::StepOutcome::Failed as i32,
            ..Default::default()
        })
        .await
        .expect_err("the token is single use");
    assert_eq!(reuse.code(), Code::FailedPrecondition, "{reuse:?}");
    assert_eq!(entity(&mut dep, &tenant.id).await.state, "decommissioned");
}

#[tokio::test]
async fn a_webhook_that_refuses_fails_the_step_and_reverts_the_entity() {
    let (_cluster, mut dep, tenant, run, body) = webhook_tenant_triggered(500).await;
    tokio::time::timeout(WAIT, body)
        .await
        .expect("the webhook was called")
        .expect("body");
    let failed = eventually(WAIT, "the action run failed", || {
        let mut dep = dep.clone();
        let id = run.id.clone();
        async move {
            let r = action_run(&mut dep, &id).await;
            (r.status == pb::ActionRunStatus::Failed as i32).then_some(r)
        }
    })
    .await;
    assert!(failed.error.contains("500"), "{}", failed.error);
    assert_eq!(
        entity(&mut dep, &tenant.id).await.state,
        "active",
        "onFailure"
    );
}

#[tokio::test]
async fn a_cascade_past_the_blast_radius_needs_its_count_confirmed() {
    let cluster = Cluster::start(0).await;
    let (mut api, mut dep) = (cluster.api().await, cluster.deprovision().await);
    let s = stack(&mut api, &mut dep, true).await;
    api.update_organization_settings(pb::UpdateOrganizationSettingsRequest {
        organization_id: s.org.clone(),
        settings: Some(pb::OrganizationSettings {
            confirm_threshold: Some(3),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["confirm_threshold".into()],
        }),
        ..Default::default()
    })
    .await
    .expect("lower the threshold");
    let trigger = |dry_run, confirm_count| pb::TriggerActionRequest {
        entity_id: s.tenant.id.clone(),
        action: "DeprovisionTenant".into(),
        parameters: grace(0.0),
        dry_run,
        confirm_count,
        ..Default::default()
    };
    let plan = dep
        .trigger_action(trigger(true, 0))
        .await
        .expect("dry run")
        .into_inner();
    assert_eq!(plan.destroy_count, 4, "the dry run tells the count");
    let err = dep
        .trigger_action(trigger(false, 0))
        .await
        .expect_err("four entities, threshold three");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("confirm_count = 4"),
        "{}",
        err.message()
    );
    assert_eq!(
        entity(&mut dep, &s.tenant.id).await.state,
        "active",
        "a refused trigger changes nothing"
    );
    assert!(deprovision_runs(&mut api, &s.org).await.is_empty());
    let run = dep
        .trigger_action(trigger(false, plan.destroy_count))
        .await
        .expect("confirmed")
        .into_inner()
        .action_run
        .expect("action run");
    assert_eq!(run.status, pb::ActionRunStatus::Running as i32);
    cluster.check_destroy_causes().await;
}
