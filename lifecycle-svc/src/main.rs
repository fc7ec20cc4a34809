use std::process::ExitCode;

use clap::Parser;
use ebb_common::app::{self, ServerFlags};

/// Ebb's lifecycle service: workspaces, runs, auto-destroy schedules and the outbox.
#[derive(Parser)]
#[command(name = "lifecycle-svc", version)]
struct Cli {
    #[command(flatten)]
    server: ServerFlags,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    app::main(
        "lifecycle-svc",
        lifecycle_svc::Config::default(),
        cli.server,
        lifecycle_svc::build,
    )
}
