//! Wide cascades torn down by several runners at once: siblings end concurrently, and the
//! counters the database keeps (which step waits for which, how many waits are left, what has
//! settled) start each parent once, after all of its dependents, and end the run exactly once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::deprovision::{Api, Dep, action_run, apply_catalog, claim, complete};
use crate::support::number;
use ebb_tests::cluster::{Cluster, create_workspace, fixture};
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::runners::instant_runner;
use sea_orm::{ConnectionTrait, TransactionTrait};

/// A tenant on 3 app stacks, each on 3 network stacks, each on 2 accounts: 31 entities, each
/// materialized by a workspace of its own. Returns the organization, the tenant and every
/// entity's workspace.
async fn tree(api: &mut Api, dep: &mut Dep) -> (String, String, HashMap<String, String>) {
    apply_catalog(dep).await;
    let f = fixture(api, None, "tree-root").await;
    let mut workspaces = HashMap::new();
    let entity = async |api: &mut Api, dep: &mut Dep, kind: &str, name: String| {
        let ws = create_workspace(api, &f.project.id, &format!("{name}-ws")).await;
        let e = dep
            .create_entity(pb::CreateEntityRequest {
                organization_id: f.org.id.clone(),
                kind: kind.into(),
                name,
                workspace_id: ws.id.clone(),
                ..Default::default()
            })
            .await
            .expect("create entity")
            .into_inner()
            .entity
            .expect("entity");
        (e.id, ws.id)
    };
    let (tenant, ws) = entity(api, dep, "tenant", "wide".into()).await;
    workspaces.insert(tenant.clone(), ws);
    let mut level = vec![tenant.clone()];
    for (kind, fanout) in [("app_stack", 3), ("network_stack", 3), ("account", 2)] {
        let mut next = Vec::new();
        for parent in &level {
            for i in 0..fanout {
                let (id, ws) = entity(api, dep, kind, format!("{kind}-{}-{i}", next.len())).await;
                dep.create_relationship(pb::CreateRelationshipRequest {
                    r#type: "runs_on".into(),
                    from_entity_id: parent.clone(),
                    to_entity_id: id.clone(),
                    ..Default::default()
                })
                .await
                .expect("relationship");
                workspaces.insert(id.clone(), ws);
                next.push(id);
            }
        }
        level = next;
    }
    (f.org.id, tenant, workspaces)
}

/// Triggers DeprovisionTenant on the 31-entity tree's `tenant`; the action run's id.
async fn trigger(dep: &mut Dep, tenant: &str) -> String {
    let triggered = dep
        .trigger_action(pb::TriggerActionRequest {
            entity_id: tenant.to_owned(),
            action: "DeprovisionTenant".into(),
            confirm_count: 31,
            ..Default::default()
        })
        .await
        .expect("trigger")
        .into_inner();
    assert_eq!(triggered.plan.len(), 31);
    triggered.action_run.expect("action run").id
}

