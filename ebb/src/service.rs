//! `ebb service NAME`: one of Ebb's four services in its own process, as a deployment runs it
//! (one image, one binary; the service is chosen by the command line).

use std::process::ExitCode;

use ebb_common::app::{self, ServerFlags};

/// Runs one service.
#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    service: Service,
}

#[derive(Debug, clap::Subcommand)]
enum Service {
    /// lifecycle-svc: workspaces, runs, auto-destroy schedules, deprovisioning, the outbox.
    Lifecycle(ServerFlags),
    /// scheduler-svc: leases the periodic tasks (any number of replicas).
    Scheduler(ServerFlags),
    /// notifier-svc: notification configurations and deliveries.
    Notifier(ServerFlags),
    /// audit-svc: the hash-chained audit trail.
    Audit(ServerFlags),
}

/// Runs the chosen service to completion: exit code 0 after a clean shutdown, 2 for a
/// configuration it refuses, 1 for any other failure.
pub fn main(args: ServiceArgs) -> ExitCode {
    match args.service {
        Service::Lifecycle(flags) => app::main(
            "lifecycle-svc",
            lifecycle_svc::Config::default(),
            flags,
            lifecycle_svc::build,
        ),
        Service::Scheduler(flags) => app::main(
            "scheduler-svc",
            scheduler_svc::Config::default(),
            flags,
            scheduler_svc::build,
        ),
        Service::Notifier(flags) => app::main(
            "notifier-svc",
            notifier_svc::Config::default(),
            flags,
            notifier_svc::build,
        ),
        Service::Audit(flags) => app::main(
            "audit-svc",
            audit_svc::Config::default(),
            flags,
            audit_svc::build,
        ),
    }
}
