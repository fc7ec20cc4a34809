//! The periodic tasks and what one run of each does. Every call they make to lifecycle is
//! idempotent, so a run repeated after a lost lease has no double effect.

use std::time::Duration;

use ebb_common::client::TracedChannel;
use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::scheduling_service_client::SchedulingServiceClient;

use crate::config::Config;

// A run that found something to do has its trace exported (runs start deferred traces).
use ebb_common::telemetry::mark_work;

/// Finds due workspaces and queues their destroy runs.
pub const AUTO_DESTROY_CHECK: &str = "auto_destroy_check";
/// Sends reminders before scheduled destroys.
pub const AUTO_DESTROY_REMINDERS: &str = "auto_destroy_reminders";
/// Requeues or errors runs whose runner stopped heartbeating.
pub const RUN_LEASE_RESCUE: &str = "run_lease_rescue";
/// Fires actions scheduled on entities, with the same fire keys as auto-destroy.
pub const SCHEDULED_ACTIONS: &str = "scheduled_actions";
/// Finalizes relationships whose grace period elapsed.
pub const GRACE_PERIOD_SWEEP: &str = "grace_period_sweep";
/// Fails action steps past their deadline.
pub const ACTION_STEP_TIMEOUTS: &str = "action_step_timeouts";

/// Pages one task run may walk before yielding its lease.
const MAX_PAGES: usize = 200;

/// A task's name, shard count and interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSpec {
    pub name: &'static str,
    pub shards: i32,
    pub interval: Duration,
}

/// The tasks this scheduler runs.
pub fn specs(config: &Config) -> Vec<TaskSpec> {
    let shards = config.shard_count as i32;
    vec![
        TaskSpec {
            name: AUTO_DESTROY_CHECK,
            shards,
            interval: config.auto_destroy_check_interval,
        },
        TaskSpec {
            name: AUTO_DESTROY_REMINDERS,
            shards,
            interval: config.auto_destroy_reminders_interval,
        },
        TaskSpec {
            name: RUN_LEASE_RESCUE,
            shards: 1,
            interval: config.run_lease_rescue_interval,
        },
        TaskSpec {
            name: SCHEDULED_ACTIONS,
            shards,
            interval: config.auto_destroy_check_interval,
        },
        TaskSpec {
            name: GRACE_PERIOD_SWEEP,
            shards: 1,
            interval: config.grace_period_sweep_interval,
        },
        TaskSpec {
            name: ACTION_STEP_TIMEOUTS,
            shards: 1,
            interval: config.run_lease_rescue_interval,
        },
    ]
}

/// What one run of a task did, for the lease row's `last_outcome`.
pub type Outcome = Result<String, String>;

/// Who makes a task's calls: sent with each of them, so lifecycle records the task, shard
/// and replica as the actor of what they change.
#[derive(Debug, Clone)]
pub struct Who {
    pub task: String,
    pub shard: i32,
    pub replica: String,
}

impl Who {
    /// `message` as a request carrying who sends it.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let meta = request.metadata_mut();
        if let Ok(v) = format!("{}/{}", self.task, self.shard).parse() {
            meta.insert("x-ebb-scheduler-task", v);
        }
        if let Ok(v) = self.replica.parse() {
            meta.insert("x-ebb-scheduler-replica", v);
        }
        request
    }
}

