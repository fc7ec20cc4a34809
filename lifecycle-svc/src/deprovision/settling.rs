//! Applies the settlings that steps ending on their own queued (see [`progress`]): in batches,
//! each in one transaction, taking rows no other replica is applying. A run whose every step
//! is then done finishes here, in the same transaction. It runs only where settlings can be
//! queued ([`progress::may_queue`]).

use std::time::Duration;

use ebb_common::Result;
use tokio_util::sync::CancellationToken;

use crate::core::Lifecycle;
use crate::deprovision::{action_runs, progress, steps};

/// Settlings applied per transaction.
const BATCH: u64 = 1000;
/// Pause when nothing is queued.
const POLL: Duration = Duration::from_millis(50);
/// Pause after a failed batch.
const AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Applies queued settlings until `shutdown`.
pub async fn run(core: Lifecycle, shutdown: CancellationToken) {
    loop {
        let pause = match settle_once(&core).await {
            Ok(true) => Duration::ZERO,
            Ok(false) => POLL,
            Err(e) => {
                tracing::warn!(error = %e, "settling ended steps failed; retrying");
                AFTER_FAILURE
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Applies one batch of queued settlings and finishes the runs they complete; whether a full
/// batch was taken (more may be waiting).
pub(crate) async fn settle_once(core: &Lifecycle) -> Result<bool> {
    // Read first, so an idle replica never opens a write transaction.
    if !progress::any_queued(&core.db.read).await? {
        return Ok(false);
    }
    let engine = steps::Engine::of(core);
    let txn = core.begin().await?;
    let now = core.now();
    let (taken, done) = progress::settle_queued(&txn, BATCH, now).await?;
    for run_id in done {
        // The run ends in its own actor's name: nobody in particular ended its last step.
        let run = action_runs::get_action_run(&txn, &run_id).await?;
        steps::advance(&txn, &engine, &run_id, &run.actor, now).await?;
    }
    txn.commit().await?;
    Ok(taken as u64 == BATCH)
}
