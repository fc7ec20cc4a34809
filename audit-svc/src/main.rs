use std::process::ExitCode;

use clap::Parser;
use ebb_common::app::{self, ServerFlags};

/// Ebb's append-only, hash-chained audit store.
#[derive(Parser)]
#[command(name = "audit-svc", version)]
struct Cli {
    #[command(flatten)]
    server: ServerFlags,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    app::main(
        "audit-svc",
        audit_svc::Config::default(),
        cli.server,
        audit_svc::build,
    )
}
