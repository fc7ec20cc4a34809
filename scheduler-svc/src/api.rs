//! `ebb.scheduler.v1.SchedulerService`: operators list tasks, run one now, pause and resume.

use std::collections::BTreeMap;

use ebb_common::Error;
use ebb_common::time::{to_duration, to_timestamp, to_timestamp_opt};
use ebb_proto::scheduler::v1 as pb;
use ebb_proto::scheduler::v1::scheduler_service_server::SchedulerService;
use tonic::{Request, Response, Status};

use crate::leases::Leases;
use crate::tasks::TaskSpec;

/// SchedulerService over the lease table.
pub struct SchedulerApi {
    leases: Leases,
    specs: Vec<TaskSpec>,
}

impl SchedulerApi {
    /// Serves `leases` for the tasks in `specs`.
    pub fn new(leases: Leases, specs: Vec<TaskSpec>) -> Self {
        Self { leases, specs }
    }

    fn known(&self, name: &str) -> Result<(), Status> {
        if name.is_empty() {
            return Err(Error::invalid("name", "is required").into());
        }
        if !self.specs.iter().any(|s| s.name == name) {
            let names: Vec<_> = self.specs.iter().map(|s| s.name).collect();
            return Err(Error::invalid(
                "name",
                format!("unknown task; known tasks: {}", names.join(", ")),
            )
            .into());
        }
        Ok(())
    }

    async fn tasks(&self) -> Result<Vec<pb::Task>, Status> {
        let rows = self.leases.list().await?;
        let mut tasks: BTreeMap<String, pb::Task> = BTreeMap::new();
        for r in rows {
            let t = tasks.entry(r.task.clone()).or_insert_with(|| pb::Task {
                name: r.task.clone(),
                interval: Some(to_duration(r.interval_ms)),
                paused: r.paused,
                shards: Vec::new(),
            });
            t.paused |= r.paused;
            t.shards.push(pb::TaskShard {
                shard: r.shard,
                owner: r.owner.unwrap_or_default(),
                lease_expire_time: to_timestamp_opt(r.lease_expires_at),
                epoch: r.epoch,
                next_run_time: Some(to_timestamp(r.next_run_at)),
                last_run_time: to_timestamp_opt(r.last_run_at),
                last_outcome: r.last_outcome,
                last_duration: r.last_duration_ms.map(to_duration),
                takeovers: r.takeovers,
            });
        }
        Ok(tasks.into_values().collect())
    }

    async fn task(&self, name: &str) -> Result<pb::Task, Status> {
        self.tasks()
            .await?
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::not_found("task", name).into())
    }
}

#[tonic::async_trait]
impl SchedulerService for SchedulerApi {
    async fn list_tasks(
        &self,
        _request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        Ok(Response::new(pb::ListTasksResponse {
            tasks: self.tasks().await?,
        }))
    }

    async fn run_task_now(
        &self,
        request: Request<pb::RunTaskNowRequest>,
    ) -> Result<Response<pb::RunTaskNowResponse>, Status> {
        let req = request.into_inner();
        self.known(&req.name)?;
        self.leases.run_now(&req.name).await?;
        Ok(Response::new(pb::RunTaskNowResponse {
            task: Some(self.task(&req.name).await?),
        }))
    }

    async fn pause_task(
        &self,
        request: Request<pb::PauseTaskRequest>,
    ) -> Result<Response<pb::PauseTaskResponse>, Status> {
        let req = request.into_inner();
        self.known(&req.name)?;
        self.leases.set_paused(&req.name, true).await?;
        Ok(Response::new(pb::PauseTaskResponse {
            task: Some(self.task(&req.name).await?),
        }))
    }

    async fn resume_task(
        &self,
        request: Request<pb::ResumeTaskRequest>,
    ) -> Result<Response<pb::ResumeTaskResponse>, Status> {
        let req = request.into_inner();
        self.known(&req.name)?;
        self.leases.set_paused(&req.name, false).await?;
        Ok(Response::new(pb::ResumeTaskResponse {
            task: Some(self.task(&req.name).await?),
        }))
    }
}
