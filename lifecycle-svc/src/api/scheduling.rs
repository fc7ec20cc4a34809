//! `ebb.lifecycle.v1.SchedulingService`: the scheduler's idempotent calls.

use ebb_common::error::Violations;
use ebb_common::time::{from_timestamp, to_timestamp};
use ebb_common::{Error, Result};
use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::scheduling_service_server::SchedulingService;
use tonic::{Request, Response, Status};

use super::validate as check;
use crate::actor::{self, Actor};
use crate::auto_destroy::queue::Decision;
use crate::auto_destroy::{queue, reminders};
use crate::core::Lifecycle;
use crate::deprovision::{relationships, scheduled, steps};
use crate::finish;
use crate::timing;
use crate::timing::due::{self, FireKey};

/// The most fire keys one queue call takes.
pub const MAX_BATCH: usize = 5000;

/// SchedulingService over the domain.
#[derive(Clone)]
pub struct SchedulingApi {
    core: Lifecycle,
}

impl SchedulingApi {
    /// Serves `core`.
    pub fn new(core: Lifecycle) -> Self {
        Self { core }
    }
}

fn shard(v: &mut Violations, shard: i32, count: i32) {
    if !(1..=1024).contains(&count) {
        v.add("shard_count", "must be between 1 and 1024");
    } else if !(0..count).contains(&shard) {
        v.add("shard", "must be between 0 and shard_count - 1");
    }
}

fn limit(v: &mut Violations, limit: i32) -> u64 {
    if !(1..=MAX_BATCH as i32).contains(&limit) {
        v.add("limit", format!("must be between 1 and {MAX_BATCH}"));
    }
    limit.max(1) as u64
}

fn fire_key(v: &mut Violations, field: &str, k: &pb::FireKey) -> Option<FireKey> {
    let id = check::id(v, &format!("{field}.workspace_id"), &k.workspace_id);
    let due = match &k.due_time {
        None => {
            v.add(format!("{field}.due_time"), "is required");
            return None;
        }
        Some(ts) => match from_timestamp(ts) {
            Ok(ms) => ms,
            Err(e) => {
                v.add(format!("{field}.due_time"), e);
                return None;
            }
        },
    };
    Some(FireKey {
        subject_id: id,
        due_at: due,
    })
}

/// The page of a workspace sweep a request asks for: its limit, and the key it resumes after.
fn workspace_page(
    v: &mut Violations,
    (shard_, count): (i32, i32),
    limit_: i32,
    after: Option<&pb::FireKey>,
) -> (u64, Option<FireKey>) {
    shard(v, shard_, count);
    let limit = limit(v, limit_);
    (limit, after.and_then(|k| fire_key(v, "after", k)))
}

/// How long ago the oldest of `due` fell due at `now` (scheduler lag); 0 for none.
fn oldest_age_ms(due: impl Iterator<Item = i64>, now: i64) -> i64 {
    due.min().map_or(0, |t| (now - t).max(0))
}

fn scheduled_key(v: &mut Violations, field: &str, k: &pb::FireKey) -> Option<(String, i64)> {
    let id = check::id(
        v,
        &format!("{field}.scheduled_action_id"),
        &k.scheduled_action_id,
    );
    match k.due_time.as_ref().map(from_timestamp) {
        Some(Ok(ms)) => Some((id, ms)),
        Some(Err(e)) => {
            v.add(format!("{field}.due_time"), e);
            None
        }
        None => {
            v.add(format!("{field}.due_time"), "is required");
            None
        }
    }
}

