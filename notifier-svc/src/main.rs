use std::process::ExitCode;

use clap::Parser;
use ebb_common::app::{self, ServerFlags};

/// Ebb's notifier: notification configurations and deliveries.
#[derive(Parser)]
#[command(name = "notifier-svc", version)]
struct Cli {
    #[command(flatten)]
    server: ServerFlags,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    app::main(
        "notifier-svc",
        notifier_svc::Config::default(),
        cli.server,
        notifier_svc::build,
    )
}