/// The status of action run `id` once it no longer runs, or after 30 s.
async fn ended(dep: &mut Dep, id: &str) -> i32 {
    let mut status = pb::ActionRunStatus::Running as i32;
    for _ in 0..600 {
        status = action_run(dep, id).await.status;
        if status != pb::ActionRunStatus::Running as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    status
}

#[tokio::test]
async fn six_runners_tear_down_a_wide_tree_each_parent_after_its_dependents_and_once_claiming_one_or_several_runs_at_a_time()
 {
    let cluster = Cluster::start(0).await;
    let (mut api, mut dep) = (cluster.api().await, cluster.deprovision().await);
    let (org, tenant, workspaces) = tree(&mut api, &mut dep).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut runners = Vec::new();
    for i in 0..6 {
        runners.push(tokio::spawn(instant_runner(
            cluster.runner().await,
            org.clone(),
            format!("runner-{i}"),
            // Half of them claim several runs per call.
            if i % 2 == 0 { 1 } else { 4 },
            stop.clone(),
            Arc::new(AtomicUsize::new(0)),
        )));
    }
    let id = trigger(&mut dep, &tenant).await;
    let status = ended(&mut dep, &id).await;
    stop.store(true, Ordering::Relaxed);
    for r in runners {
        r.await.expect("runner");
    }
    assert_eq!(
        status,
        pb::ActionRunStatus::Succeeded as i32,
        "the cascade ends, and succeeds"
    );

    let sql = cluster.lifecycle_sql().await;
    // Every workspace was destroyed once, by one deprovisioning run.
    for ws in workspaces.values() {
        let runs = number(
            &sql,
            &format!("SELECT count(*) FROM runs WHERE workspace_id = '{ws}' AND source = 'deprovision' AND status = 'succeeded'"),
        )
        .await;
        assert_eq!(runs, 1, "workspace {ws} destroyed once");
    }
    assert_eq!(
        number(&sql, &format!("SELECT count(*) FROM action_steps WHERE action_run_id = '{id}' AND status = 'succeeded'")).await,
        31
    );
    // No step started before a step it waits for had ended.
    assert_eq!(
        number(
            &sql,
            "SELECT count(*) FROM action_steps s JOIN action_step_waits w ON w.step_id = s.id \
             JOIN action_steps p ON p.id = w.waits_for_step_id WHERE s.started_at < p.finished_at",
        )
        .await,
        0
    );
    assert_eq!(
        number(&sql, "SELECT count(*) FROM action_step_waits").await,
        30,
        "one wait per edge"
    );
    // Everything settled, counted down to zero and no further.
    assert_eq!(
        number(&sql, &format!("SELECT CAST(sum(waiting) + sum(open_dependents) AS BIGINT) FROM action_steps WHERE action_run_id = '{id}'")).await,
        0
    );
    assert_eq!(
        number(
            &sql,
            &format!("SELECT CAST(open_first_steps AS BIGINT) FROM action_runs WHERE id = '{id}'")
        )
        .await,
        0
    );
    let root = crate::deprovision::entity(&mut dep, &tenant).await;
    assert_eq!(root.state, "decommissioned");
    assert_eq!(
        number(&sql, &format!("SELECT count(*) FROM outbox WHERE type = 'action_run.succeeded' AND subject_id = '{id}'")).await,
        1,
        "the run ended once"
    );

    // The database refuses counters below zero, a step waiting for itself, and a wait on a
    // step that does not exist.
    let refused = [
        format!("UPDATE action_steps SET waiting = waiting - 1 WHERE action_run_id = '{id}'"),
        format!("UPDATE action_steps SET open_dependents = -1 WHERE action_run_id = '{id}'"),
        format!("UPDATE action_runs SET open_first_steps = open_first_steps - 1 WHERE id = '{id}'"),
        format!(
            "INSERT INTO action_step_waits (step_id, waits_for_step_id) \
             SELECT id, id FROM action_steps WHERE action_run_id = '{id}' LIMIT 1"
        ),
        format!(
            "INSERT INTO action_step_waits (step_id, waits_for_step_id) \
             SELECT id, 'no-such-step' FROM action_steps WHERE action_run_id = '{id}' LIMIT 1"
        ),
    ];
    for statement in refused {
        assert!(
            sql.execute_unprepared(&statement).await.is_err(),
            "the database refuses: {statement}"
        );
    }
    cluster.check_destroy_causes().await;
}

/// A step whose destroy run ends while another transaction holds the step it waited for does
/// not wait for that transaction: it leaves the settling queued, and the settler applies it
/// once the row is free, so the run still ends, once.
#[tokio::test]
#[ignore = "needs PostgreSQL: set EBB_TEST_DATABASE_URL"]
async fn a_step_ending_beside_a_held_upstream_queues_its_settling_on_postgres() {
    let server = ebb_tests::require_postgres(
        "a_step_ending_beside_a_held_upstream_queues_its_settling_on_postgres",
    );
    let cluster = Cluster::start_on(ebb_tests::TestDatabases::on(Some(server)), 0, &[]).await;
    let (mut api, mut dep) = (cluster.api().await, cluster.deprovision().await);
    let (org, tenant, _) = tree(&mut api, &mut dep).await;
    let mut runner = cluster.runner().await;
    let id = trigger(&mut dep, &tenant).await;
    let sql = cluster.lifecycle_sql().await;
    let mut held_once = false;
    for _ in 0..31 {
        let c = claim(&mut runner, &org).await;
        let run_id = c.run.as_ref().expect("a destroy run").id.clone();
        let open_dependents = number(
            &sql,
            &format!(
                "SELECT CAST(open_dependents AS BIGINT) FROM action_steps WHERE run_id = '{run_id}'"
            ),
        )
        .await;
        if held_once || open_dependents != 0 {
            complete(&mut runner, &c, true).await;
            continue;
        }
        // The first step nothing waits for: hold the step it waited for while it ends.
        held_once = true;
        let holder = sql.begin().await.expect("begin");
        holder
            .execute_unprepared(&format!(
                "SELECT s.id FROM action_steps s JOIN action_step_waits w ON w.waits_for_step_id = s.id \
                 JOIN action_steps l ON l.id = w.step_id WHERE l.run_id = '{run_id}' FOR UPDATE OF s"
            ))
            .await
            .expect("hold the upstream step");
        tokio::time::timeout(Duration::from_secs(10), complete(&mut runner, &c, true))
            .await
            .expect("the run's end does not wait for the held row");
        assert_eq!(
            number(&sql, "SELECT count(*) FROM action_step_settles").await,
            1,
            "its settling is queued"
        );
        holder.commit().await.expect("release");
    }
    assert!(held_once, "a step nothing waits for ended");
    assert_eq!(
        ended(&mut dep, &id).await,
        pb::ActionRunStatus::Succeeded as i32
    );
    assert_eq!(
        number(&sql, "SELECT count(*) FROM action_step_settles").await,
        0,
        "every queued settling applied"
    );
    assert_eq!(
        number(&sql, &format!("SELECT CAST(sum(waiting) + sum(open_dependents) AS BIGINT) FROM action_steps WHERE action_run_id = '{id}'")).await,
        0
    );
    assert_eq!(
        number(&sql, &format!("SELECT count(*) FROM outbox WHERE type = 'action_run.succeeded' AND subject_id = '{id}'")).await,
        1,
        "the run ended once"
    );
}
