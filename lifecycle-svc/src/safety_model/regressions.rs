//! Sequences worth keeping, replayed on every run: the ones the model found (those marked
//! `#[ignore]` still fail: each names the rule it breaks; remove the `ignore` with the fix),
//! and paths it must keep allowing.

use super::case::{Op, Setup};
use super::running::replay;

/// Default settings: nothing shortened, the minimum notice at its default (24 h).
fn defaults() -> Setup {
    Setup {
        minimum_notice_hours: None,
        confirm_threshold: 0,
        retry_limit: 1,
        protect_prod: false,
        project_default_hours: [None, None],
        runs_on: [1, 1, 1],
    }
}

/// DP-10, the way it should go: t0 and t1 run on a0; deprovisioning t0 keeps a0, and
/// deprovisioning t1 then tears it down, once.
#[test]
fn a_shared_account_is_destroyed_once_after_its_last_tenant() {
    let deprovision = |tenant| Op::Deprovision {
        tenant,
        grace_hours: 0,
        wrong_confirm: false,
    };
    replay(
        Setup {
            runs_on: [1, 1, 2],
            ..defaults()
        },
        &[
            deprovision(0),
            Op::RunnerSucceeds,
            deprovision(1),
            Op::RunnerSucceeds,
            Op::RunnerSucceeds,
            Op::RunnerSucceeds,
        ],
    );
}