fn to_pb(k: &FireKey) -> pb::FireKey {
    pb::FireKey {
        workspace_id: k.subject_id.clone(),
        due_time: Some(to_timestamp(k.due_at)),
        scheduled_action_id: String::new(),
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

/// One decision as the API reports it.
fn result_pb((k, d): (FireKey, Decision)) -> pb::QueueItemResult {
    let (decision, run_id, reason) = match d {
        Decision::Queued { run_id } => (pb::QueueDecision::Queued, run_id, String::new()),
        Decision::Deferred { reason } => (pb::QueueDecision::Deferred, String::new(), reason),
        Decision::Stale { reason } => (pb::QueueDecision::Stale, String::new(), reason),
        Decision::SkippedProtected => (
            pb::QueueDecision::SkippedProtected,
            String::new(),
            "protected".into(),
        ),
        Decision::Skipped { reason } => (pb::QueueDecision::Skipped, String::new(), reason),
        Decision::WaitingForWindow { opens_at } => (
            pb::QueueDecision::WaitingForWindow,
            String::new(),
            match opens_at {
                Some(at) => format!(
                    "outside every destroy window; waits for the opening at {}",
                    ebb_common::time::rfc3339(at)
                ),
                None => "outside every destroy window; none will open".into(),
            },
        ),
    };
    pb::QueueItemResult {
        fire_key: Some(to_pb(&k)),
        decision: decision as i32,
        run_id,
        reason,
    }
}

impl SchedulingApi {
    async fn find_due_workspaces(
        &self,
        request: Request<pb::FindDueWorkspacesRequest>,
    ) -> Reply<pb::FindDueWorkspacesResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let (limit, after) = workspace_page(
            &mut v,
            (req.shard, req.shard_count),
            req.limit,
            req.after.as_ref(),
        );
        v.finish()?;
        let now = self.core.now();
        let due = due::find_due(
            &self.core.db.conn,
            &timing::WORKSPACES,
            req.shard,
            req.shard_count,
            limit,
            after,
            now,
        )
        .await?;
        let oldest = oldest_age_ms(due.iter().map(|k| k.due_at), now);
        Ok(Response::new(pb::FindDueWorkspacesResponse {
            due: due.iter().map(to_pb).collect(),
            oldest_due_age_ms: oldest,
        }))
    }

    async fn queue_auto_destroy_runs(
        &self,
        request: Request<pb::QueueAutoDestroyRunsRequest>,
    ) -> Reply<pb::QueueAutoDestroyRunsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        if req.fire_keys.len() > MAX_BATCH {
            v.add("fire_keys", format!("at most {MAX_BATCH} per call"));
        }
        let keys: Vec<FireKey> = req
            .fire_keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| fire_key(&mut v, &format!("fire_keys[{i}]"), k))
            .collect();
        v.finish()?;
        let results = self.queue(&keys).await?;
        self.wake_claims_if_queued(&results);
        let results = results.into_iter().map(result_pb).collect();
        Ok(Response::new(pb::QueueAutoDestroyRunsResponse { results }))
    }

    async fn queue_due_workspaces(
        &self,
        request: Request<pb::QueueDueWorkspacesRequest>,
    ) -> Reply<pb::QueueDueWorkspacesResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let (limit, after) = workspace_page(
            &mut v,
            (req.shard, req.shard_count),
            req.limit,
            req.after.as_ref(),
        );
        v.finish()?;
        let now = self.core.now();
        let txn = self.core.begin().await?;
        let page = queue::queue_due(&txn, (req.shard, req.shard_count), limit, after, now).await?;
        txn.commit().await.map_err(Error::from)?;
        self.wake_claims_if_queued(&page.results);
        let oldest = oldest_age_ms(page.results.iter().map(|(k, _)| k.due_at), now);
        Ok(Response::new(pb::QueueDueWorkspacesResponse {
            last: page.last.as_ref().map(to_pb),
            oldest_due_age_ms: oldest,
            results: page.results.into_iter().map(result_pb).collect(),
        }))
    }

    async fn send_due_reminders(
        &self,
        request: Request<pb::SendDueRemindersRequest>,
    ) -> Reply<pb::SendDueRemindersResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        shard(&mut v, req.shard, req.shard_count);
        let limit = limit(&mut v, req.limit);
        v.finish()?;
        let txn = self.core.begin().await?;
        let sent = reminders::send_due_reminders(
            &txn,
            req.shard,
            req.shard_count,
            limit,
            self.core.snooze_links.as_deref(),
            self.core.now(),
        )
        .await?;
        let sent = sent
            + scheduled::send_scheduled_reminders(
                &txn,
                req.shard,
                req.shard_count,
                limit,
                self.core.now(),
            )
            .await?;
        // The same round cancels auto-destroy runs left unapproved past their deadline.
        crate::approval::expire_due(
            &txn,
            req.shard,
            req.shard_count,
            self.core.now(),
            &crate::finish::Policy::of(&self.core),
        )
        .await?;
        txn.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::SendDueRemindersResponse {
            sent: sent as i32,
        }))
    }

    async fn rescue_expired_run_leases(
        &self,
        request: Request<pb::RescueExpiredRunLeasesRequest>,
    ) -> Reply<pb::RescueExpiredRunLeasesResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = limit(&mut v, req.limit);
        if !(1..=100).contains(&req.max_attempts) {
            v.add("max_attempts", "must be between 1 and 100");
        }
        v.finish()?;
        let policy = finish::Policy::of(&self.core);
        let txn = self.core.begin().await?;
        let (requeued, errored) = finish::rescue_expired_run_leases(
            &txn,
            limit,
            req.max_attempts,
            self.core.now(),
            &policy,
        )
        .await?;
        txn.commit().await.map_err(Error::from)?;
        if requeued > 0 {
            self.core.runs_queued.notify_waiters();
        }
        Ok(Response::new(pb::RescueExpiredRunLeasesResponse {
            requeued: requeued as i32,
            errored: errored as i32,
        }))
    }

    async fn find_due_scheduled_actions(
        &self,
        request: Request<pb::FindDueScheduledActionsRequest>,
    ) -> Reply<pb::FindDueScheduledActionsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        shard(&mut v, req.shard, req.shard_count);
        let limit = limit(&mut v, req.limit);
        let after = req
            .after
            .as_ref()
            .and_then(|k| scheduled_key(&mut v, "after", k))
            .map(|(subject_id, due_at)| FireKey { subject_id, due_at });
        v.finish()?;
        let now = self.core.now();
        let due = due::find_due(
            &self.core.db.conn,
            &timing::SCHEDULED_ACTIONS,
            req.shard,
            req.shard_count,
            limit,
            after,
            now,
        )
        .await?;
        let oldest = oldest_age_ms(due.iter().map(|k| k.due_at), now);
        Ok(Response::new(pb::FindDueScheduledActionsResponse {
            due: due
                .iter()
                .map(|k| pb::FireKey {
                    workspace_id: String::new(),
                    due_time: Some(to_timestamp(k.due_at)),
                    scheduled_action_id: k.subject_id.clone(),
                })
                .collect(),
            oldest_due_age_ms: oldest,
        }))
    }

    async fn fire_scheduled_actions(
        &self,
        request: Request<pb::FireScheduledActionsRequest>,
    ) -> Reply<pb::FireScheduledActionsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        if req.fire_keys.len() > MAX_BATCH {
            v.add("fire_keys", format!("at most {MAX_BATCH} per call"));
        }
        let keys: Vec<(String, i64)> = req
            .fire_keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| scheduled_key(&mut v, &format!("fire_keys[{i}]"), k))
            .collect();
        v.finish()?;
        let engine = steps::Engine::of(&self.core);
        let mut results = Vec::with_capacity(keys.len());
        // Each scheduled action fires in its own transaction: one that cannot fire does not
        // hold back the others.
        for (id, due) in keys {
            let txn = self.core.begin().await?;
            let (decision, _) =
                scheduled::fire_scheduled(&txn, &engine, &id, due, self.core.now()).await?;
            txn.commit().await.map_err(Error::from)?;
            let (d, run_id, reason) = match decision {
                scheduled::FireDecision::Fired { action_run_id } => {
                    (pb::QueueDecision::Queued, action_run_id, String::new())
                }
                scheduled::FireDecision::Stale(r) => (pb::QueueDecision::Stale, String::new(), r),
                scheduled::FireDecision::Failed(r) => (pb::QueueDecision::Stale, String::new(), r),
                scheduled::FireDecision::WaitingForWindow { opens_at } => (
                    pb::QueueDecision::WaitingForWindow,
                    String::new(),
                    opens_at.map_or(
                        "outside every destroy window; none will open".into(),
                        |at| {
                            format!(
                                "outside every destroy window; fires at the opening at {}",
                                ebb_common::time::rfc3339(at)
                            )
                        },
                    ),
                ),
            };
            results.push(pb::QueueItemResult {
                fire_key: Some(pb::FireKey {
                    workspace_id: String::new(),
                    due_time: Some(to_timestamp(due)),
                    scheduled_action_id: id,
                }),
                decision: d as i32,
                run_id,
                reason,
            });
        }
        self.core.runs_queued.notify_waiters();
        Ok(Response::new(pb::FireScheduledActionsResponse { results }))
    }

    async fn finalize_elapsed_grace_periods(
        &self,
        request: Request<pb::FinalizeElapsedGracePeriodsRequest>,
    ) -> Reply<pb::FinalizeElapsedGracePeriodsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = limit(&mut v, req.limit);
        v.finish()?;
        let txn = self.core.begin().await?;
        let n = relationships::finalize_elapsed(&txn, limit, self.core.now()).await?;
        txn.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::FinalizeElapsedGracePeriodsResponse {
            finalized: n as i32,
        }))
    }

    async fn time_out_action_steps(
        &self,
        request: Request<pb::TimeOutActionStepsRequest>,
    ) -> Reply<pb::TimeOutActionStepsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = limit(&mut v, req.limit);
        v.finish()?;
        let policy = finish::Policy::of(&self.core);
        let txn = self.core.begin().await?;
        let n = steps::time_out_steps(&txn, &policy.engine, limit, self.core.now()).await?;
        txn.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::TimeOutActionStepsResponse {
            timed_out: n as i32,
        }))
    }
}

