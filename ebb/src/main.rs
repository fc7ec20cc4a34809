//! `ebb`: the front door to Ebb.

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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve::main(args),
    }
}
