//! The delivery worker: leases due deliveries, attempts them concurrently, records outcomes.
//!
//! Any number of replicas run one each. A delivery is attempted only by the replica holding
//! its lease, and the lease outlives the request timeout (see `delivery.lease_ttl`), so one
//! delivery never has two attempts in flight.

use std::sync::Arc;
use std::time::Duration;

use ebb_common::db::Db;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::DeliveryConfig;
use crate::configurations::{self, Destination};
use crate::deliveries::{self, Job};
use crate::payload::{self, Recipient};
use crate::retry::Policy;
use crate::transport::{Sender, Target};

/// One replica's worker.
pub struct Worker {
    db: Db,
    sender: Arc<Sender>,
    config: DeliveryConfig,
    policy: Arc<Policy>,
    wake: Arc<Notify>,
    replica: String,
}

impl Worker {
    /// A worker over `db`; `wake` is notified when new deliveries are due now.
    pub fn new(db: Db, sender: Arc<Sender>, config: DeliveryConfig, wake: Arc<Notify>) -> Self {
        let policy = Arc::new(Policy {
            schedule: config.schedule(),
            jitter: config.jitter,
            min_throttle_wait: config.min_throttle_wait,
        });
        Self {
            db,
            sender,
            config,
            policy,
            wake,
            replica: format!("notifier-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// Runs until `shutdown`, then waits for attempts in flight.
    pub async fn run(self, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        let ttl_ms = self.config.lease_ttl.as_millis() as i64;
        let mut backoff = self.config.poll_interval;
        tracing::info!(replica = %self.replica, "delivery worker started");
        while !shutdown.is_cancelled() {
            // Wait for at least one free slot, then claim as many as are free.
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let free = (permits.available_permits() + 1).min(self.config.batch_size as usize);
            let jobs = match deliveries::claim(&self.db, &self.replica, free as u32, ttl_ms).await {
                Ok(jobs) => {
                    backoff = self.config.poll_interval;
                    jobs
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot claim deliveries");
                    drop(first);
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let claimed = jobs.len();
            let mut first = Some(first);
            for job in jobs {
                let permit = match first.take() {
                    Some(p) => p,
                    None => match permits.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let this = self.attempt_ctx();
                tokio::spawn(async move {
                    this.attempt(job).await;
                    drop(permit);
                });
            }
            drop(first);
            if claimed < free {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                }
            }
        }
        // Let attempts in flight record their outcome; unrecorded ones are retried by
        // whichever replica takes the expired lease.
        let all = self.config.concurrency as u32;
        let _ = tokio::time::timeout(self.config.lease_ttl, permits.acquire_many(all)).await;
        tracing::info!(replica = %self.replica, "delivery worker stopped");
    }

    fn attempt_ctx(&self) -> AttemptCtx {
        AttemptCtx {
            db: self.db.clone(),
            sender: self.sender.clone(),
            policy: self.policy.clone(),
            replica: self.replica.clone(),
        }
    }
}

#[derive(Clone)]
struct AttemptCtx {
    db: Db,
    sender: Arc<Sender>,
    policy: Arc<Policy>,
    replica: String,
}

impl AttemptCtx {
    async fn attempt(&self, job: Job) {
        let recipient = Recipient {
            id: job.configuration_id.clone(),
            name: job.configuration_name.clone(),
        };
        let message = payload::render(job.destination, &job.event, &recipient);
        let secrets = if job.destination == Destination::Email {
            Vec::new()
        } else {
            match configurations::signing_secrets(&self.db, &job.configuration_id).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(delivery_id = %job.id, error = %e, "cannot read signing secrets; the lease will expire");
                    return;
                }
            }
        };
        let target = match job.destination {
            Destination::Email => Target::Mail(&job.email_addresses),
            _ => Target::Url(&job.url),
        };
        let started_ms = ebb_common::time::now_ms();
        let result = self
            .sender
            .send(target, &message, &job.message_id, &secrets)
            .await;
        let attempts_in_cycle = (job.cycle_attempts + 1) as usize;
        let next = self.policy.next(attempts_in_cycle, result.verdict());
        match deliveries::record(
            &self.db,
            &job,
            &result,
            started_ms,
            next,
            &self.policy,
            &self.replica,
        )
        .await
        {
            Ok(true) => {
                tracing::debug!(delivery_id = %job.id, status = result.status, ?next, "attempt recorded")
            }
            Ok(false) => {
                tracing::warn!(delivery_id = %job.id, "lease lost before the attempt was recorded")
            }
            Err(e) => {
                tracing::warn!(delivery_id = %job.id, error = %e, "cannot record attempt; the lease will expire and it is retried")
            }
        }
    }
}