/// Every call runs as its caller: the scheduler task, replica and shard (see `crate::actor`).
#[tonic::async_trait]
impl SchedulingService for SchedulingApi {
    async fn find_due_workspaces(
        &self,
        request: Request<pb::FindDueWorkspacesRequest>,
    ) -> Reply<pb::FindDueWorkspacesResponse> {
        let actor = Actor::of(&request);
        actor::acting(actor, SchedulingApi::find_due_workspaces(self, request)).await
    }

    async fn queue_auto_destroy_runs(
        &self,
        request: Request<pb::QueueAutoDestroyRunsRequest>,
    ) -> Reply<pb::QueueAutoDestroyRunsResponse> {
        let actor = Actor::of(&request);
        actor::acting(actor, SchedulingApi::queue_auto_destroy_runs(self, request)).await
    }

    async fn queue_due_workspaces(
        &self,
        request: Request<pb::QueueDueWorkspacesRequest>,
    ) -> Reply<pb::QueueDueWorkspacesResponse> {
        let actor = Actor::of(&request);
        actor::acting(actor, SchedulingApi::queue_due_workspaces(self, request)).await
    }

    async fn send_due_reminders(
        &self,
        request: Request<pb::SendDueRemindersRequest>,
    ) -> Reply<pb::SendDueRemindersResponse> {
        let actor = Actor::of(&request);
        actor::acting(actor, SchedulingApi::send_due_reminders(self, request)).await
    }

