//! A lifecycle service with scheduler replicas, configured for test time scales, and typed
//! clients to them.

use std::time::Duration;

use crate::Channel;
use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use ebb_proto::lifecycle::v1::runner_service_client::RunnerServiceClient;
use ebb_proto::lifecycle::v1::scheduling_service_client::SchedulingServiceClient;
use ebb_proto::scheduler::v1 as spb;
use ebb_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;

use crate::{Process, TestDatabases};

/// Settings that shrink hours to seconds.
pub fn fast_lifecycle_env() -> Vec<(&'static str, String)> {
    vec![
        ("EBB_MIN_INACTIVITY", "1s".into()),
        ("EBB_AUTO_DESTROY_RETRY_BACKOFF", "300ms".into()),
        ("EBB_RUN_LEASE_TTL", "2s".into()),
        // The tests' webhook receivers listen on loopback, which production refuses.
        ("EBB_EGRESS__ALLOW_LOOPBACK", "true".into()),
        ("EBB_DENIED_EVENTS_WINDOW", "1s".into()),
    ]
}

/// Scheduler settings for tests: short intervals and leases.
pub fn fast_scheduler_env(lifecycle_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("EBB_LIFECYCLE_URL", lifecycle_url.to_owned()),
        ("EBB_POLL_INTERVAL", "50ms".into()),
        ("EBB_LEASE_TTL", "2s".into()),
        ("EBB_AUTO_DESTROY_CHECK_INTERVAL", "200ms".into()),
        ("EBB_AUTO_DESTROY_REMINDERS_INTERVAL", "200ms".into()),
        ("EBB_RUN_LEASE_RESCUE_INTERVAL", "300ms".into()),
        ("EBB_GRACE_PERIOD_SWEEP_INTERVAL", "200ms".into()),
    ]
}

/// lifecycle-svc plus scheduler replicas, each on fresh databases.
pub struct Cluster {
    pub dbs: TestDatabases,
    pub lifecycle: Process,
    pub schedulers: Vec<Process>,
    pub lifecycle_db: String,
    pub scheduler_db: String,
}

impl Cluster {
    /// Starts lifecycle-svc and `schedulers` scheduler replicas sharing one database.
    pub async fn start(schedulers: usize) -> Self {
        Self::start_on(TestDatabases::new(), schedulers, &[]).await
    }

