//! `ebb`: the front door to Ebb.

mod audit_cli;
mod cli;
mod health;
mod reference;
mod runner;
mod serve;
mod service;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve::main(args),
        Command::Service(args) => service::main(args),
        Command::Health(args) => health::main(args),
        Command::Reference(args) => reference::main(args),
        Command::Runner(args) => runner::main(args),
        Command::Audit(args) => audit_cli::main(args),
        Command::Orgs(args) => cli::orgs::orgs(args),
        Command::Projects(args) => cli::orgs::projects(args),
        Command::Workspaces(args) => cli::workspaces::main(args),
        Command::Runs(args) => cli::runs::main(args),
        Command::Deprovision(args) => cli::deprovision::main(args),
        Command::Notifier(args) => cli::notifier::main(args),
        Command::Scheduler(args) => cli::scheduler::main(args),
    }
}
