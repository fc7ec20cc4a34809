//! The delivery worker: leases due deliveries, attempts them concurrently, records outcomes.
//!
//! Any number of replicas run one each. A delivery is attempted only by the replica holding
//! its lease, and the lease outlives the request timeout (see `delivery.lease_ttl`), so one
//! delivery never has two attempts in flight.

use std::sync::Arc;
use std::time::Duration;

use ebb_common::db::Db;
use ebb_common::sealing::Keyring;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::DeliveryConfig;
use crate::configurations::Destination;
use crate::deliveries::{self, Finished, Job};
use crate::payload::{self, Recipient};
use crate::retry::Policy;
use crate::transport::{Sender, Target};

/// One replica's worker.
pub struct Worker {
    db: Db,
    keys: Arc<Keyring>,
    sender: Arc<Sender>,
    config: DeliveryConfig,
    policy: Arc<Policy>,
    wake: Arc<Notify>,
    replica: String,
}

impl Worker {
    /// A worker over `db`, opening signing secrets with `keys`; `wake` is notified when new
    /// deliveries are due now.
    pub fn new(
        db: Db,
        keys: Arc<Keyring>,
        sender: Arc<Sender>,
        config: DeliveryConfig,
        wake: Arc<Notify>,
    ) -> Self {
        let policy = Arc::new(Policy {
            schedule: config.schedule(),
            jitter: config.jitter,
            min_throttle_wait: config.min_throttle_wait,
        });
        Self {
            db,
            keys,
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
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        tokio::spawn(record_finished(
            self.db.clone(),
            self.policy.clone(),
            self.replica.clone(),
            done_rx,
        ));
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
            let claim_started = std::time::Instant::now();
            let jobs =
                match deliveries::claim(&self.db, &self.keys, &self.replica, free as u32, ttl_ms)
                    .await
                {
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
            tracing::debug!(claimed, free, took = ?claim_started.elapsed(), "deliveries claimed");
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
                let done = done_tx.clone();
                tokio::spawn(async move {
                    let finished = this.attempt(job).await;
                    // The slot is freed once the outcome is recorded, so recording keeps pace.
                    let _ = done.send((finished, permit));
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
        drop(done_tx);
        // Let attempts in flight record their outcome; unrecorded ones are retried by
        // whichever replica takes the expired lease.
        let all = self.config.concurrency as u32;
        let _ = tokio::time::timeout(self.config.lease_ttl, permits.acquire_many(all)).await;
        tracing::info!(replica = %self.replica, "delivery worker stopped");
    }

    fn attempt_ctx(&self) -> AttemptCtx {
        AttemptCtx {
            sender: self.sender.clone(),
            policy: self.policy.clone(),
        }
    }
}

#[derive(Clone)]
struct AttemptCtx {
    sender: Arc<Sender>,
    policy: Arc<Policy>,
}

impl AttemptCtx {
    async fn attempt(&self, job: Job) -> Finished {
        let recipient = Recipient {
            id: job.configuration_id.clone(),
            name: job.configuration_name.clone(),
        };
        let message = payload::render(job.destination, &job.event, &recipient);
        // Email goes to the event's owner too (reminders and results name one).
        let mail_to = payload::email_recipients(&job.email_addresses, &job.event);
        let target = match job.destination {
            Destination::Email => Target::Mail(&mail_to),
            _ => Target::Url(&job.url),
        };
        let started_ms = ebb_common::time::now_ms();
        let result = self
            .sender
            .send(target, &message, &job.message_id, &job.secrets)
            .await;
        let destination = job.destination.as_str();
        metrics::counter!("ebb_notifier_delivery_attempts_total", "destination" => destination, "outcome" => result.outcome.as_str())
            .increment(1);
        if result.outcome != crate::transport::Outcome::Succeeded {
            metrics::counter!("ebb_notifier_delivery_failures_total", "destination" => destination)
                .increment(1);
        }
        let attempts_in_cycle = (job.cycle_attempts + 1) as usize;
        let next = self.policy.next(attempts_in_cycle, result.verdict());
        Finished {
            job,
            result,
            started_ms,
            next,
        }
    }
}

/// Most outcomes recorded in one transaction.
const RECORD_BATCH: usize = 256;

/// Records outcomes as they come, grouping whatever has finished meanwhile into one
/// transaction. Slots are released after their outcome is committed (or failed to commit:
/// the lease then expires and the delivery is attempted again).
async fn record_finished(
    db: Db,
    policy: Arc<Policy>,
    replica: String,
    mut done: mpsc::UnboundedReceiver<(Finished, OwnedSemaphorePermit)>,
) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while done.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        let (finished, permits): (Vec<Finished>, Vec<OwnedSemaphorePermit>) =
            std::mem::take(&mut batch).into_iter().unzip();
        let started = std::time::Instant::now();
        let outcome = deliveries::record_all(&db, &finished, &policy, &replica).await;
        tracing::debug!(attempts = finished.len(), took = ?started.elapsed(), "attempts recorded");
        match outcome {
            Ok(0) => {}
            Ok(lost) => tracing::warn!(lost, "leases lost before attempts were recorded"),
            Err(e) => tracing::warn!(
                error = %e,
                attempts = finished.len(),
                "cannot record attempts; their leases will expire and they are retried"
            ),
        }
        drop(permits);
    }
}
