//! `ebb runner`: claims runs of one organization, executes a command template per run while
//! heartbeating its lease, and reports the exit status and the tail of the output.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ebb_common::client::{TracedChannel, channel_with};
use ebb_common::time::to_duration;
use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::runner_service_client::RunnerServiceClient;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod reports;
use reports::Reporter;

/// Bytes of output kept for the report.
const TAIL_BYTES: usize = 16 * 1024;

/// Flags of `ebb runner`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunnerArgs {
    /// The server (lifecycle-svc's or `ebb serve`'s address), token and CA, as every command
    /// takes them, with the context's as defaults.
    #[command(flatten)]
    pub target: crate::cli::Target,
    /// The address flag of earlier versions; --server wins over it.
    #[arg(long, hide = true, env = "EBB_LIFECYCLE_URL")]
    pub lifecycle_url: Option<String>,
    /// Organization whose runs to take.
    #[arg(
        long,
        visible_alias = "org",
        alias = "organization-id",
        env = "EBB_ORGANIZATION_ID"
    )]
    pub organization: String,
    /// Name of this runner in runs and events.
    #[arg(long, env = "EBB_RUNNER_ID", default_value = "ebb-runner")]
    pub runner_id: String,
    /// Command for destroy runs. Placeholders: {working_dir}, {workspace_id}, {run_id}.
    /// Split like a shell would, but never run through a shell.
    #[arg(
        long,
        default_value = "tofu -chdir={working_dir} destroy -auto-approve"
    )]
    pub destroy_command: String,
    /// Command for apply runs, with the same placeholders.
    #[arg(long, default_value = "tofu -chdir={working_dir} apply -auto-approve")]
    pub apply_command: String,
    /// Instead of running commands: `succeed`, `fail`, or `fail:TEXT` (fail runs whose
    /// workspace id or working directory contains TEXT, succeed the others).
    #[arg(long)]
    pub simulate: Option<String>,
    /// How long a simulated run takes.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub simulate_duration: Duration,
    /// Stop after this many runs (0: never).
    #[arg(long, default_value_t = 0)]
    pub max_runs: u64,
    /// Long-poll wait per claim.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub claim_wait: Duration,
    /// How many runs to carry out side by side (1-100). Free slots are filled by one claim
    /// (ClaimRuns), each run then heartbeated on its own; runs that end together are
    /// completed in one call (CompleteRuns).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub parallel: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Simulation {
    Succeed,
    Fail,
    FailMatching(String),
}

fn parse_simulation(rule: &str) -> Result<Simulation, String> {
    match rule {
        "succeed" => Ok(Simulation::Succeed),
        "fail" => Ok(Simulation::Fail),
        _ => match rule.strip_prefix("fail:") {
            Some(text) if !text.is_empty() => Ok(Simulation::FailMatching(text.to_owned())),
            _ => Err(format!(
                "--simulate `{rule}` is not a rule; use succeed, fail or fail:TEXT"
            )),
        },
    }
}