/// Runs `task` for `shard` once, on behalf of replica `replica`.
pub async fn run(
    lifecycle: &mut SchedulingServiceClient<TracedChannel>,
    config: &Config,
    task: &str,
    shard: i32,
    replica: &str,
) -> Outcome {
    let who = &Who {
        task: task.to_owned(),
        shard,
        replica: replica.to_owned(),
    };
    let shard_count = config.shard_count as i32;
    let batch = config.batch_size as i32;
    match task {
        AUTO_DESTROY_CHECK => queue_due_workspaces(lifecycle, who, shard_count, batch).await,
        SCHEDULED_ACTIONS => {
            fire_due(lifecycle, who, Due::ScheduledActions, shard_count, batch).await
        }
        GRACE_PERIOD_SWEEP => {
            let mut finalized = 0;
            for _ in 0..MAX_PAGES {
                let r = lifecycle
                    .finalize_elapsed_grace_periods(
                        who.request(pb::FinalizeElapsedGracePeriodsRequest { limit: batch }),
                    )
                    .await
                    .map_err(|s| format!("finalize elapsed grace periods: {}", s.message()))?
                    .into_inner();
                finalized += r.finalized;
                if r.finalized < batch {
                    break;
                }
            }
            if finalized > 0 {
                mark_work();
                tracing::info!(finalized, "grace periods finalized");
            }
            Ok(format!("finalized {finalized}"))
        }
        ACTION_STEP_TIMEOUTS => {
            let r = lifecycle
                .time_out_action_steps(who.request(pb::TimeOutActionStepsRequest { limit: batch }))
                .await
                .map_err(|s| format!("time out action steps: {}", s.message()))?
                .into_inner();
            if r.timed_out > 0 {
                mark_work();
            }
            Ok(format!("timed out {}", r.timed_out))
        }
        AUTO_DESTROY_REMINDERS => {
            let mut sent = 0;
            for _ in 0..MAX_PAGES {
                let r = lifecycle
                    .send_due_reminders(who.request(pb::SendDueRemindersRequest {
                        shard,
                        shard_count,
                        limit: batch,
                    }))
                    .await
                    .map_err(|s| format!("send due reminders: {}", s.message()))?
                    .into_inner();
                sent += r.sent;
                if r.sent < batch {
                    break;
                }
            }
            if sent > 0 {
                mark_work();
            }
            Ok(format!("sent {sent} reminders"))
        }
        RUN_LEASE_RESCUE => {
            let (mut requeued, mut errored) = (0, 0);
            for _ in 0..MAX_PAGES {
                let r = lifecycle
                    .rescue_expired_run_leases(who.request(pb::RescueExpiredRunLeasesRequest {
                        limit: batch,
                        max_attempts: config.run_max_attempts as i32,
                    }))
                    .await
                    .map_err(|s| format!("rescue expired run leases: {}", s.message()))?
                    .into_inner();
                requeued += r.requeued;
                errored += r.errored;
                if r.requeued + r.errored < batch {
                    break;
                }
            }
            if requeued + errored > 0 {
                mark_work();
                tracing::info!(requeued, errored, "runs with expired leases rescued");
            }
            Ok(format!("requeued {requeued}, errored {errored}"))
        }
        other => Err(format!("unknown task {other}")),
    }
}

/// What comes due: workspaces to auto-destroy, or actions scheduled on entities. Both walk the
/// same find → fire loop with the same fire keys and decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Workspaces,
    ScheduledActions,
}

/// What the decisions of one sweep came to.
#[derive(Debug, Default)]
struct Tally {
    queued: u32,
    deferred: u32,
    stale: u32,
    skipped: u32,
}

impl Tally {
    fn add(&mut self, results: &[pb::QueueItemResult]) {
        for r in results {
            match pb::QueueDecision::try_from(r.decision) {
                Ok(pb::QueueDecision::Queued) => self.queued += 1,
                Ok(pb::QueueDecision::Deferred | pb::QueueDecision::WaitingForWindow) => {
                    self.deferred += 1
                }
                Ok(pb::QueueDecision::SkippedProtected | pb::QueueDecision::Skipped) => {
                    self.skipped += 1
                }
                _ => self.stale += 1,
            }
        }
    }

