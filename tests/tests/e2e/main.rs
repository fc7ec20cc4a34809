//! Ebb's end-to-end tests, one module per area, all in this one test binary so that cargo
//! links it once. A new area is a new module here, not a new file beside this directory:
//! every file directly in `tests/tests/` would be a binary of its own.
//!
//! The tests start the real service binaries (`cargo build --bins` first) on SQLite, or on
//! PostgreSQL with `EBB_TEST_DATABASE_URL` set; see the `ebb_tests` library. Tests that only
//! mean something on PostgreSQL are `#[ignore]`d, and run with `-- --include-ignored`.

mod approval;
mod at_rest;
mod audit;
mod auth;
mod auto_destroy;
mod cascades;
mod claims;
mod cli;
mod cli_contexts;
mod cli_names;
mod cli_output;
mod clients;
mod console;
mod dashboard;
mod deployments;
mod deprovision;
mod entity_schedules;
mod foundation;
mod hostile;
mod metrics;
mod notifier;
mod outage;
mod reads;
mod runbook;
mod safety;
mod scheduler_replicas;
mod schedules;
mod security;
mod shared_upstreams;
mod snooze;
mod support;
mod tools;
mod tracing;
mod windows;
