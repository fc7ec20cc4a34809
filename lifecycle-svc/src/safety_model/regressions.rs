//! Sequences worth keeping, replayed on every run: the ones the model found (each failed
//! before its fix and now guards it), and paths it must keep allowing.

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
        require_approval: false,
        windows: None,
        approval_prod_only: false,
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

/// AD-12: a schedule that comes due while protected is consumed. The label policy
/// protects w2 before its inactivity deadline (day 1, 00:00) and its one-shot (00:01);
/// lifting the policy on day 3 consumes only the earlier of the two, and the one-shot that
/// came while protected fires at the next tick.
#[test]
fn lifting_protection_consumes_every_due_time_that_passed() {
    replay(
        defaults(),
        &[
            Op::ProjectDefault {
                project: 1,
                hours: Some(1),
                wrong_confirm: false,
            },
            Op::ScheduleAt {
                ws: 2,
                in_minutes: 1441,
            },
            Op::LabelPolicy {
                protect_prod: true,
                wrong_confirm: false,
            },
            Op::Advance { minutes: 4320 },
            Op::LabelPolicy {
                protect_prod: false,
                wrong_confirm: false,
            },
            Op::Tick,
        ],
    );
}

/// AD-12 through an archive: the one-shot comes due while w1 is protected and before any
/// tick; archiving, unprotecting and restoring never consumes it, and it fires at once.
#[test]
fn a_due_time_that_came_while_protected_does_not_fire_after_a_restore() {
    replay(
        defaults(),
        &[
            Op::ScheduleAt {
                ws: 1,
                in_minutes: 60,
            },
            Op::Protect { ws: 1, on: true },
            Op::Advance { minutes: 120 },
            Op::Archive { ws: 1, on: true },
            Op::Protect { ws: 1, on: false },
            Op::Archive { ws: 1, on: false },
            Op::Tick,
        ],
    );
}

/// AD-12: lifting protection gives the minimum notice. An inactivity destroy fires with
/// notice and fails; its retry (AD-8) is pending when w1 is protected and unprotected
/// again, and fires a minute later instead of a day later.
#[test]
fn a_retry_waits_the_minimum_notice_after_protection_is_lifted() {
    replay(
        defaults(),
        &[
            Op::ScheduleInactivity { ws: 1, hours: 1 },
            Op::Advance { minutes: 24 * 60 },
            Op::Tick,
            Op::RunnerFails,
            Op::Protect { ws: 1, on: true },
            Op::Protect { ws: 1, on: false },
            Op::Advance { minutes: 1 },
            Op::Tick,
        ],
    );
}

/// AD-12: a change that leaves a workspace due sooner than the minimum notice is clamped.
/// w0's auto-destroy failed with no retries left (FAILED, left for an operator); clearing
/// its one-shot — which it does not even have — resets the status and re-arms the
/// inactivity deadline of the state applied since, one hour away instead of a day.
#[test]
fn clearing_a_failed_auto_destroy_gives_the_minimum_notice() {
    replay(
        Setup {
            retry_limit: 0,
            project_default_hours: [Some(1), None],
            ..defaults()
        },
        &[
            Op::Advance { minutes: 120 },
            Op::Tick,
            Op::RunnerFails,
            Op::Apply { ws: 0 },
            Op::Clear {
                ws: 0,
                at: true,
                inactivity: false,
                inherit: false,
            },
            Op::Advance { minutes: 120 },
            Op::Tick,
        ],
    );
}

/// DP-10 (destroyed exactly once) and DP-5 (a failed run is retried from its failed
/// step): t0 is the last user of both accounts; its cascade destroys a0, then a1's run is
/// canceled and the action run fails. Triggering t0 again plans a0 anew — its edge is
/// still `removing` — and queues a second destroy of the account already destroyed.
#[test]
fn a_destroyed_account_is_not_destroyed_again() {
    let deprovision = |tenant| Op::Deprovision {
        tenant,
        grace_hours: 0,
        wrong_confirm: false,
    };
    replay(
        Setup {
            runs_on: [3, 1, 2],
            ..defaults()
        },
        &[
            deprovision(1),
            Op::RunnerSucceeds,
            deprovision(2),
            Op::RunnerSucceeds,
            deprovision(0),
            Op::RunnerSucceeds,
            Op::RunnerSucceeds,
            Op::Cancel { pick: 0 },
            deprovision(0),
            Op::RunnerSucceeds,
        ],
    );
}

/// The same through the label policy, as the exploration first found it (minimum notice
/// 48 h; the destroy that failed was an explicit one-shot).
#[test]
fn a_retry_waits_the_minimum_notice_after_relabelling() {
    replay(
        Setup {
            minimum_notice_hours: Some(48),
            protect_prod: true,
            ..defaults()
        },
        &[
            Op::ScheduleAt {
                ws: 1,
                in_minutes: 1,
            },
            Op::Advance { minutes: 1 },
            Op::Tick,
            Op::RunnerFails,
            Op::Relabel { ws: 1, prod: true },
            Op::Relabel { ws: 1, prod: false },
            Op::Advance { minutes: 1 },
            Op::Tick,
        ],
    );
}

/// Approval before destroy: a run awaiting approval is not taken by the runner; approved, it
/// is; another left past its approval window is canceled by the next round, never approved, and
/// a rejected one is canceled too. The checks hold after every step.
#[test]
fn unapproved_destroys_never_run_and_approval_never_comes_by_itself() {
    let due_now = |ws| Op::ScheduleAt { ws, in_minutes: 1 };
    replay(
        Setup {
            require_approval: true,
            ..defaults()
        },
        &[
            due_now(0),
            due_now(1),
            due_now(2),
            Op::Advance { minutes: 1 },
            Op::Tick,
            Op::RunnerSucceeds,
            Op::Decide {
                pick: 0,
                approve: true,
            },
            Op::RunnerSucceeds,
            Op::Decide {
                pick: 0,
                approve: false,
            },
            Op::Advance {
                minutes: super::case::APPROVAL_WINDOW_HOURS * 60 + 1,
            },
            Op::Tick,
            Op::RunnerSucceeds,
            Op::Decide {
                pick: 0,
                approve: true,
            },
        ],
    );
}

/// DP-10 with a runner that takes several runs per claim: t0 and t1 run on a0; once t0's
/// cascade keeps a0, t1's tears everything of t1 down, a0 last and once, whichever runs one
/// claim hands over together.
#[test]
fn a_runner_taking_several_runs_at_once_keeps_the_shared_account_until_its_last_tenant() {
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
            Op::RunnerTakesSeveral { succeed: true },
            deprovision(1),
            Op::RunnerTakesSeveral { succeed: true },
            Op::RunnerTakesSeveral { succeed: false },
            Op::RunnerTakesSeveral { succeed: true },
            Op::RunnerSucceeds,
        ],
    );
}

/// AD-12 over a long protection: a one-hour inactivity period held for three days comes due
/// 72 times, and the one-shot that came due among them (day 1, 22:10) must be consumed too,
/// not fired once protection is lifted. Consumption used to stop after 16 due times.
#[test]
fn a_long_protection_consumes_every_due_time_however_many_passed() {
    replay(
        Setup {
            minimum_notice_hours: Some(6),
            retry_limit: 0,
            ..defaults()
        },
        &[
            Op::ScheduleInactivity { ws: 0, hours: 1 },
            Op::ScheduleAt {
                ws: 0,
                in_minutes: 1330,
            },
            Op::Protect { ws: 0, on: true },
            Op::Advance { minutes: 4320 },
            Op::Protect { ws: 0, on: false },
            Op::Tick,
        ],
    );
}