/// Runs `ebb runner` until SIGTERM/SIGINT or `--max-runs`.
pub fn main(args: RunnerArgs) -> std::process::ExitCode {
    let simulation = match args.simulate.as_deref().map(parse_simulation).transpose() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ebb runner: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if uuid::Uuid::parse_str(&args.organization).is_err() {
        eprintln!("ebb runner: --organization must be an organization's id (a UUID)");
        return std::process::ExitCode::from(2);
    }
    let mut target = args.target.clone();
    if target.server.is_none() {
        target.server = args.lifecycle_url.clone();
    }
    let resolved = match target.resolve() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ebb runner: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    for (flag, template) in [
        ("--destroy-command", &args.destroy_command),
        ("--apply-command", &args.apply_command),
    ] {
        if let Err(e) = shell_words::split(template) {
            eprintln!("ebb runner: {flag}: {e}");
            return std::process::ExitCode::from(2);
        }
    }
    let runtime = match crate::cli::server_runtime("runner") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let config = ebb_common::config::TelemetryConfig::default();
        let _telemetry = ebb_common::telemetry::init(&config, "ebb-runner");
        match run(args, resolved, simulation).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ebb runner: {e:#}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

async fn run(
    args: RunnerArgs,
    target: crate::cli::connection::Resolved,
    simulation: Option<Simulation>,
) -> anyhow::Result<()> {
    let shutdown = ebb_common::serving::shutdown_on_signals();
    let server = target.server.clone();
    let channel = channel_with(
        &server,
        args.claim_wait + Duration::from_secs(30),
        &target.settings,
    )
    .map_err(|e| anyhow::anyhow!("--server: {e}"))?;
    let mut client = RunnerServiceClient::new(channel);
    let parallel = usize::from(args.parallel);
    println!(
        "ebb runner {} taking runs of organization {} from {server}{}",
        args.runner_id,
        args.organization,
        if parallel > 1 {
            format!(", {parallel} at a time")
        } else {
            String::new()
        }
    );
    let shared = Arc::new(Shared {
        // Runs side by side may end together: their completions are then reported in one call.
        reporter: Reporter::new(client.clone(), parallel > 1),
        args,
        simulation,
        shutdown: shutdown.clone(),
    });
    let args = &shared.args;
    let mut running = tokio::task::JoinSet::new();
    let mut claimed = 0u64;
    // Whether the server answers ClaimRuns; an older one gets one ClaimRun per free slot.
    let mut batches = parallel > 1;
    let outcome = loop {
        if shutdown.is_cancelled() || (args.max_runs > 0 && claimed >= args.max_runs) {
            break Ok(());
        }
        while let Some(ended) = running.try_join_next() {
            slot_freed(ended);
        }
        if running.len() >= parallel {
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                ended = running.join_next() => {
                    if let Some(ended) = ended {
                        slot_freed(ended);
                    }
                    continue;
                }
            }
        }
        let mut want = parallel - running.len();
        if args.max_runs > 0 {
            want = want.min(usize::try_from(args.max_runs - claimed).unwrap_or(usize::MAX));
        }
        let claim = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            r = take(&mut client, args, want, batches) => r,
        };
        let runs = match claim {
            Ok(runs) => runs,
            Err(status) if batches && status.code() == tonic::Code::Unimplemented => {
                tracing::warn!(server = %server, "the server cannot claim several runs per call; claiming one at a time");
                batches = false;
                continue;
            }
            Err(status) => {
                if let Some(refusal) = refused(&server, &status) {
                    break Err(refusal);
                }
                tracing::warn!(server = %server, error = %status.message(), "claiming a run failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for (run, token, lease) in runs {
            claimed += 1;
            tracing::info!(run_id = %run.id, workspace_id = %run.workspace_id, destroy = run.is_destroy, "run claimed");
            let (client, shared) = (client.clone(), shared.clone());
            running.spawn(async move {
                execute(client, &shared, &run, &token, lease).await;
            });
        }
    };
    // Runs already claimed are carried out to the end, on shutdown too.
    while let Some(ended) = running.join_next().await {
        slot_freed(ended);
    }
    outcome
}

/// A slot's run ended; a run whose task failed (it panicked) is logged, never lost silently.
fn slot_freed(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended {
        tracing::error!(error = %e, "a run's task ended abnormally; its lease expires and the run is rescued like any abandoned run");
    }
}

/// Claims up to `want` runs: by ClaimRuns when `batches`, else by one ClaimRun. Each run comes
/// with its lease token and how long the lease lasts.
async fn take(
    client: &mut RunnerServiceClient<TracedChannel>,
    args: &RunnerArgs,
    want: usize,
    batches: bool,
) -> Result<Vec<(pb::Run, String, Duration)>, tonic::Status> {
    let wait = Some(to_duration(args.claim_wait.as_millis() as i64));
    let lease = |d: Option<prost_types::Duration>| {
        d.map(|d| Duration::from_secs(d.seconds.max(1) as u64))
            .unwrap_or(Duration::from_secs(60))
    };
    if batches {
        let resp = client
            .claim_runs(pb::ClaimRunsRequest {
                organization_id: args.organization.clone(),
                runner_id: args.runner_id.clone(),
                wait,
                max_runs: i32::try_from(want).unwrap_or(i32::MAX),
            })
            .await?
            .into_inner();
        let lease = lease(resp.lease_duration);
        return Ok(resp
            .claims
            .into_iter()
            .filter_map(|c| Some((c.run?, c.lease_token, lease)))
            .collect());
    }
    let resp = client
        .claim_run(pb::ClaimRunRequest {
            organization_id: args.organization.clone(),
            runner_id: args.runner_id.clone(),
            wait,
        })
        .await?
        .into_inner();
    let lease = lease(resp.lease_duration);
    Ok(resp
        .run
        .map(|run| (run, resp.lease_token, lease))
        .into_iter()
        .collect())
}

/// Why the server refused claims for good (a bad token or a bad request), if it did.
fn refused(server: &str, status: &tonic::Status) -> Option<anyhow::Error> {
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => Some(anyhow::anyhow!(
            "the server at {server} refused the token: {} (give another with --token, \
             EBB_TOKEN, --token-file or a context)",
            crate::cli::describe_status(status)
        )),
        tonic::Code::InvalidArgument | tonic::Code::NotFound => Some(anyhow::anyhow!(
            "claiming runs was refused: {}",
            crate::cli::describe_status(status)
        )),
        _ => None,
    }
}

struct Ending {
    succeeded: bool,
    exit_code: i32,
    tail: String,
    serial: i64,
}

/// What every run's task shares.
struct Shared {
    args: RunnerArgs,
    simulation: Option<Simulation>,
    reporter: Reporter,
    shutdown: CancellationToken,
}

async fn execute(
    mut client: RunnerServiceClient<TracedChannel>,
    shared: &Shared,
    run: &pb::Run,
    token: &str,
    lease: Duration,
) {
    let Shared {
        args,
        simulation,
        reporter,
        shutdown,
    } = shared;
    let stop = CancellationToken::new();
    let work = async {
        match simulation {
            Some(rule) => simulate(rule, run, args.simulate_duration, &stop).await,
            None => {
                let template = if run.is_destroy {
                    &args.destroy_command
                } else {
                    &args.apply_command
                };
                command(template, run, &stop).await
            }
        }
    };
    tokio::pin!(work);
    let mut beat = tokio::time::interval((lease / 3).max(Duration::from_millis(200)));
    beat.tick().await;
    // Said once: a shutdown does not stop the run.
    let mut draining = false;
    let ending = loop {
        tokio::select! {
            ending = &mut work => break Some(ending),
            _ = beat.tick() => {
                match client.heartbeat_run(pb::HeartbeatRunRequest { run_id: run.id.clone(), lease_token: token.to_owned() }).await {
                    Ok(r) if r.get_ref().cancel_requested => {
                        tracing::info!(run_id = %run.id, "run canceled; stopping it");
                        stop.cancel();
                    }
                    Ok(_) => {}
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                        tracing::warn!(run_id = %run.id, "lease lost; abandoning the run");
                        stop.cancel();
                        let _ = (&mut work).await;
                        break None;
                    }
                    Err(s) => tracing::warn!(run_id = %run.id, error = %s.message(), "heartbeat failed"),
                }
            }
            () = shutdown.cancelled(), if !draining && !stop.is_cancelled() => {
                draining = true;
                tracing::info!(run_id = %run.id, "shutting down: letting the run finish");
            }
        }
    };
    let Some(ending) = ending else { return };
    let outcome = if ending.succeeded {
        pb::RunOutcome::Succeeded
    } else {
        pb::RunOutcome::Failed
    };
    let request = pb::CompleteRunRequest {
        request_id: format!("complete-{}-{}", run.id, run.attempt),
        run_id: run.id.clone(),
        lease_token: token.to_owned(),
        outcome: outcome as i32,
        exit_code: ending.exit_code,
        output_tail: ending.tail,
        state_version_serial: ending.serial,
    };
    match reporter.complete(request).await {
        Ok(()) => {
            tracing::info!(run_id = %run.id, succeeded = ending.succeeded, exit_code = ending.exit_code, "run completed");
        }
        Err(s) => {
            tracing::error!(run_id = %run.id, error = %s.message(), "completing the run failed; its lease expires and the run is rescued like any abandoned run");
        }
    }
}

