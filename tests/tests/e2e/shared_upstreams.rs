//! Shared upstreams end to end (DESIGN "Deprovisioning", rule 10): tenants nu-1 and nu-2 both
//! run on account shared-aws. Deprovisioning one tenant keeps the account, naming the other;
//! deprovisioning the last destroys it; `sharedUpstream: refuse` refuses instead; two action
//! runs over both tenants destroy the account exactly once, after both; and the database
//! refuses a second running step for one entity.

use std::time::Duration;

use crate::deprovision::action_run;
use ebb_tests::cluster::{Cluster, create_workspace, events, eventually, fixture, runs};
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::lifecycle::v1::deprovision_service_client::DeprovisionServiceClient;
use ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use ebb_tests::proto::lifecycle::v1::runner_service_client::RunnerServiceClient;
use ebb_tests::{ADMIN_TOKEN, Process, bin_path};
use sea_orm::ConnectionTrait;
use tonic::Code;

const CATALOG: &str = include_str!("../../../deploy/catalog/deprovision-tenant.yaml");
const ACTION: &str = "DeprovisionTenant";
const WAIT: Duration = Duration::from_secs(30);

type Dep = DeprovisionServiceClient<ebb_tests::Channel>;
type Api = LifecycleServiceClient<ebb_tests::Channel>;
type Runner = RunnerServiceClient<ebb_tests::Channel>;

/// Two tenants on one account, each entity materialized by a workspace of its own (or by none).
struct Fleet {
    org: String,
    nu1: pb::Entity,
    nu2: pb::Entity,
    account: pb::Entity,
    /// nu-1 → shared-aws, then nu-2 → shared-aws if nu-2 runs on it.
    edges: Vec<pb::Relationship>,
}

async fn fleet(api: &mut Api, dep: &mut Dep, catalog: &str, workspaces: bool) -> Fleet {
    fleet_of(api, dep, catalog, workspaces, true).await
}

/// Like [`fleet`]; nu-2 runs on the account only if `nu2_on_account`.
async fn fleet_of(
    api: &mut Api,
    dep: &mut Dep,
    catalog: &str,
    workspaces: bool,
    nu2_on_account: bool,
) -> Fleet {
    dep.apply_catalog(pb::ApplyCatalogRequest {
        yaml: catalog.into(),
        ..Default::default()
    })
    .await
    .expect("apply catalog");
    let f = fixture(api, None, "nu-1-ws").await;
    let mut entity = async |kind: &str, name: &str| {
        let workspace_id = match (workspaces, name) {
            (false, _) => String::new(),
            (true, "nu-1") => f.workspace.id.clone(),
            (true, _) => {
                create_workspace(api, &f.project.id, &format!("{name}-ws"))
                    .await
                    .id
            }
        };
        dep.create_entity(pb::CreateEntityRequest {
            organization_id: f.org.id.clone(),
            kind: kind.into(),
            name: name.into(),
            workspace_id,
            ..Default::default()
        })
        .await
        .expect("create entity")
        .into_inner()
        .entity
        .expect("entity")
    };
    let nu1 = entity("tenant", "nu-1").await;
    let nu2 = entity("tenant", "nu-2").await;
    let account = entity("account", "shared-aws").await;
    let mut edges = vec![relate(dep, &nu1, &account).await];
    if nu2_on_account {
        edges.push(relate(dep, &nu2, &account).await);
    }
    Fleet {
        org: f.org.id,
        nu1,
        nu2,
        account,
        edges,
    }
}

