//! A model-based safety test of destruction, in the spirit of FoundationDB's simulation tests.
//!
//! Random sequences of operations — schedules, protection by flag and by label policy,
//! project defaults, locks, archives, applied state versions, manual destroys, the
//! scheduler's tick, runners that succeed, fail or vanish, cancels, lease rescues, tenant
//! deprovisioning and the grace sweep — drive lifecycle's domain functions directly (no gRPC),
//! each in its own write transaction and in the scope of the actor that makes it in
//! production, with a clock the test controls. After every step the database is checked
//! against what the model remembers of the past:
//!
//! 1. no auto-destroy run is queued for a workspace protected (flag or policy) at that time
//!    (AD-4), and a protected workspace refuses a schedule;
//! 2. never two active destroy runs for one workspace (AD-6);
//! 3. never two runs for one fire key (AD-6);
//! 4. after a change other than an explicit `auto_destroy_at`, an applied state version or a
//!    failed run brought a destroy forward, no auto-destroy run before the minimum notice
//!    has passed — unless it is for a one-shot the operator chose (AD-12);
//! 5. every destroy run has a `run.queued` event naming its actor and its cause: the fire
//!    key, the action run whose step it carries out, or the manual request ("Rules for every
//!    RPC");
//! 6. a due time that comes while its workspace is protected never fires (unless the
//!    operator has set that workspace's schedule anew since), and is recorded as
//!    `workspace.auto_destroy.skipped` by the tick that finds it or the change that lifts the
//!    protection (AD-12);
//! 7. a cascade queues no destroy run on a shared account while a tenant still runs on it:
//!    never while one has an `active` edge to it, and only once each is torn down (DP-10);
//!
//! and, along the way: the stored protection matches flag and label policy; a refused
//! operation changes nothing; the blast-radius guard of a policy change asks for exactly the
//! number of destroys it brings within 7 days, accepts that number and refuses another, and
//! the guard of a cascade refuses a count other than its dry run's (AD-13).
//!
//! A violation shrinks to a minimal sequence, printed as a regression test to paste into
//! [`regressions`]. Runs on SQLite (a fresh in-memory database per case) and, when
//! `EBB_TEST_DATABASE_URL` names a PostgreSQL server, on a fresh database per case cloned from
//! one migrated template; every database is dropped at the end. `EBB_SAFETY_MODEL_CASES`
//! overrides the number of cases (e.g. for a long local soak); each run explores new cases.

mod case;
mod checks;
mod databases;
mod model;
mod operations;
mod policy_change;
mod regressions;
mod running;
mod world;

use databases::{Backend, PostgresTemplate, postgres_server};
use running::{cases, explore};

/// Cases per run and how long a violation may take to shrink, per backend: a run stays
/// within about a minute on SQLite and two on PostgreSQL on a small machine, failing or not.
const SQLITE_CASES: u32 = 64;
const SQLITE_SHRINK_MS: u32 = 30_000;
const POSTGRES_CASES: u32 = 48;
const POSTGRES_SHRINK_MS: u32 = 60_000;

#[test]
fn safety_model_on_sqlite() {
    explore(&Backend::Sqlite, cases(SQLITE_CASES), SQLITE_SHRINK_MS);
}

#[test]
fn safety_model_on_postgres() {
    let Some(server) = postgres_server() else {
        eprintln!("skipping the PostgreSQL safety model: EBB_TEST_DATABASE_URL is not set");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let template = rt
        .block_on(PostgresTemplate::create(&server))
        .expect("the template database");
    drop(rt);
    let backend = Backend::Postgres {
        server,
        template: template.name().to_owned(),
    };
    explore(&backend, cases(POSTGRES_CASES), POSTGRES_SHRINK_MS);
    drop(template);
}
