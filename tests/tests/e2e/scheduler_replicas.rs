//! Several real scheduler-svc processes on PostgreSQL share the work without leader election;
//! one is SIGKILLed while it holds leases and nothing is lost or doubled.

use std::collections::HashSet;
use std::time::Duration;

use ebb_tests::cluster::{Cluster, eventually, fixture, from_now};
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::scheduler::v1 as spb;
use ebb_tests::proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use ebb_tests::{TestDatabases, require_postgres};
use sea_orm::FromQueryResult;

const WORKSPACES: usize = 2000;

#[derive(FromQueryResult)]
struct Counts {
    runs: i64,
    workspaces: i64,
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EBB_TEST_DATABASE_URL"]
async fn three_replicas_queue_every_due_workspace_exactly_once_despite_a_sigkill() {
    let pg =
        require_postgres("three_replicas_queue_every_due_workspace_exactly_once_despite_a_sigkill");
    let mut cluster = Cluster::start_on(TestDatabases::on(Some(pg)), 3, &[]).await;
    let mut api = cluster.api().await;
    let f = fixture(&mut api, None, "w-0").await;

    // Create the workspaces, then give them due times spread over one second, a few seconds
    // ahead.
    let mut ids = vec![f.workspace.id.clone()];
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in (1..WORKSPACES)
        .collect::<Vec<_>>()
        .chunks(WORKSPACES / 16 + 1)
    {
        let (mut api, project, chunk) = (api.clone(), f.project.id.clone(), chunk.to_vec());
        tasks.spawn(async move {
            let mut out = Vec::new();
            for i in chunk {
                let ws = api
                    .create_workspace(pb::CreateWorkspaceRequest {
                        project_id: project.clone(),
                        name: format!("w-{i}"),
                        ..Default::default()
                    })
                    .await
                    .expect("create")
                    .into_inner()
                    .workspace
                    .expect("ws");
                out.push(ws.id);
            }
            out
        });
    }
    while let Some(r) = tasks.join_next().await {
        ids.extend(r.expect("join"));
    }
    let lead = Duration::from_secs(4);
    for (n, chunk) in ids.chunks(WORKSPACES / 16 + 1).enumerate() {
        let (mut api, chunk) = (api.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for (i, id) in chunk.iter().enumerate() {
                let spread = Duration::from_millis(((n * 131 + i * 7) % 1000) as u64);
                api.set_auto_destroy(pb::SetAutoDestroyRequest {
                    workspace_id: id.clone(),
                    auto_destroy_at: Some(from_now(lead + spread)),
                    ..Default::default()
                })
                .await
                .expect("schedule");
            }
            Vec::new()
        });
    }
    while tasks.join_next().await.is_some() {}

    // SIGKILL a replica the moment it is seen holding a lease while the wave is due.
    let admin = SchedulerServiceClient::new(cluster.schedulers[0].channel().await);
    let victim = eventually(Duration::from_secs(30), "a replica holding a lease", || {
        let mut admin = admin.clone();
        async move {
            let tasks = admin
                .list_tasks(spb::ListTasksRequest {})
                .await
                .ok()?
                .into_inner()
                .tasks;
            tasks
                .iter()
                .filter(|t| t.name == "auto_destroy_check")
                .flat_map(|t| t.shards.iter())
                .find_map(|s| {
                    s.owner
                        .strip_prefix("replica-")
                        .and_then(|n| n.parse::<usize>().ok())
                })
                .filter(|n| *n > 0)
        }
    })
    .await;
    let killed = cluster.schedulers.remove(victim);
    killed.kill().await;

    let sql = cluster.lifecycle_sql().await;
    let counts = eventually(Duration::from_secs(60), "every workspace queued", || {
        let sql = sql.clone();
        async move {
            let c = Counts::find_by_statement(sea_orm::Statement::from_string(
                sql.get_database_backend(),
                "SELECT COUNT(*) AS runs, COUNT(DISTINCT workspace_id) AS workspaces FROM runs WHERE source = 'auto_destroy'",
            ))
            .one(&sql)
            .await
            .ok()??;
            (c.runs >= WORKSPACES as i64).then_some(c)
        }
    })
    .await;
    // The surviving replicas run a few more cycles: nothing may be added.
    cluster.scheduler_rounds("auto_destroy_check", 3).await;
    let again = Counts::find_by_statement(sea_orm::Statement::from_string(
        sql.get_database_backend(),
        "SELECT COUNT(*) AS runs, COUNT(DISTINCT workspace_id) AS workspaces FROM runs WHERE source = 'auto_destroy'",
    ))
    .one(&sql)
    .await
    .expect("count")
    .expect("row");
    assert_eq!(
        (counts.runs, counts.workspaces),
        (WORKSPACES as i64, WORKSPACES as i64)
    );
    assert_eq!(
        (again.runs, again.workspaces),
        (WORKSPACES as i64, WORKSPACES as i64),
        "no run was added twice"
    );

    let queued =
        ebb_tests::cluster::events(&mut api, &f.org.id, "workspace.auto_destroy.queued").await;
    let subjects: HashSet<_> = queued.iter().map(|e| e.subject_id.clone()).collect();
    assert_eq!(queued.len(), WORKSPACES, "one queued event per workspace");
    assert_eq!(subjects.len(), WORKSPACES);
    let run_events = ebb_tests::cluster::events(&mut api, &f.org.id, "run.queued").await;
    assert_eq!(run_events.len(), WORKSPACES);
    cluster.check_destroy_causes().await;
}
