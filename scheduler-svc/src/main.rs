use std::process::ExitCode;

use clap::Parser;
use ebb_common::app::{self, ServerFlags};

/// Ebb's scheduler: leased periodic tasks, safe with any number of replicas.
#[derive(Parser)]
#[command(name = "scheduler-svc", version)]
struct Cli {
    #[command(flatten)]
    server: ServerFlags,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    app::main(
        "scheduler-svc",
        scheduler_svc::Config::default(),
        cli.server,
        scheduler_svc::build,
    )
}