    /// Like [`Cluster::start`] on the given databases, with extra lifecycle variables.
    pub async fn start_on(
        mut dbs: TestDatabases,
        schedulers: usize,
        lifecycle_env: &[(&'static str, String)],
    ) -> Self {
        let lifecycle_db = dbs.create("lifecycle").await;
        let scheduler_db = dbs.create("scheduler").await;
        let mut env = fast_lifecycle_env();
        env.push(("EBB_DATABASE_URL", lifecycle_db.clone()));
        env.extend(lifecycle_env.iter().cloned());
        let lifecycle = Process::spawn("lifecycle-svc", &[], &env, dbs.dir())
            .await
            .expect("start lifecycle-svc");
        lifecycle.wait_serving("").await.expect("lifecycle serving");
        let mut cluster = Self {
            dbs,
            lifecycle,
            schedulers: Vec::new(),
            lifecycle_db,
            scheduler_db,
        };
        for _ in 0..schedulers {
            cluster.add_scheduler().await;
        }
        cluster
    }

    /// Starts one more scheduler replica.
    pub async fn add_scheduler(&mut self) {
        let mut env = fast_scheduler_env(&self.lifecycle.url());
        env.push(("EBB_DATABASE_URL", self.scheduler_db.clone()));
        env.push((
            "EBB_REPLICA_ID",
            format!("replica-{}", self.schedulers.len()),
        ));
        let p = Process::spawn("scheduler-svc", &[], &env, self.dbs.dir())
            .await
            .expect("start scheduler-svc");
        p.wait_serving("").await.expect("scheduler serving");
        self.schedulers.push(p);
    }

    /// A LifecycleService client.
    pub async fn api(&self) -> LifecycleServiceClient<Channel> {
        LifecycleServiceClient::new(self.lifecycle.channel().await)
    }

    /// A RunnerService client.
    pub async fn runner(&self) -> RunnerServiceClient<Channel> {
        RunnerServiceClient::new(self.lifecycle.channel().await)
    }

    /// A SchedulingService client.
    pub async fn scheduling(&self) -> SchedulingServiceClient<Channel> {
        SchedulingServiceClient::new(self.lifecycle.channel().await)
    }

    /// A DeprovisionService client.
    pub async fn deprovision(
        &self,
    ) -> ebb_proto::lifecycle::v1::deprovision_service_client::DeprovisionServiceClient<Channel>
    {
        ebb_proto::lifecycle::v1::deprovision_service_client::DeprovisionServiceClient::new(
            self.lifecycle.channel().await,
        )
    }

    /// Waits until every shard of the scheduler task `task` has run `rounds` times, from
    /// start to end, after this call, as ListTasks shows: whatever such a run would do about
    /// what is due at this call, it has done. Needs a scheduler replica.
    pub async fn scheduler_rounds(&self, task: &str, rounds: usize) {
        let scheduler = self.schedulers.first().expect("a scheduler replica");
        let mut admin = SchedulerServiceClient::new(scheduler.channel().await);
        // Per shard: the end of its last run seen, and how many more ends to wait for. A
        // shard leased now may have started its run before this call: that end does not
        // count. One not leased starts its next run after this call.
        let mut waiting: Vec<(Option<prost_types::Timestamp>, usize)> =
            task_shards(&mut admin, task)
                .await
                .into_iter()
                .map(|s| (s.last_run_time, rounds + usize::from(!s.owner.is_empty())))
                .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let shards = task_shards(&mut admin, task).await;
            assert_eq!(shards.len(), waiting.len(), "the shards of {task} changed");
            for ((last, left), shard) in waiting.iter_mut().zip(shards) {
                if shard.last_run_time != *last {
                    *last = shard.last_run_time;
                    *left = left.saturating_sub(1);
                }
            }
            if waiting.iter().all(|(_, left)| *left == 0) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {rounds} round(s) of the scheduler task {task}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A connection to lifecycle's database, for checks the API cannot make.
    pub async fn lifecycle_sql(&self) -> sea_orm::DatabaseConnection {
        sea_orm::Database::connect(self.lifecycle_db.as_str())
            .await
            .expect("connect to lifecycle's database")
    }

    /// The check every test that makes destroy runs ends with: each destroy run is traceable
    /// to its cause in the event trail — a `run.queued` event naming a structured actor and
    /// the fire key (auto-destroy), the action run and step (deprovisioning) or the caller's
    /// token (manual).
    pub async fn check_destroy_causes(&self) {
        use sea_orm::{ConnectionTrait, Statement};
        let sql = self.lifecycle_sql().await;
        let backend = sql.get_database_backend();
        let rows = sql
            .query_all_raw(Statement::from_string(
                backend,
                "SELECT r.id, r.source FROM runs r WHERE r.is_destroy AND NOT EXISTS ( \
                 SELECT 1 FROM outbox o WHERE o.type = 'run.queued' AND o.subject_id = r.id \
                 AND o.actor <> '' AND o.actor <> 'api' AND o.actor <> 'scheduler' \
                 AND (o.data LIKE '%\"fire_due_at\"%' \
                      OR (o.data LIKE '%\"action_run_id\"%' AND o.data LIKE '%\"step_id\"%') \
                      OR o.actor LIKE 'token:%'))",
            ))
            .await
            .expect("query destroy runs");
        let orphans: Vec<String> = rows
            .iter()
            .map(|r| {
                let id: String = r.try_get("", "id").unwrap_or_default();
                let source: String = r.try_get("", "source").unwrap_or_default();
                format!("{id} ({source})")
            })
            .collect();
        assert!(
            orphans.is_empty(),
            "destroy runs without a recorded cause: {orphans:?}"
        );
    }
}

/// The shards of the scheduler task `task`, in shard order.
async fn task_shards(
    admin: &mut SchedulerServiceClient<Channel>,
    task: &str,
) -> Vec<spb::TaskShard> {
    admin
        .list_tasks(spb::ListTasksRequest {})
        .await
        .expect("list scheduler tasks")
        .into_inner()
        .tasks
        .into_iter()
        .find(|t| t.name == task)
        .unwrap_or_else(|| panic!("no scheduler task {task}"))
        .shards
}

/// An organization, a project and a workspace in it.
pub struct Fixture {
    pub org: pb::Organization,
    pub project: pb::Project,
    pub workspace: pb::Workspace,
}

/// Creates an organization with `settings`, a project and one workspace named `ws`.
pub async fn fixture(
    api: &mut LifecycleServiceClient<Channel>,
    settings: Option<pb::OrganizationSettings>,
    ws: &str,
) -> Fixture {
    let org = api
        .create_organization(pb::CreateOrganizationRequest {
            name: format!("org-{}", uuid::Uuid::new_v4().simple()),
            settings,
            ..Default::default()
        })
        .await
        .expect("create organization")
        .into_inner()
        .organization
        .expect("organization");
    let project = api
        .create_project(pb::CreateProjectRequest {
            organization_id: org.id.clone(),
            name: "project".into(),
            ..Default::default()
        })
        .await
        .expect("create project")
        .into_inner()
        .project
        .expect("project");
    let workspace = create_workspace(api, &project.id, ws).await;
    Fixture {
        org,
        project,
        workspace,
    }
}

/// The workspace `id` as GetWorkspace answers it.
pub async fn workspace(api: &mut LifecycleServiceClient<Channel>, id: &str) -> pb::Workspace {
    api.get_workspace(pb::GetWorkspaceRequest {
        workspace_id: id.into(),
    })
    .await
    .expect("get workspace")
    .into_inner()
    .workspace
    .expect("workspace")
}

/// Creates a workspace in `project_id`.
pub async fn create_workspace(
    api: &mut LifecycleServiceClient<Channel>,
    project_id: &str,
    name: &str,
) -> pb::Workspace {
    api.create_workspace(pb::CreateWorkspaceRequest {
        project_id: project_id.to_owned(),
        name: name.to_owned(),
        working_directory: format!("/srv/{name}"),
        ..Default::default()
    })
    .await
    .expect("create workspace")
    .into_inner()
    .workspace
    .expect("workspace")
}

/// A protobuf timestamp `delta` from now.
pub fn from_now(delta: Duration) -> prost_types::Timestamp {
    let t = chrono::Utc::now() + chrono::Duration::from_std(delta).expect("delta");
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// Sleeps until the clock has passed `t`.
pub async fn sleep_until(t: &prost_types::Timestamp) {
    let at = chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        .expect("a representable timestamp");
    if let Ok(left) = (at - chrono::Utc::now()).to_std() {
        tokio::time::sleep(left + Duration::from_millis(1)).await;
    }
}

/// A protobuf duration of `seconds`.
pub fn secs(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

/// Polls `check` every 50ms until it returns `Some`, at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every outbox event of an organization, in order.
pub async fn events(
    api: &mut LifecycleServiceClient<Channel>,
    org: &str,
    event_type: &str,
) -> Vec<pb::OutboxEvent> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .list_outbox_events(pb::ListOutboxEventsRequest {
                organization_id: org.to_owned(),
                r#type: event_type.to_owned(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list outbox events")
            .into_inner();
        out.extend(page.events);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// Every run of an organization, newest first.
pub async fn runs(
    api: &mut LifecycleServiceClient<Channel>,
    org: &str,
    workspace: &str,
) -> Vec<pb::Run> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .list_runs(pb::ListRunsRequest {
                organization_id: org.to_owned(),
                workspace_id: workspace.to_owned(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list runs")
            .into_inner();
        out.extend(page.runs);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}