    fn outcome(self, shard: i32, kind: Due) -> Outcome {
        let Self {
            queued,
            deferred,
            stale,
            skipped,
        } = self;
        if queued > 0 {
            tracing::info!(
                shard,
                queued,
                deferred,
                stale,
                skipped,
                ?kind,
                "due items fired"
            );
        }
        Ok(format!(
            "queued {queued}, deferred {deferred}, stale {stale}, skipped {skipped}"
        ))
    }
}

/// Due workspaces, found and decided by lifecycle one page per call (QueueDueWorkspaces). A
/// lifecycle that predates that call answers UNIMPLEMENTED: the sweep then finds and queues
/// in two calls per page, as it did before.
async fn queue_due_workspaces(
    lifecycle: &mut SchedulingServiceClient<TracedChannel>,
    who: &Who,
    shard_count: i32,
    batch: i32,
) -> Outcome {
    let shard = who.shard;
    let mut tally = Tally::default();
    let mut after = None;
    for _ in 0..MAX_PAGES {
        let page = match lifecycle
            .queue_due_workspaces(who.request(pb::QueueDueWorkspacesRequest {
                shard,
                shard_count,
                limit: batch,
                after: after.take(),
            }))
            .await
        {
            Ok(page) => page.into_inner(),
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                return fire_due(lifecycle, who, Due::Workspaces, shard_count, batch).await;
            }
            Err(s) => return Err(format!("queue due workspaces: {}", s.message())),
        };
        if page.results.is_empty() {
            break;
        }
        mark_work();
        tally.add(&page.results);
        tracing::debug!(
            shard,
            page_len = page.results.len(),
            lag_ms = page.oldest_due_age_ms,
            "due page processed"
        );
        match page.last {
            Some(last) => after = Some(last),
            None => break,
        }
    }
    tally.outcome(shard, Due::Workspaces)
}

async fn fire_due(
    lifecycle: &mut SchedulingServiceClient<TracedChannel>,
    who: &Who,
    kind: Due,
    shard_count: i32,
    batch: i32,
) -> Outcome {
    let shard = who.shard;
    let mut tally = Tally::default();
    let mut after = None;
    for _ in 0..MAX_PAGES {
        let (keys, lag_ms) = match kind {
            Due::Workspaces => {
                let r = lifecycle
                    .find_due_workspaces(who.request(pb::FindDueWorkspacesRequest {
                        shard,
                        shard_count,
                        limit: batch,
                        after: after.clone(),
                    }))
                    .await
                    .map_err(|s| format!("find due workspaces: {}", s.message()))?
                    .into_inner();
                (r.due, r.oldest_due_age_ms)
            }
            Due::ScheduledActions => {
                let r = lifecycle
                    .find_due_scheduled_actions(who.request(pb::FindDueScheduledActionsRequest {
                        shard,
                        shard_count,
                        limit: batch,
                        after: after.clone(),
                    }))
                    .await
                    .map_err(|s| format!("find due scheduled actions: {}", s.message()))?
                    .into_inner();
                (r.due, r.oldest_due_age_ms)
            }
        };
        if keys.is_empty() {
            break;
        }
        mark_work();
        let page_len = keys.len();
        after = keys.last().cloned();
        let results = match kind {
            Due::Workspaces => {
                lifecycle
                    .queue_auto_destroy_runs(
                        who.request(pb::QueueAutoDestroyRunsRequest { fire_keys: keys }),
                    )
                    .await
                    .map_err(|s| format!("queue auto-destroy runs: {}", s.message()))?
                    .into_inner()
                    .results
            }
            Due::ScheduledActions => {
                lifecycle
                    .fire_scheduled_actions(
                        who.request(pb::FireScheduledActionsRequest { fire_keys: keys }),
                    )
                    .await
                    .map_err(|s| format!("fire scheduled actions: {}", s.message()))?
                    .into_inner()
                    .results
            }
        };
        tally.add(&results);
        tracing::debug!(shard, page_len, lag_ms, ?kind, "due page processed");
        if page_len < batch as usize {
            break;
        }
    }
    tally.outcome(shard, kind)
}
