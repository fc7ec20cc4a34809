//! The replica loop: claim due leases, run each task under a renewed lease, release it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ebb_common::client::TracedChannel;
use ebb_proto::lifecycle::v1::scheduling_service_client::SchedulingServiceClient;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::leases::{Lease, Leases};
use crate::tasks;

/// Task runs one replica works on at once.
const CONCURRENCY: usize = 8;

/// Runs the claim loop until `shutdown`; in-flight task runs finish and release their leases.
pub async fn run(
    leases: Leases,
    lifecycle: SchedulingServiceClient<TracedChannel>,
    config: Arc<Config>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let ttl_ms = i64::try_from(config.lease_ttl.as_millis()).unwrap_or(15_000);
    let mut tick = tokio::time::interval(config.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let free = slots.available_permits();
        if free == 0 {
            continue;
        }
        let claimed = match leases.claim_due(free as u64, ttl_ms).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "claiming task leases failed");
                continue;
            }
        };
        for lease in claimed {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let (leases, lifecycle, config) = (leases.clone(), lifecycle.clone(), config.clone());
            // Most runs find nothing to do: their trace is exported only if this one does.
            let span = ebb_common::deferred_root_span!("task", task = %lease.task, shard = lease.shard, epoch = lease.epoch);
            tokio::spawn(
                async move {
                    run_one(&leases, lifecycle, &config, lease, ttl_ms).await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }
    // Wait for in-flight runs to release their leases.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        slots.acquire_many(CONCURRENCY as u32),
    )
    .await;
}

async fn run_one(
    leases: &Leases,
    mut lifecycle: SchedulingServiceClient<TracedChannel>,
    config: &Config,
    lease: Lease,
    ttl_ms: i64,
) {
    let started = Instant::now();
    let work = tasks::run(
        &mut lifecycle,
        config,
        &lease.task,
        lease.shard,
        leases.owner(),
    );
    tokio::pin!(work);
    let mut renew = tokio::time::interval(Duration::from_millis((ttl_ms / 3).max(100) as u64));
    renew.tick().await;
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break Some(outcome),
            _ = renew.tick() => match leases.renew(&lease, ttl_ms).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("lease lost to another replica; abandoning the run");
                    ebb_common::telemetry::mark_work();
                    metrics::counter!("ebb_scheduler_task_runs_total", "task" => lease.task.clone(), "outcome" => "lease_lost").increment(1);
                    break None;
                }
                Err(e) => tracing::warn!(error = %e, "renewing the lease failed"),
            },
        }
    };
    let Some(outcome) = outcome else { return };
    let (text, label) = match &outcome {
        Ok(summary) => (format!("ok: {summary}"), "ok"),
        Err(e) => {
            ebb_common::telemetry::mark_work();
            tracing::warn!(error = %e, "task run failed");
            (format!("error: {e}"), "error")
        }
    };
    metrics::counter!("ebb_scheduler_task_runs_total", "task" => lease.task.clone(), "outcome" => label)
        .increment(1);
    metrics::histogram!("ebb_scheduler_task_run_seconds", "task" => lease.task.clone())
        .record(started.elapsed().as_secs_f64());
    let ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    match leases.release(&lease, &text, ms).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!("lease was lost before release"),
        Err(e) => tracing::warn!(error = %e, "releasing the lease failed; it will expire"),
    }
}
