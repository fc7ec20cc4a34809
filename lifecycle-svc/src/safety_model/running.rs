//! Running cases: exploring random ones, shrinking a violation to a sequence printed as a
//! regression test, replaying one, and tallying what the cases covered.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use ebb_common::time::rfc3339;
use proptest::test_runner::{
    Config as ProptestConfig, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner,
};
use sea_orm::FromQueryResult;

use crate::store::query_all;

use super::case::{Op, Setup, op_strategy, setup_strategy};
use super::databases::{Backend, PostgresTemplate, case_database, postgres_server};
use super::world::{World, unexpected};

const MAX_STEPS: usize = 120;

/// What the explored cases did, summed over cases, so that a passing run can be judged: a
/// model that never fires, consumes or refuses anything proves nothing.
static COVERAGE: std::sync::Mutex<BTreeMap<String, u64>> = std::sync::Mutex::new(BTreeMap::new());

pub(super) fn count(what: impl Into<String>, n: u64) {
    if let Ok(mut c) = COVERAGE.lock() {
        *c.entry(what.into()).or_default() += n;
    }
}

#[derive(Debug, FromQueryResult)]
struct Tally {
    what: String,
    n: i64,
}

/// Adds what one case's database shows happened.
async fn tally(world: &World) -> Result<(), String> {
    let conn = &world.core.db.conn;
    for sql in [
        "SELECT 'runs ' || source || ' ' || status AS what, COUNT(*) AS n FROM runs \
         GROUP BY source, status",
        "SELECT 'event ' || type AS what, COUNT(*) AS n FROM outbox WHERE type IN \
         ('workspace.auto_destroy.skipped', 'workspace.auto_destroy.deferred', \
         'workspace.auto_destroy.reminder', 'workspace.auto_destroy.failed', \
         'workspace.auto_destroy.succeeded', 'action_run.succeeded', 'action_run.failed', \
         'deprovision.scheduled', 'deprovision.finalized', 'deprovision.upstream_kept', \
         'run.canceled', 'run.errored') GROUP BY type",
        "SELECT 'runs approval ' || approval || ' ' || status AS what, COUNT(*) AS n FROM runs \
         WHERE approval IS NOT NULL GROUP BY approval, status",
        "SELECT 'runs deprovision on an account ' || r.status AS what, COUNT(*) AS n \
         FROM runs r JOIN entities a ON a.workspace_id = r.workspace_id AND a.kind = 'account' \
         WHERE r.source = 'deprovision' GROUP BY r.status",
    ] {
        let rows: Vec<Tally> = query_all(conn, sql, [])
            .await
            .map_err(|e| unexpected("tallying", e))?;
        for r in rows {
            count(r.what, r.n as u64);
        }
    }
    count(
        "model: held due times recorded",
        world.model.came_due_protected.len() as u64,
    );
    Ok(())
}

/// How a case failed: at which step (`None`: setting up or tearing down), and why.
#[derive(Debug)]
struct Failure {
    step: Option<usize>,
    reason: String,
}

impl From<String> for Failure {
    fn from(reason: String) -> Self {
        Self { step: None, reason }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Runs one case.
async fn run_case(backend: &Backend, setup: &Setup, ops: &[Op]) -> Result<(), Failure> {
    let (db, scratch) = case_database(backend).await?;
    let pool = db.conn.clone();
    let result = async {
        let mut world = World::create(db, setup).await?;
        for (n, op) in ops.iter().enumerate() {
            world.step(op).await.map_err(|e| Failure {
                step: Some(n),
                reason: format!("step {n} ({op:?}), clock {}: {e}", rfc3339(world.model.now)),
            })?;
        }
        Ok(tally(&world).await?)
    }
    .await;
    let _ = pool.close().await;
    drop(scratch);
    result
}

/// The seed of the exploration unless `EBB_SAFETY_MODEL_SEED` names another.
const DEFAULT_SEED: u64 = 0x0eb5_afe7_2026_1130;

pub(super) fn cases(default: u32) -> u32 {
    std::env::var("EBB_SAFETY_MODEL_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Explores `cases` random cases on `backend`; a violation panics with its minimal sequence
/// (as minimal as `shrink_ms` allows), written as a regression test.
pub(super) fn explore(backend: &Backend, cases: u32, shrink_ms: u32) {
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 50_000,
        max_shrink_time: shrink_ms,
        ..ProptestConfig::default()
    };
    let strategy = (
        setup_strategy(),
        proptest::collection::vec(op_strategy(), 1..=MAX_STEPS),
    );
    let (ran, steps) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let started = Instant::now();
    // A fixed seed keeps every run of the suite the same sequence of cases, so a red build
    // always means a change broke an invariant; set EBB_SAFETY_MODEL_SEED to explore others.
    let seed: u64 = std::env::var("EBB_SAFETY_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("safety model on {backend}: seed {seed}");
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&seed.to_le_bytes());
    }
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let result = TestRunner::new_with_rng(config, rng).run(&strategy, |(setup, ops)| {
        ran.fetch_add(1, Ordering::Relaxed);
        steps.fetch_add(ops.len(), Ordering::Relaxed);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(run_case(backend, &setup, &ops))
            .map_err(|f| TestCaseError::fail(f.to_string()))
    });
    eprintln!(
        "safety model on {backend}: {} cases, {} steps in {:.1} s",
        ran.load(Ordering::Relaxed),
        steps.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    if let Ok(mut c) = COVERAGE.lock() {
        for (what, n) in std::mem::take(&mut *c) {
            eprintln!("  {n:>6}  {what}");
        }
    }
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, (setup, ops))) => {
            // The steps after the failing one never ran: leave them out.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let ops = match rt.block_on(run_case(backend, &setup, &ops)) {
                Err(Failure { step: Some(n), .. }) => &ops[..=n],
                _ => &ops[..],
            };
            panic!("{}", regression(backend, &reason.to_string(), &setup, ops))
        }
        Err(TestError::Abort(reason)) => panic!("safety model on {backend} aborted: {reason}"),
    }
}

/// A violation, with its sequence as a test to paste into `safety_model/regressions.rs`.
fn regression(backend: &Backend, reason: &str, setup: &Setup, ops: &[Op]) -> String {
    let mut text = format!(
        "the safety model found a violation on {backend}:\n  {reason}\n\n\
         minimal sequence ({} steps), as a regression test for \
         lifecycle-svc/src/safety_model/regressions.rs:\n\n\
         #[test]\nfn name_what_it_breaks() {{\n    replay(\n        {setup:?},\n        &[\n",
        ops.len()
    );
    for op in ops {
        let _ = writeln!(text, "            Op::{op:?},");
    }
    text.push_str("        ],\n    );\n}\n");
    text
}

/// Replays one sequence on SQLite and, when configured, PostgreSQL; panics on a violation.
pub(super) fn replay(setup: Setup, ops: &[Op]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut backends = vec![Backend::Sqlite];
    let mut template = None;
    if let Some(server) = postgres_server() {
        let t = rt
            .block_on(PostgresTemplate::create(&server))
            .expect("the template database");
        backends.push(Backend::Postgres {
            server,
            template: t.name().to_owned(),
        });
        template = Some(t);
    }
    for backend in &backends {
        if let Err(failure) = rt.block_on(run_case(backend, &setup, ops)) {
            panic!("{}", regression(backend, &failure.reason, &setup, ops));
        }
    }
    drop(template);
}
