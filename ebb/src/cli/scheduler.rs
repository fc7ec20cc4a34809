//! `ebb scheduler`: the periodic tasks and their shard leases; run one now, pause, resume.

use ebb_proto::scheduler::v1 as pb;
use ebb_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;

use super::output::{or_none, span, table, text, when, yes_no};
use super::{CliError, Connection, Ctx, request_id};

/// `ebb scheduler`.
#[derive(Debug, clap::Args)]
pub struct SchedulerArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List the tasks: one row per shard with its lease owner, next and last run and outcome.
    Tasks,
    /// Make every shard of a task due now; a replica picks it up on its next poll.
    RunNow {
        /// Task name, e.g. auto_destroy_check.
        task: String,
    },
    /// Pause a task (for example every auto-destroy during an incident).
    Pause {
        /// Task name.
        task: String,
    },
    /// Resume a paused task.
    Resume {
        /// Task name.
        task: String,
    },
}

type Scheduler = SchedulerServiceClient<ebb_common::client::TracedChannel>;

/// Runs `ebb scheduler`.
pub fn main(args: SchedulerArgs) -> std::process::ExitCode {
    super::run("scheduler", async move {
        let ctx = super::connect(&args.conn)?;
        run(&ctx, args.command).await
    })
}

async fn run(ctx: &Ctx, command: Command) -> Result<(), CliError> {
    let mut api = Scheduler::new(ctx.channel.clone());
    let task = match command {
        Command::Tasks => {
            let answer = api
                .list_tasks(pb::ListTasksRequest {})
                .await
                .map_err(|s| CliError::status("list scheduler tasks", s))?
                .into_inner();
            return ctx.print(&answer, "ebb.scheduler.v1.ListTasksResponse", &|r| {
                tasks_table(&r.tasks)
            });
        }
        Command::RunNow { task } => {
            api.run_task_now(pb::RunTaskNowRequest {
                request_id: request_id(),
                name: task.clone(),
            })
            .await
            .map_err(|s| CliError::status(format!("run task {task} now"), s))?
            .into_inner()
            .task
        }
        Command::Pause { task } => {
            api.pause_task(pb::PauseTaskRequest {
                request_id: request_id(),
                name: task.clone(),
            })
            .await
            .map_err(|s| CliError::status(format!("pause task {task}"), s))?
            .into_inner()
            .task
        }
        Command::Resume { task } => {
            api.resume_task(pb::ResumeTaskRequest {
                request_id: request_id(),
                name: task.clone(),
            })
            .await
            .map_err(|s| CliError::status(format!("resume task {task}"), s))?
            .into_inner()
            .task
        }
    };
    let task = task.unwrap_or_default();
    ctx.print(&task, "ebb.scheduler.v1.Task", &|t| {
        tasks_table(std::slice::from_ref(t))
    })
}

/// One row per (task, shard).
fn tasks_table(tasks: &[pb::Task]) -> String {
    let mut t = table(&[
        "task",
        "every",
        "paused",
        "shard",
        "owner",
        "lease until",
        "next run",
        "last run",
        "last outcome",
        "took",
        "takeovers",
    ])
    .wide_only(&["every", "lease until", "took", "takeovers"])
    .summarise(&["last outcome"]);
    let mut rows = 0;
    for task in tasks {
        let shards: Vec<Option<&pb::TaskShard>> = if task.shards.is_empty() {
            vec![None]
        } else {
            task.shards.iter().map(Some).collect()
        };
        for shard in shards {
            rows += 1;
            let s = shard.cloned().unwrap_or_default();
            t.add_row(vec![
                task.name.clone(),
                span(task.interval.as_ref()),
                yes_no(task.paused),
                shard.map_or("-".to_owned(), |s| s.shard.to_string()),
                text(&s.owner),
                if s.owner.is_empty() {
                    "-".to_owned()
                } else {
                    when(s.lease_expire_time.as_ref())
                },
                when(s.next_run_time.as_ref()),
                when(s.last_run_time.as_ref()),
                text(&s.last_outcome),
                span(s.last_duration.as_ref()),
                s.takeovers.to_string(),
            ]);
        }
    }
    or_none(t, rows, "no tasks")
}
