//! `ebb`: the front door to Ebb.

mod audit_cli;
mod runner;
mod serve;

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
    /// Claim runs and execute them with a command template (or a simulation).
    Runner(runner::RunnerArgs),
    /// Export and verify audit chains.
    Audit(audit_cli::AuditArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve::main(args),
        Command::Runner(args) => runner::main(args),
        Command::Audit(args) => audit_cli::main(args),
    }
}
