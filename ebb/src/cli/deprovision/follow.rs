//! Following an action run with `--wait` until it ends, with a progress bar of its steps.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ebb_proto::lifecycle::v1 as pb;

use crate::cli::deprovision::api::{ACTION_RUN, Deprovision, get};
use crate::cli::deprovision::render::{is_done, run_report, run_status};
use crate::cli::{CliError, Ctx, output, parse_duration};

/// Following a run to its end.
#[derive(Debug, clap::Args)]
pub(super) struct Waiting {
    /// Follow the run until it ends, with a progress bar of its steps on standard error;
    /// exits 1 if it fails.
    #[arg(long)]
    pub(super) wait: bool,
    /// How often to look while waiting.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    poll: Duration,
    /// Give up waiting after this long (the run goes on).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    wait_timeout: Duration,
}

/// Prints the run (after following it with `--wait`); exits 1 when it failed or was
/// canceled.
pub(super) async fn finish(
    ctx: &Ctx,
    api: &mut Deprovision,
    run: pb::ActionRun,
    waiting: &Waiting,
) -> Result<(), CliError> {
    let run = if waiting.wait {
        wait(api, run, waiting).await?
    } else {
        run
    };
    ctx.print(&run, ACTION_RUN, &|r| run_report(r))?;
    if run.status == pb::ActionRunStatus::Failed as i32
        || run.status == pb::ActionRunStatus::Canceled as i32
    {
        return Err(CliError::Failed(format!(
            "action run {} {}{}",
            run.id,
            run_status(&run),
            if run.error.is_empty() {
                String::new()
            } else {
                format!(": {}", run.error)
            }
        )));
    }
    Ok(())
}

/// Polls the run until it is no longer running, showing steps done out of all.
pub(super) async fn wait(
    api: &mut Deprovision,
    mut run: pb::ActionRun,
    waiting: &Waiting,
) -> Result<pb::ActionRun, CliError> {
    let started = Instant::now();
    let names = entity_names(&run);
    let bar = crate::cli::progress_bar(run.steps.len().max(run.plan.len()) as u64, "steps");
    loop {
        let total = run.steps.len().max(run.plan.len()) as u64;
        let done = run.steps.iter().filter(|s| is_done(s.status)).count() as u64;
        let running: Vec<String> = run
            .steps
            .iter()
            .filter(|s| s.status == pb::ActionStepStatus::Running as i32)
            .map(|s| {
                names
                    .get(&s.entity_id)
                    .cloned()
                    .unwrap_or(s.entity_id.clone())
            })
            .collect();
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(if running.is_empty() {
            String::new()
        } else {
            format!("running: {}", running.join(", "))
        });
        if run.status != pb::ActionRunStatus::Running as i32 {
            bar.finish_and_clear();
            return Ok(run);
        }
        if started.elapsed() >= waiting.wait_timeout {
            bar.finish_and_clear();
            return Err(CliError::Failed(format!(
                "action run {} is still running after {} ({done} of {total} steps done); \
                 follow it with `ebb deprovision status {} --wait`",
                run.id,
                output::compact(waiting.wait_timeout.as_secs()),
                run.id
            )));
        }
        tokio::time::sleep(waiting.poll).await;
        let id = run.id.clone();
        run = match get(api, &id).await {
            Ok(r) => r,
            Err(e) => {
                bar.finish_and_clear();
                return Err(e);
            }
        };
    }
}

pub(super) fn entity_names(run: &pb::ActionRun) -> HashMap<String, String> {
    run.plan
        .iter()
        .map(|p| (p.entity_id.clone(), p.entity_name.clone()))
        .collect()
}