async fn simulate(
    rule: &Simulation,
    run: &pb::Run,
    duration: Duration,
    stop: &CancellationToken,
) -> Ending {
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        () = stop.cancelled() => {
            return Ending { succeeded: false, exit_code: 130, tail: "simulated run stopped".into(), serial: 0 };
        }
    }
    let fail = match rule {
        Simulation::Succeed => false,
        Simulation::Fail => true,
        Simulation::FailMatching(text) => {
            run.workspace_id.contains(text.as_str())
                || run.working_directory.contains(text.as_str())
        }
    };
    Ending {
        succeeded: !fail,
        exit_code: i32::from(fail),
        tail: format!(
            "simulated {} run {}\n",
            if run.is_destroy { "destroy" } else { "apply" },
            if fail { "failed" } else { "succeeded" }
        ),
        serial: 0,
    }
}

fn expand(template: &str, run: &pb::Run) -> Vec<String> {
    shell_words::split(template)
        .unwrap_or_default()
        .into_iter()
        .map(|arg| {
            arg.replace("{working_dir}", &run.working_directory)
                .replace("{workspace_id}", &run.workspace_id)
                .replace("{run_id}", &run.id)
        })
        .collect()
}

async fn command(template: &str, run: &pb::Run, stop: &CancellationToken) -> Ending {
    let argv = expand(template, run);
    let Some((program, rest)) = argv.split_first() else {
        return Ending {
            succeeded: false,
            exit_code: -1,
            tail: "empty command".into(),
            serial: 0,
        };
    };
    let spawned = tokio::process::Command::new(program)
        .args(rest)
        .env("EBB_RUN_ID", &run.id)
        .env("EBB_WORKSPACE_ID", &run.workspace_id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return Ending {
                succeeded: false,
                exit_code: -1,
                tail: format!("cannot start `{program}`: {e}"),
                serial: 0,
            };
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(out, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(err, tx));
    }
    let mut tail = Tail::default();
    let status = loop {
        tokio::select! {
            Some(line) = rx.recv() => tail.push(line),
            status = child.wait() => break status,
            () = stop.cancelled() => {
                let _ = child.kill().await;
                tail.push("run stopped".into());
                break child.wait().await;
            }
        }
    };
    while let Ok(line) = rx.try_recv() {
        tail.push(line);
    }
    let exit_code = status.as_ref().ok().and_then(|s| s.code()).unwrap_or(-1);
    Ending {
        succeeded: status.map(|s| s.success()).unwrap_or(false) && !stop.is_cancelled(),
        exit_code,
        serial: tail.serial,
        tail: tail.text(),
    }
}

