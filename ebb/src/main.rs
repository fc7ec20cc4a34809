//! `ebb`: the front door to Ebb.

mod audit_cli;
mod cli;
mod console;
mod health;
mod reference;
mod runner;
mod serve;
mod service;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Ebb, the lifecycle control plane for short-lived infrastructure.
#[derive(Parser)]
#[command(name = "ebb", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run all four services in one process on one port, on embedded SQLite.
    Serve(serve::ServeArgs),
    /// Run one service in this process (`lifecycle`, `scheduler`, `notifier`, `audit`), as a
    /// deployment does: one image, one binary.
    Service(service::ServiceArgs),
    /// Serve the web console for a server: upcoming destroys, cascade plans, audit, health.
    Console(console::ConsoleArgs),
    /// Probe a server's gRPC health: prints the status, exits 0 when SERVING, else 1.
    Health(health::HealthArgs),
    /// Print a reference generated from the code (configuration keys, the catalog's JSON
    /// Schema).
    #[command(hide = true)]
    Reference(reference::ReferenceArgs),
    /// Claim runs and execute them with a command template (or a simulation).
    Runner(runner::RunnerArgs),
    /// Export and verify audit chains (offline from a file, or online on the server), and
    /// list audit events.
    Audit(audit_cli::AuditArgs),
    /// Create organizations and look at them.
    Orgs(cli::orgs::OrgsArgs),
    /// Create projects, look at them and set their default inactivity period.
    Projects(cli::orgs::ProjectsArgs),
    /// Destroy windows: when automated destroys may start, for an organization or a project.
    Windows(cli::windows::WindowsArgs),
    /// Workspaces: list, show, schedule, clear, extend, upcoming destroys, preview, lock,
    /// and why a destroy was deferred.
    Workspaces(cli::workspaces::WorkspacesArgs),
    /// Runs: list, show, cancel.
    Runs(cli::runs::RunsArgs),
    /// Deprovisioning: plan, trigger and follow catalog actions; grace periods.
    Deprovision(cli::deprovision::DeprovisionArgs),
    /// Notification deliveries and configurations: failed deliveries, redelivery.
    Notifier(cli::notifier::NotifierArgs),
    /// Scheduler tasks: list, run now, pause, resume.
    Scheduler(cli::scheduler::SchedulerArgs),
    /// API tokens: create (the secret is shown once), list, revoke.
    Tokens(cli::tokens::TokensArgs),
    /// One screen on the server: services' health, failing tasks, due destroys, overdue grace
    /// periods, dead letters.
    Status(cli::status::StatusArgs),
    /// Contexts of the config file (server, token, CA, default organization): set, use,
    /// list.
    Config(cli::config::ConfigArgs),
    /// Print a shell completion script: `source <(ebb completion bash)`.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let mut command = Cli::command();
    // The context's organization is the default of every `--organization`: after a flag and
    // `EBB_ORGANIZATION_ID`, before the "required" error.
    let org = cli::connection::active_context(context_flag(&args).as_deref())
        .ok()
        .flatten()
        .and_then(|(_, _, context)| context.organization)
        .filter(|o| !o.is_empty());
    if let Some(org) = org {
        command = default_organization(command, &org);
    }
    let matches = command.get_matches_from(&args);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Serve(args) => serve::main(args),
        Command::Service(args) => service::main(args),
        Command::Console(args) => console::main(args),
        Command::Health(args) => health::main(args),
        Command::Reference(args) => reference::main(args),
        Command::Runner(args) => runner::main(args),
        Command::Audit(args) => audit_cli::main(args),
        Command::Orgs(args) => cli::orgs::orgs(args),
        Command::Projects(args) => cli::orgs::projects(args),
        Command::Windows(args) => cli::windows::main(args),
        Command::Workspaces(args) => cli::workspaces::main(args),
        Command::Runs(args) => cli::runs::main(args),
        Command::Deprovision(args) => cli::deprovision::main(args),
        Command::Notifier(args) => cli::notifier::main(args),
        Command::Scheduler(args) => cli::scheduler::main(args),
        Command::Config(args) => cli::config::main(args),
        Command::Tokens(args) => cli::tokens::main(args),
        Command::Status(args) => cli::status::main(args),
        Command::Completion { shell } => {
            // Into a buffer first: `| head` closing the pipe is not a panic.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ebb", &mut script);
            cli::output::emit(&String::from_utf8_lossy(&script));
            ExitCode::SUCCESS
        }
    }
}

/// `--context NAME` (or `EBB_CONTEXT`), read before the command line is parsed because the
/// context gives defaults to the parser.
fn context_flag(args: &[OsString]) -> Option<String> {
    let mut words = args.iter().skip(1).filter_map(|a| a.to_str());
    while let Some(word) = words.next() {
        if word == "--" {
            break;
        }
        if word == "--context" {
            return words.next().map(str::to_owned);
        }
        if let Some(name) = word.strip_prefix("--context=") {
            return Some(name.to_owned());
        }
    }
    std::env::var("EBB_CONTEXT").ok().filter(|c| !c.is_empty())
}

/// Gives every argument named `organization`, in every subcommand, the default `org`.
fn default_organization(mut command: clap::Command, org: &str) -> clap::Command {
    let subcommands: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in subcommands {
        command = command.mut_subcommand(name, |s| default_organization(s, org));
    }
    if command
        .get_arguments()
        .any(|a| a.get_id() == "organization")
    {
        command = command.mut_arg("organization", |a| {
            a.default_value(org.to_owned()).required(false)
        });
    }
    command
}