    async fn rescue_expired_run_leases(
        &self,
        request: Request<pb::RescueExpiredRunLeasesRequest>,
    ) -> Reply<pb::RescueExpiredRunLeasesResponse> {
        let actor = Actor::of(&request);
        actor::acting(
            actor,
            SchedulingApi::rescue_expired_run_leases(self, request),
        )
        .await
    }

    async fn find_due_scheduled_actions(
        &self,
        request: Request<pb::FindDueScheduledActionsRequest>,
    ) -> Reply<pb::FindDueScheduledActionsResponse> {
        let actor = Actor::of(&request);
        actor::acting(
            actor,
            SchedulingApi::find_due_scheduled_actions(self, request),
        )
        .await
    }

    async fn fire_scheduled_actions(
        &self,
        request: Request<pb::FireScheduledActionsRequest>,
    ) -> Reply<pb::FireScheduledActionsResponse> {
        let actor = Actor::of(&request);
        actor::acting(actor, SchedulingApi::fire_scheduled_actions(self, request)).await
    }

    async fn finalize_elapsed_grace_periods(
        &self,
        request: Request<pb::FinalizeElapsedGracePeriodsRequest>,
    ) -> Reply<pb::FinalizeElapsedGracePeriodsResponse> {
        let actor = Actor::of(&request);
        actor::acting(
            actor,
            SchedulingApi::finalize_elapsed_grace_periods(self, request),
        )
        .await
    }

    async fn time_out_action_steps(
        &self,
        request: Request<pb::TimeOutActionStepsRequest>,
    ) -> Reply<pb::TimeOutActionStepsResponse> {
        let actor = Actor::of(&request);
        actor::acting(actor, SchedulingApi::time_out_action_steps(self, request)).await
    }
}

impl SchedulingApi {
    /// Wakes the claims waiting for a run when any of `results` queued one.
    fn wake_claims_if_queued(&self, results: &[(FireKey, Decision)]) {
        if results
            .iter()
            .any(|(_, d)| matches!(d, Decision::Queued { .. }))
        {
            self.core.runs_queued.notify_waiters();
        }
    }

    async fn queue(&self, keys: &[FireKey]) -> Result<Vec<(FireKey, Decision)>> {
        let txn = self.core.begin().await?;
        let results = queue::queue_auto_destroy_runs(&txn, keys, self.core.now()).await?;
        txn.commit().await?;
        Ok(results)
    }
}