async fn forward(stream: impl AsyncRead + Unpin, tx: mpsc::UnboundedSender<String>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tx.send(line).is_err() {
            break;
        }
    }
}

/// The last lines of output, capped in bytes; a line `ebb-state-serial: N` reports the serial
/// of the state version the run applied.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
    serial: i64,
}

impl Tail {
    fn push(&mut self, line: String) {
        if let Some(n) = line.trim().strip_prefix("ebb-state-serial:") {
            self.serial = n.trim().parse().unwrap_or(self.serial);
        }
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.bytes > TAIL_BYTES {
            match self.lines.pop_front() {
                Some(l) => self.bytes -= l.len() + 1,
                None => break,
            }
        }
    }

    fn text(&self) -> String {
        let mut s = self
            .lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_split_before_substitution() {
        let run = pb::Run {
            working_directory: "/srv/a b; rm -rf /".into(),
            ..Default::default()
        };
        assert_eq!(
            expand("tofu -chdir={working_dir} destroy", &run),
            vec!["tofu", "-chdir=/srv/a b; rm -rf /", "destroy"]
        );
    }

    #[test]
    fn simulation_rules_parse() {
        assert_eq!(parse_simulation("succeed"), Ok(Simulation::Succeed));
        assert_eq!(
            parse_simulation("fail:abc"),
            Ok(Simulation::FailMatching("abc".into()))
        );
        assert!(parse_simulation("maybe").is_err());
        assert!(parse_simulation("fail:").is_err());
    }

    #[test]
    fn tail_keeps_the_last_bytes_and_reads_the_serial() {
        let mut t = Tail::default();
        for i in 0..5000 {
            t.push(format!("line {i}"));
        }
        t.push("ebb-state-serial: 7".into());
        assert!(t.bytes <= TAIL_BYTES);
        assert_eq!(t.serial, 7);
        assert!(t.text().contains("line 4999"));
    }
}