/// `from` runs on `to`.
async fn relate(dep: &mut Dep, from: &pb::Entity, to: &pb::Entity) -> pb::Relationship {
    dep.create_relationship(pb::CreateRelationshipRequest {
        r#type: "runs_on".into(),
        from_entity_id: from.id.clone(),
        to_entity_id: to.id.clone(),
        ..Default::default()
    })
    .await
    .expect("relationship")
    .into_inner()
    .relationship
    .expect("relationship")
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

async fn trigger(
    dep: &mut Dep,
    entity: &pb::Entity,
    dry_run: bool,
) -> Result<pb::TriggerActionResponse, tonic::Status> {
    dep.trigger_action(pb::TriggerActionRequest {
        entity_id: entity.id.clone(),
        action: ACTION.into(),
        dry_run,
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn entity(dep: &mut Dep, id: &str) -> pb::Entity {
    dep.get_entity(pb::GetEntityRequest {
        entity_id: id.into(),
    })
    .await
    .expect("entity")
    .into_inner()
    .entity
    .expect("entity")
}

async fn edge_state(dep: &mut Dep, id: &str) -> pb::RelationshipState {
    let r = dep
        .get_relationship(pb::GetRelationshipRequest {
            relationship_id: id.into(),
        })
        .await
        .expect("relationship")
        .into_inner()
        .relationship
        .expect("relationship");
    pb::RelationshipState::try_from(r.state).expect("a known state")
}

async fn claim(runner: &mut Runner, org: &str) -> pb::ClaimRunResponse {
    runner
        .claim_run(pb::ClaimRunRequest {
            organization_id: org.into(),
            runner_id: "test".into(),
            wait: Some(prost_types::Duration {
                seconds: 3,
                nanos: 0,
            }),
        })
        .await
        .expect("claim")
        .into_inner()
}

async fn complete(runner: &mut Runner, c: &pb::ClaimRunResponse, outcome: pb::RunOutcome) {
    runner
        .complete_run(pb::CompleteRunRequest {
            run_id: c.run.as_ref().expect("a claimed run").id.clone(),
            lease_token: c.lease_token.clone(),
            outcome: outcome as i32,
            ..Default::default()
        })
        .await
        .expect("complete");
}

async fn succeed(runner: &mut Runner, c: &pb::ClaimRunResponse) {
    complete(runner, c, pb::RunOutcome::Succeeded).await;
}

/// The names of the entities a plan tears down, in order.
fn torn_down(plan: &[pb::PlanStep]) -> Vec<&str> {
    plan.iter().map(|p| p.entity_name.as_str()).collect()
}

/// The kept entities of a plan, as (name, used by).
fn kept(kept: &[pb::KeptEntity]) -> Vec<(&str, Vec<&str>)> {
    kept.iter()
        .map(|k| {
            (
                k.entity_name.as_str(),
                k.used_by.iter().map(String::as_str).collect(),
            )
        })
        .collect()
}

/// `ebb deprovision plan` against the cluster: what it prints.
async fn cli_plan(cluster: &Cluster, entity: &str) -> String {
    let out = tokio::process::Command::new(bin_path("ebb"))
        .args(["deprovision", "plan", entity, "--action", ACTION])
        .arg("--server")
        .arg(cluster.lifecycle.url())
        .env("EBB_TOKEN", ADMIN_TOKEN)
        .env_remove("EBB_SERVER")
        .env_remove("EBB_CONFIG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run ebb");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ebb deprovision plan failed\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn a_shared_account_is_kept_until_its_last_tenant_is_deprovisioned() {
    let cluster = Cluster::start(0).await;
    let (mut api, mut dep, mut runner) = (
        cluster.api().await,
        cluster.deprovision().await,
        cluster.runner().await,
    );
    let f = fleet(&mut api, &mut dep, CATALOG, true).await;

    // The dry run, over the API and the CLI, keeps the account and names who still uses it.
    let dry = trigger(&mut dep, &f.nu1, true).await.expect("dry run");
    assert_eq!(torn_down(&dry.plan), ["nu-1"]);
    assert_eq!(kept(&dry.kept), [("shared-aws", vec!["tenant/nu-2"])]);
    assert_eq!(dry.kept[0].entity_id, f.account.id);
    assert_eq!(dry.kept[0].entity_kind, "account");
    let printed = cli_plan(&cluster, &f.nu1.id).await;
    assert!(
        printed.contains("kept: account/shared-aws (still used by tenant/nu-2)"),
        "{printed}"
    );
    assert!(printed.contains("1 step(s), leaves first"), "{printed}");

    // nu-1 is torn down; its own edge to the account goes removing, then removed.
    let triggered = trigger(&mut dep, &f.nu1, false)
        .await
        .expect("trigger nu-1");
    let run = triggered.action_run.expect("action run");
    assert_eq!(kept(&run.kept), [("shared-aws", vec!["tenant/nu-2"])]);
    assert_eq!(run.steps.len(), 1, "no step for the kept account");
    assert_eq!(
        edge_state(&mut dep, &f.edges[0].id).await,
        pb::RelationshipState::Removing
    );
    let c = claim(&mut runner, &f.org).await;
    assert_eq!(
        c.run.as_ref().expect("nu-1's destroy run").workspace_id,
        f.nu1.workspace_id
    );
    succeed(&mut runner, &c).await;
    let done = action_run(&mut dep, &run.id).await;
    assert_eq!(done.status, pb::ActionRunStatus::Succeeded as i32);
    assert!(
        runs(&mut api, &f.org, &f.account.workspace_id)
            .await
            .is_empty(),
        "no destroy run for the account's workspace"
    );
    assert_eq!(entity(&mut dep, &f.account.id).await.state, "active");
    assert_eq!(entity(&mut dep, &f.nu1.id).await.state, "decommissioned");
    assert_eq!(
        edge_state(&mut dep, &f.edges[0].id).await,
        pb::RelationshipState::Removed
    );
    assert_eq!(
        edge_state(&mut dep, &f.edges[1].id).await,
        pb::RelationshipState::Active
    );
    let recorded = events(&mut api, &f.org, "deprovision.upstream_kept").await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].subject_id, f.account.id);

    // The last tenant takes the account with it.
    let triggered = trigger(&mut dep, &f.nu2, false)
        .await
        .expect("trigger nu-2");
    assert_eq!(torn_down(&triggered.plan), ["nu-2", "shared-aws"]);
    assert!(triggered.kept.is_empty());
    assert!(triggered.plan[1].shared_with.is_empty());
    let run = triggered.action_run.expect("action run");
    for expected in [&f.nu2, &f.account] {
        let c = claim(&mut runner, &f.org).await;
        assert_eq!(
            c.run.as_ref().expect("a destroy run").workspace_id,
            expected.workspace_id
        );
        succeed(&mut runner, &c).await;
    }
    assert_eq!(
        action_run(&mut dep, &run.id).await.status,
        pb::ActionRunStatus::Succeeded as i32
    );
    assert_eq!(
        entity(&mut dep, &f.account.id).await.state,
        "decommissioned"
    );
    assert_eq!(
        runs(&mut api, &f.org, &f.account.workspace_id).await.len(),
        1,
        "the account was destroyed once"
    );
    for edge in &f.edges {
        assert_eq!(
            edge_state(&mut dep, &edge.id).await,
            pb::RelationshipState::Removed
        );
    }
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn a_tenant_in_its_grace_period_no_longer_holds_the_account() {
    let cluster = Cluster::start(0).await;
    let (mut api, mut dep) = (cluster.api().await, cluster.deprovision().await);
    let f = fleet(&mut api, &mut dep, CATALOG, false).await;
    // Nothing materializes these entities, so each run succeeds at once.
    let run = dep
        .trigger_action(pb::TriggerActionRequest {
            entity_id: f.nu1.id.clone(),
            action: ACTION.into(),
            parameters: grace(3600.0),
            ..Default::default()
        })
        .await
        .expect("trigger nu-1")
        .into_inner()
        .action_run
        .expect("run");
    assert_eq!(run.status, pb::ActionRunStatus::Succeeded as i32);
    assert_eq!(kept(&run.kept), [("shared-aws", vec!["tenant/nu-2"])]);
    assert_eq!(
        edge_state(&mut dep, &f.edges[0].id).await,
        pb::RelationshipState::Removing,
        "held for its grace period"
    );
    let dry = trigger(&mut dep, &f.nu2, true).await.expect("dry run");
    assert_eq!(
        torn_down(&dry.plan),
        ["nu-2", "shared-aws"],
        "an edge removing by a run that succeeded no longer counts"
    );
    assert!(dry.kept.is_empty());
}

#[tokio::test]
async fn a_rule_that_refuses_shared_upstreams_refuses_the_trigger_naming_who_uses_it() {
    let cluster = Cluster::start(0).await;
    let (mut api, mut dep) = (cluster.api().await, cluster.deprovision().await);
    let keep = "sharedUpstream: keep";
    assert!(CATALOG.contains(keep));
    let refusing = CATALOG.replace(keep, "sharedUpstream: refuse");
    let f = fleet(&mut api, &mut dep, &refusing, false).await;
    for dry_run in [true, false] {
        let err = trigger(&mut dep, &f.nu1, dry_run)
            .await
            .expect_err("a shared upstream under `refuse`");
        assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
        assert!(
            err.message().contains("account/shared-aws")
                && err.message().contains("tenant/nu-2")
                && err.message().contains("refuse"),
            "{}",
            err.message()
        );
    }
    assert_eq!(
        entity(&mut dep, &f.nu1.id).await.state,
        "active",
        "a refused trigger changes nothing"
    );
    assert_eq!(
        edge_state(&mut dep, &f.edges[0].id).await,
        pb::RelationshipState::Active
    );
    let listed = dep
        .list_action_runs(pb::ListActionRunsRequest {
            organization_id: f.org.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .action_runs;
    assert!(listed.is_empty());
}

/// Two action runs fired back to back over nu-1 and nu-2. The runner then finishes the tenant
/// named `first` before the other. Whichever order, the account's workspace gets exactly one
/// destroy run, created only after both tenants' destroy runs succeeded.
async fn two_runs_over_both_tenants(first: &str) {
    let cluster = Cluster::start(0).await;
    let (mut api, mut dep, mut runner) = (
        cluster.api().await,
        cluster.deprovision().await,
        cluster.runner().await,
    );
    let f = fleet(&mut api, &mut dep, CATALOG, true).await;
    let one = trigger(&mut dep, &f.nu1, false)
        .await
        .expect("trigger nu-1");
    let two = trigger(&mut dep, &f.nu2, false)
        .await
        .expect("trigger nu-2");
    // nu-2 was still active when nu-1's run was planned; nu-1 was being torn down by a
    // running action run when nu-2's was.
    assert_eq!(kept(&one.kept), [("shared-aws", vec!["tenant/nu-2"])]);
    assert_eq!(torn_down(&two.plan), ["nu-2", "shared-aws"]);
    assert_eq!(two.plan[1].shared_with, ["tenant/nu-1"]);
    let (one, two) = (
        one.action_run.expect("run").id,
        two.action_run.expect("run").id,
    );

    let claims = [
        claim(&mut runner, &f.org).await,
        claim(&mut runner, &f.org).await,
    ];
    let workspace = |c: &pb::ClaimRunResponse| c.run.as_ref().expect("a run").workspace_id.clone();
    let first_ws = if first == "nu-1" {
        &f.nu1.workspace_id
    } else {
        &f.nu2.workspace_id
    };
    let (a, b) = if workspace(&claims[0]) == *first_ws {
        (&claims[0], &claims[1])
    } else {
        (&claims[1], &claims[0])
    };
    succeed(&mut runner, a).await;
    assert!(
        runs(&mut api, &f.org, &f.account.workspace_id)
            .await
            .is_empty(),
        "no destroy run for the account while {first}'s neighbour is still being torn down"
    );
    let waiting = action_run(&mut dep, &two).await;
    assert_eq!(waiting.status, pb::ActionRunStatus::Running as i32);
    let account_step = waiting
        .steps
        .iter()
        .find(|s| s.entity_id == f.account.id)
        .expect("nu-2's run has a step for the account");
    assert_eq!(
        account_step.status,
        pb::ActionStepStatus::Pending as i32,
        "the account's step waits until both tenants are torn down"
    );
    succeed(&mut runner, b).await;

    let account_run = claim(&mut runner, &f.org).await;
    assert_eq!(workspace(&account_run), f.account.workspace_id);
    succeed(&mut runner, &account_run).await;
    for id in [&one, &two] {
        assert_eq!(
            action_run(&mut dep, id).await.status,
            pb::ActionRunStatus::Succeeded as i32
        );
    }
    let account_runs = runs(&mut api, &f.org, &f.account.workspace_id).await;
    assert_eq!(account_runs.len(), 1, "the account was destroyed once");
    let created = account_runs[0].create_time.expect("created");
    for tenant in [&f.nu1, &f.nu2] {
        let tenant_runs = runs(&mut api, &f.org, &tenant.workspace_id).await;
        assert_eq!(tenant_runs.len(), 1);
        assert_eq!(tenant_runs[0].status, pb::RunStatus::Succeeded as i32);
        let finished = tenant_runs[0].finish_time.expect("finished");
        assert!(
            (created.seconds, created.nanos) >= (finished.seconds, finished.nanos),
            "the account's destroy run came after {}'s succeeded",
            tenant.name
        );
    }
    assert_eq!(
        entity(&mut dep, &f.account.id).await.state,
        "decommissioned"
    );
    for edge in &f.edges {
        assert_eq!(
            edge_state(&mut dep, &edge.id).await,
            pb::RelationshipState::Removed
        );
    }
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn two_runs_destroy_the_account_once_when_the_first_tenant_finishes_first() {
    two_runs_over_both_tenants("nu-1").await;
}

#[tokio::test]
async fn two_runs_destroy_the_account_once_when_the_second_tenant_finishes_first() {
    two_runs_over_both_tenants("nu-2").await;
}

#[tokio::test]
async fn two_runs_fired_back_to_back_with_a_runner_destroy_the_account_once_after_both() {
    let cluster = Cluster::start(0).await;
    let (mut api, mut dep) = (cluster.api().await, cluster.deprovision().await);
    let f = fleet(&mut api, &mut dep, CATALOG, true).await;
    let ids = [
        trigger(&mut dep, &f.nu1, false).await.expect("nu-1"),
        trigger(&mut dep, &f.nu2, false).await.expect("nu-2"),
    ]
    .map(|t| t.action_run.expect("run").id);
    let _runner = Process::spawn_worker(
        "ebb",
        &[
            "runner",
            "--lifecycle-url",
            &cluster.lifecycle.url(),
            "--organization-id",
            &f.org,
            "--simulate",
            "succeed",
            "--simulate-duration",
            "200ms",
            "--claim-wait",
            "1s",
        ],
        &[],
        cluster.dbs.dir(),
    )
    .await
    .expect("ebb runner");
    eventually(WAIT, "both action runs succeeded", || {
        let mut dep = dep.clone();
        let ids = ids.clone();
        async move {
            for id in &ids {
                if action_run(&mut dep, id).await.status != pb::ActionRunStatus::Succeeded as i32 {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    let account_runs = runs(&mut api, &f.org, &f.account.workspace_id).await;
    assert_eq!(account_runs.len(), 1, "the account was destroyed once");
    let created = account_runs[0].create_time.expect("created");
    for tenant in [&f.nu1, &f.nu2] {
        let tenant_runs = runs(&mut api, &f.org, &tenant.workspace_id).await;
        assert_eq!(tenant_runs.len(), 1);
        let finished = tenant_runs[0].finish_time.expect("finished");
        assert!(
            (created.seconds, created.nanos) >= (finished.seconds, finished.nanos),
            "the account's destroy run came after {}'s succeeded",
            tenant.name
        );
    }
    assert_eq!(
        entity(&mut dep, &f.account.id).await.state,
        "decommissioned"
    );
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn two_tenants_finishing_at_the_same_moment_destroy_the_account_once() {
    let cluster = Cluster::start(0).await;
    let (mut api, mut dep, runner) = (
        cluster.api().await,
        cluster.deprovision().await,
        cluster.runner().await,
    );
    for round in 0..5 {
        let f = fleet(&mut api, &mut dep, CATALOG, true).await;
        let one = trigger(&mut dep, &f.nu1, false).await.expect("nu-1");
        let two = trigger(&mut dep, &f.nu2, false).await.expect("nu-2");
        let mut claimer = runner.clone();
        let claims = [
            claim(&mut claimer, &f.org).await,
            claim(&mut claimer, &f.org).await,
        ];
        // Both tenants' destroy runs report success at once, each on its own connection.
        let (mut r1, mut r2) = (runner.clone(), runner.clone());
        tokio::join!(succeed(&mut r1, &claims[0]), succeed(&mut r2, &claims[1]));
        let account_runs = runs(&mut api, &f.org, &f.account.workspace_id).await;
        assert_eq!(
            account_runs.len(),
            1,
            "round {round}: the account's destroy run is queued exactly once"
        );
        let c = claim(&mut claimer, &f.org).await;
        assert_eq!(
            c.run.as_ref().expect("the account's run").workspace_id,
            f.account.workspace_id
        );
        succeed(&mut claimer, &c).await;
        for run in [one, two] {
            let id = run.action_run.expect("run").id;
            assert_eq!(
                action_run(&mut dep, &id).await.status,
                pb::ActionRunStatus::Succeeded as i32,
                "round {round}"
            );
        }
        assert_eq!(
            entity(&mut dep, &f.account.id).await.state,
            "decommissioned"
        );
    }
    cluster.check_destroy_causes().await;
}

/// The step of the account in `run`.
fn account_step<'a>(run: &'a pb::ActionRun, f: &Fleet) -> &'a pb::ActionStep {
    run.steps
        .iter()
        .find(|s| s.entity_id == f.account.id)
        .expect("a step for the account")
}

#[tokio::test]
async fn a_tenant_that_comes_onto_the_account_after_the_plan_keeps_it_at_its_step() {
    let cluster = Cluster::start(0).await;
    let (mut api, mut dep, mut runner) = (
        cluster.api().await,
        cluster.deprovision().await,
        cluster.runner().await,
    );
    let f = fleet_of(&mut api, &mut dep, CATALOG, true, false).await;
    // The account itself runs on a network stack.
    let net = dep
        .create_entity(pb::CreateEntityRequest {
            organization_id: f.org.clone(),
            kind: "network_stack".into(),
            name: "core-net".into(),
            ..Default::default()
        })
        .await
        .expect("network stack")
        .into_inner()
        .entity
        .expect("entity");
    let beyond = relate(&mut dep, &f.account, &net).await;
    let triggered = trigger(&mut dep, &f.nu1, false)
        .await
        .expect("trigger nu-1");
    assert_eq!(
        torn_down(&triggered.plan),
        ["nu-1", "shared-aws", "core-net"],
        "nu-1 alone runs on the account when the plan is made"
    );
    let run_id = triggered.action_run.expect("run").id;
    let late = relate(&mut dep, &f.nu2, &f.account).await;
    let c = claim(&mut runner, &f.org).await;
    succeed(&mut runner, &c).await;

    let done = action_run(&mut dep, &run_id).await;
    assert_eq!(done.status, pb::ActionRunStatus::Succeeded as i32);
    let step = account_step(&done, &f);
    assert_eq!(step.status, pb::ActionStepStatus::Kept as i32);
    assert!(step.error.contains("tenant/nu-2"), "{}", step.error);
    assert!(step.run_id.is_empty(), "no destroy run for a kept step");
    assert!(
        runs(&mut api, &f.org, &f.account.workspace_id)
            .await
            .is_empty()
    );
    assert_eq!(entity(&mut dep, &f.account.id).await.state, "active");
    assert_eq!(
        edge_state(&mut dep, &f.edges[0].id).await,
        pb::RelationshipState::Removed
    );
    assert_eq!(
        edge_state(&mut dep, &late.id).await,
        pb::RelationshipState::Active
    );
    // What the kept account runs on is kept too, and the account still runs on it.
    let net_step = done
        .steps
        .iter()
        .find(|s| s.entity_id == net.id)
        .expect("a step for the network stack");
    assert_eq!(net_step.status, pb::ActionStepStatus::Kept as i32);
    assert!(
        net_step.error.contains("account/shared-aws"),
        "{}",
        net_step.error
    );
    assert_eq!(entity(&mut dep, &net.id).await.state, "active");
    assert_eq!(
        edge_state(&mut dep, &beyond.id).await,
        pb::RelationshipState::Active
    );
    let recorded = events(&mut api, &f.org, "deprovision.upstream_kept").await;
    assert_eq!(recorded.len(), 2);
    let decided_at = recorded[0]
        .data
        .as_ref()
        .and_then(|d| d.fields.get("decided_at"))
        .and_then(|v| match &v.kind {
            Some(prost_types::value::Kind::StringValue(s)) => Some(s.as_str()),
            _ => None,
        });
    assert_eq!(decided_at, Some("step"));
    cluster.check_destroy_causes().await;
}

/// nu-2's run waits on nu-1's for the account; nu-1's run then ends without tearing nu-1
/// down (`how`: its destroy run fails, or the action run is canceled). nu-1 is in use again,
/// so nu-2's run keeps the account and succeeds.
async fn the_other_run_ends_without_tearing_down(how: &str) {
    let cluster = Cluster::start(0).await;
    let (mut api, mut dep, mut runner) = (
        cluster.api().await,
        cluster.deprovision().await,
        cluster.runner().await,
    );
    let f = fleet(&mut api, &mut dep, CATALOG, true).await;
    let one = trigger(&mut dep, &f.nu1, false).await.expect("nu-1");
    let two = trigger(&mut dep, &f.nu2, false).await.expect("nu-2");
    assert_eq!(two.plan[1].shared_with, ["tenant/nu-1"]);
    let (one, two) = (
        one.action_run.expect("run").id,
        two.action_run.expect("run").id,
    );
    let claims = [
        claim(&mut runner, &f.org).await,
        claim(&mut runner, &f.org).await,
    ];
    let (nu1_run, nu2_run) =
        if claims[0].run.as_ref().expect("run").workspace_id == f.nu1.workspace_id {
            (&claims[0], &claims[1])
        } else {
            (&claims[1], &claims[0])
        };
    succeed(&mut runner, nu2_run).await;
    assert_eq!(
        action_run(&mut dep, &two).await.status,
        pb::ActionRunStatus::Running as i32,
        "waiting on nu-1's run"
    );
    match how {
        "fail" => complete(&mut runner, nu1_run, pb::RunOutcome::Failed).await,
        _ => {
            dep.cancel_action_run(pb::CancelActionRunRequest {
                action_run_id: one.clone(),
                ..Default::default()
            })
            .await
            .expect("cancel");
        }
    }
    let expected = if how == "fail" {
        pb::ActionRunStatus::Failed
    } else {
        pb::ActionRunStatus::Canceled
    };
    assert_eq!(action_run(&mut dep, &one).await.status, expected as i32);
    assert_eq!(entity(&mut dep, &f.nu1.id).await.state, "active");
    let done = action_run(&mut dep, &two).await;
    assert_eq!(done.status, pb::ActionRunStatus::Succeeded as i32);
    let step = account_step(&done, &f);
    assert_eq!(step.status, pb::ActionStepStatus::Kept as i32);
    assert!(step.error.contains("tenant/nu-1"), "{}", step.error);
    assert!(
        runs(&mut api, &f.org, &f.account.workspace_id)
            .await
            .is_empty(),
        "no destroy run for the account"
    );
    assert_eq!(entity(&mut dep, &f.account.id).await.state, "active");
    assert_eq!(
        edge_state(&mut dep, &f.edges[1].id).await,
        pb::RelationshipState::Removed,
        "nu-2's own edge"
    );
    assert_eq!(
        edge_state(&mut dep, &f.edges[0].id).await,
        pb::RelationshipState::Removing,
        "nu-1's stays removing for investigation"
    );
    cluster.check_destroy_causes().await;
}

#[tokio::test]
async fn a_waiting_upstream_is_kept_when_the_other_run_fails() {
    the_other_run_ends_without_tearing_down("fail").await;
}

#[tokio::test]
async fn a_waiting_upstream_is_kept_when_the_other_run_is_canceled() {
    the_other_run_ends_without_tearing_down("cancel").await;
}

#[tokio::test]
async fn the_database_refuses_a_second_running_step_for_one_entity() {
    let cluster = Cluster::start(0).await;
    let (mut api, mut dep) = (cluster.api().await, cluster.deprovision().await);
    let f = fleet(&mut api, &mut dep, CATALOG, true).await;
    // nu-1's step runs: its destroy run waits for a runner.
    let run = trigger(&mut dep, &f.nu1, false)
        .await
        .expect("trigger nu-1")
        .action_run
        .expect("run");
    assert_eq!(run.steps[0].status, pb::ActionStepStatus::Running as i32);

    // Other action runs with a step for the same entity.
    let sql = cluster.lifecycle_sql().await;
    let insert_run = |id: &str, entity: &str| {
        format!(
            "INSERT INTO action_runs (id, organization_id, entity_id, action, parameters, plan, status, actor, created_at) \
             VALUES ('{id}', '{org}', '{entity}', '{ACTION}', '{{}}', '{{\"nodes\":[],\"relationships\":[]}}', 'succeeded', 'test', 0)",
            org = f.org,
        )
    };
    let insert_step = |id: &str, run: &str, status: &str| {
        format!(
            "INSERT INTO action_steps (id, action_run_id, step_order, entity_id, waits_for, trigger_type, status) \
             VALUES ('{id}', '{run}', 0, '{nu1}', '[]', 'destroy_run', '{status}')",
            nu1 = f.nu1.id,
        )
    };
    for (run, entity) in [("other-run", &f.nu2.id), ("third-run", &f.account.id)] {
        sql.execute_unprepared(&insert_run(run, entity))
            .await
            .expect("an action run");
    }
    sql.execute_unprepared(&insert_step("other-step", "other-run", "pending"))
        .await
        .expect("a pending step beside a running one is fine");
    let refused = sql
        .execute_unprepared("UPDATE action_steps SET status = 'running' WHERE id = 'other-step'")
        .await;
    assert!(
        refused.is_err(),
        "two running teardown steps for one entity are refused"
    );
    let refused = sql
        .execute_unprepared(&insert_step("third-step", "third-run", "running"))
        .await;
    assert!(refused.is_err(), "also when inserted running");
    // `kept` is a status the database knows; an unknown one is not.
    sql.execute_unprepared("UPDATE action_steps SET status = 'kept' WHERE id = 'other-step'")
        .await
        .expect("kept is a step status");
    assert!(
        sql.execute_unprepared("UPDATE action_steps SET status = 'gone' WHERE id = 'other-step'")
            .await
            .is_err()
    );
    cluster.check_destroy_causes().await;
}
