//! `ebb runs`: list, show and cancel runs (the destroy runs auto-destroy queues among them),
//! and approve or reject the destroy runs of organizations that require approval.

use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;

use super::names::Names;
use super::output::{fields, label, or_none, table, text, time, when, yes_no};
use super::{CliError, Connection, enum_parser, request_id};

/// `ebb runs`.
#[derive(Debug, clap::Args)]
pub struct RunsArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List an organization's runs, newest first.
    List {
        /// Organization whose runs are listed: its id or name.
        #[arg(long, visible_alias = "org", env = "EBB_ORGANIZATION_ID")]
        organization: String,
        /// Only runs of this workspace: its id, or [ORG/][PROJECT/]NAME.
        #[arg(long, value_name = "WORKSPACE")]
        workspace: Option<String>,
        /// Only this status: queued, awaiting-approval, running, succeeded, failed, errored,
        /// canceled.
        #[arg(long, value_parser = enum_parser("RUN_STATUS_", pb::RunStatus::from_str_name))]
        status: Option<pb::RunStatus>,
        /// Only this source: manual, auto-destroy, deprovision.
        #[arg(long, value_parser = enum_parser("RUN_SOURCE_", pb::RunSource::from_str_name))]
        source: Option<pb::RunSource>,
        /// At most this many runs.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..=1000))]
        limit: i32,
    },
    /// Show one run with its runner, attempts, exit code and the tail of its output.
    Show {
        /// Run id.
        run: String,
    },
    /// Cancel a run (a running one stops at its runner's next heartbeat).
    Cancel {
        /// Run id.
        run: String,
    },
    /// Approve a destroy run that awaits approval: runners may take it now.
    Approve {
        /// Run id.
        run: String,
        /// Why, for the audit trail.
        #[arg(long)]
        reason: String,
    },
    /// Reject a destroy run that awaits approval: it is canceled, the workspace stays.
    Reject {
        /// Run id.
        run: String,
        /// Why, for the audit trail.
        #[arg(long)]
        reason: String,
    },
}

type Lifecycle = LifecycleServiceClient<ebb_common::client::TracedChannel>;

/// Runs `ebb runs`.
pub fn main(args: RunsArgs) -> std::process::ExitCode {
    super::run("runs", async move {
        let ctx = super::connect(&args.conn)?;
        let mut api = Lifecycle::new(ctx.channel.clone());
        let run = match args.command {
            Command::List {
                organization,
                workspace,
                status,
                source,
                limit,
            } => {
                let mut names = Names::new(&ctx.channel, Some(&organization));
                let organization_id = names.organization_id().await?;
                let workspace_id = match workspace {
                    Some(w) => names.workspace(&w).await?,
                    None => String::new(),
                };
                let answer = api
                    .list_runs(pb::ListRunsRequest {
                        organization_id,
                        workspace_id,
                        status: status.map_or(0, |s| s as i32),
                        source: source.map_or(0, |s| s as i32),
                        page_size: limit,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| {
                        CliError::status(format!("runs of organization {organization}"), s)
                    })?
                    .into_inner();
                return ctx.print(&answer, "ebb.lifecycle.v1.ListRunsResponse", &|r| {
                    runs_table(&r.runs)
                });
            }
            Command::Show { run } => {
                api.get_run(pb::GetRunRequest {
                    run_id: run.clone(),
                })
                .await
                .map_err(|s| CliError::status(format!("run {run}"), s))?
                .into_inner()
                .run
            }
            Command::Cancel { run } => {
                api.cancel_run(pb::CancelRunRequest {
                    request_id: request_id(),
                    run_id: run.clone(),
                })
                .await
                .map_err(|s| CliError::status(format!("cancel run {run}"), s))?
                .into_inner()
                .run
            }
            Command::Approve { run, reason } => {
                api.approve_run(pb::ApproveRunRequest {
                    request_id: request_id(),
                    run_id: run.clone(),
                    reason,
                })
                .await
                .map_err(|s| CliError::status(format!("approve run {run}"), s))?
                .into_inner()
                .run
            }
            Command::Reject { run, reason } => {
                api.reject_run(pb::RejectRunRequest {
                    request_id: request_id(),
                    run_id: run.clone(),
                    reason,
                })
                .await
                .map_err(|s| CliError::status(format!("reject run {run}"), s))?
                .into_inner()
                .run
            }
        };
        ctx.print(&run.unwrap_or_default(), "ebb.lifecycle.v1.Run", &|r| {
            run_fields(r)
        })
    })
}

fn status(r: &pb::Run) -> String {
    label(r.status, "RUN_STATUS_", pb::RunStatus::as_str_name)
}

fn source(r: &pb::Run) -> String {
    label(r.source, "RUN_SOURCE_", pb::RunSource::as_str_name)
}

/// The exit code a runner reported, once the run has finished with one: a queued or running
/// run has none yet, and a canceled run may never have had one.
fn exit_code(r: &pb::Run) -> String {
    let reported = [pb::RunStatus::Succeeded, pb::RunStatus::Failed]
        .iter()
        .any(|s| *s as i32 == r.status);
    if reported && r.finish_time.is_some() {
        r.exit_code.to_string()
    } else {
        "-".to_owned()
    }
}

fn runs_table(runs: &[pb::Run]) -> String {
    let mut t = table(&[
        "run",
        "workspace",
        "kind",
        "source",
        "status",
        "attempt",
        "runner",
        "created (UTC)",
        "finished (UTC)",
    ])
    .wide_only(&["attempt", "runner", "finished (UTC)"]);
    for r in runs {
        t.add_row(vec![
            r.id.clone(),
            r.workspace_id.clone(),
            if r.is_destroy { "destroy" } else { "apply" }.to_owned(),
            source(r),
            status(r),
            r.attempt.to_string(),
            text(&r.runner_id),
            time(r.create_time.as_ref()),
            time(r.finish_time.as_ref()),
        ]);
    }
    or_none(t, runs.len(), "no runs")
}

fn run_fields(r: &pb::Run) -> String {
    fields(vec![
        ("id", r.id.clone()),
        ("workspace", r.workspace_id.clone()),
        ("destroy", yes_no(r.is_destroy)),
        ("auto apply", yes_no(r.auto_apply)),
        ("source", source(r)),
        ("status", status(r)),
        ("due time that fired it", when(r.fire_due_time.as_ref())),
        ("attempt", r.attempt.to_string()),
        ("runner", text(&r.runner_id)),
        ("lease until", when(r.lease_expire_time.as_ref())),
        ("exit code", exit_code(r)),
        ("message", text(&r.message)),
        ("created", when(r.create_time.as_ref())),
        ("claimed", when(r.claim_time.as_ref())),
        ("finished", when(r.finish_time.as_ref())),
        ("approval", approval(r)),
        ("output tail", text(r.output_tail.trim_end())),
    ])
}

/// The approval of a destroy run: its state, deadline or who decided and why.
fn approval(r: &pb::Run) -> String {
    let Some(a) = &r.approval else {
        return "-".to_owned();
    };
    if a.state == "PENDING" {
        format!("PENDING until {}", when(a.deadline.as_ref()))
    } else if a.decided_by.is_empty() {
        format!("{} {}", a.state, when(a.decide_time.as_ref()))
    } else {
        format!(
            "{} by {} {}: {}",
            a.state,
            a.decided_by,
            when(a.decide_time.as_ref()),
            a.reason
        )
    }
}
