//! What a case is made of: the organization and entity graph it starts from, the
//! operations of its steps, and how both are generated.

use ebb_common::time::EpochMs;
use proptest::prelude::*;

pub(super) const MINUTE: i64 = 60_000;
pub(super) const HOUR: i64 = 60 * MINUTE;
pub(super) const DAY: i64 = 24 * HOUR;
/// Where every case's clock starts: 2026-01-01T00:00:00Z.
pub(super) const START: EpochMs = 1_767_225_600_000;
/// The organization's reminder lead times; the longest is the default minimum notice.
pub(super) const LEAD_TIMES: [i64; 2] = [24 * HOUR, 12 * HOUR];
/// The scheduler's shards, each ticked in turn.
pub(super) const SHARDS: i32 = 2;
pub(super) const RUN_LEASE_MS: i64 = MINUTE;
pub(super) const MAX_RUN_ATTEMPTS: i32 = 3;
pub(super) const API: &str = "api";
/// The recurring schedules cases set: (cron, IANA time zone).
pub(super) const RECURRING: [(&str, &str); 3] = [
    ("0 * * * *", "UTC"),
    ("30 2 * * *", "Europe/Berlin"),
    ("0 19 * * FRI", "America/New_York"),
];

/// The destroy windows cases set: (days, start, end, IANA time zone).
pub(super) const WINDOWS: [(&str, &str, &str, &str); 2] = [
    ("mon-fri", "09:00", "17:00", "Europe/Berlin"),
    ("sat,sun", "20:00", "24:00", "America/New_York"),
];

/// The workspaces of every case, by index: (project, labelled `env=prod`). 0–2 stand alone,
/// 3–5 materialize the tenants, 6–7 the accounts the tenants run on.
pub(super) const LAYOUT: [(usize, bool); 8] = [
    (0, true),
    (0, false),
    (1, true),
    (0, false),
    (1, true),
    (1, false),
    (0, true),
    (1, false),
];
pub(super) const WORKSPACES: usize = LAYOUT.len();
const TENANTS: usize = 3;
pub(super) const ACCOUNTS: usize = 2;
pub(super) const FIRST_TENANT_WORKSPACE: usize = 3;
pub(super) const FIRST_ACCOUNT_WORKSPACE: usize = FIRST_TENANT_WORKSPACE + TENANTS;

/// The organization, projects and entity graph a case starts from.
#[derive(Debug, Clone)]
pub(super) struct Setup {
    /// `None`: the longest reminder lead time (24 h).
    pub(super) minimum_notice_hours: Option<i64>,
    pub(super) confirm_threshold: i32,
    pub(super) retry_limit: i32,
    /// Whether the label policy `env=prod` protects from the start.
    pub(super) protect_prod: bool,
    pub(super) project_default_hours: [Option<i64>; 2],
    /// Per tenant, one bit per account it `runs_on` (never zero).
    pub(super) runs_on: [u8; TENANTS],
    /// Whether auto-destroy runs wait for approval (within [`APPROVAL_WINDOW_HOURS`]).
    pub(super) require_approval: bool,
    /// The organization's destroy windows, [`WINDOWS`]`[i]`; `None`: any time.
    pub(super) windows: Option<usize>,
    /// With `require_approval`: only workspaces labelled `env=prod` need it.
    pub(super) approval_prod_only: bool,
}

/// How long an auto-destroy run waits for approval before it is canceled.
pub(super) const APPROVAL_WINDOW_HOURS: i64 = 6;

/// One step. Indices pick a workspace, project or tenant of [`LAYOUT`]; durations are in the
/// unit their name says.
#[derive(Debug, Clone)]
pub(super) enum Op {
    Tick,
    Advance {
        minutes: i64,
    },
    ScheduleAt {
        ws: usize,
        in_minutes: i64,
    },
    ScheduleInactivity {
        ws: usize,
        hours: i64,
    },
    Extend {
        ws: usize,
        hours: i64,
    },
    /// Sets the recurring schedule [`RECURRING`]`[pattern]`.
    ScheduleRecurring {
        ws: usize,
        pattern: usize,
    },
    ClearRecurring {
        ws: usize,
    },
    Clear {
        ws: usize,
        at: bool,
        inactivity: bool,
        inherit: bool,
    },
    Protect {
        ws: usize,
        on: bool,
    },
    Relabel {
        ws: usize,
        prod: bool,
    },
    LabelPolicy {
        protect_prod: bool,
        wrong_confirm: bool,
    },
    ProjectDefault {
        project: usize,
        hours: Option<i64>,
        wrong_confirm: bool,
    },
    Lock {
        ws: usize,
        on: bool,
    },
    Archive {
        ws: usize,
        on: bool,
    },
    Apply {
        ws: usize,
    },
    ManualDestroy {
        ws: usize,
    },
    RunnerSucceeds,
    RunnerFails,
    RunnerVanishes,
    /// A runner claims up to three runs in one call (`ClaimRuns`) and completes them all in
    /// one (`CompleteRuns`).
    RunnerTakesSeveral {
        succeed: bool,
    },
    LateCompletion {
        succeed: bool,
    },
    RescueLeases,
    Cancel {
        pick: usize,
    },
    Deprovision {
        tenant: usize,
        grace_hours: i64,
        wrong_confirm: bool,
    },
    FinalizeGrace,
    /// An admin approves or rejects one of the runs awaiting approval.
    Decide {
        pick: usize,
        approve: bool,
    },
    /// The organization's destroy windows become [`WINDOWS`]`[pattern]`, or any time.
    Windows {
        pattern: Option<usize>,
        wrong_confirm: bool,
    },
}

pub(super) fn setup_strategy() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![Just(None), Just(Some(0)), Just(Some(6)), Just(Some(48))],
        0..=3i32,
        0..=2i32,
        any::<bool>(),
        [hours_or_none(), hours_or_none()],
        [1..=3u8, 1..=3u8, 1..=3u8],
        prop_oneof![2 => Just(false), 1 => Just(true)],
        windows(),
        any::<bool>(),
    )
        .prop_map(
            |(
                minimum_notice_hours,
                confirm_threshold,
                retry_limit,
                protect_prod,
                project_default_hours,
                runs_on,
                require_approval,
                windows,
                approval_prod_only,
            )| Setup {
                minimum_notice_hours,
                confirm_threshold,
                retry_limit,
                protect_prod,
                project_default_hours,
                runs_on,
                require_approval,
                windows,
                approval_prod_only,
            },
        )
}

fn windows() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![2 => Just(None), 1 => (0..WINDOWS.len()).prop_map(Some)]
}

/// Inactivity periods from the shortest allowed (1 h) to days.
pub(super) fn hours() -> impl Strategy<Value = i64> {
    prop_oneof![Just(1i64), Just(6), Just(12), Just(24), Just(48), Just(96)]
}

fn hours_or_none() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![1 => Just(None), 2 => hours().prop_map(Some)]
}

pub(super) fn op_strategy() -> impl Strategy<Value = Op> {
    // Mostly the same two workspaces, so that operations meet; now and then any of them.
    let ws = || prop_oneof![4 => Just(0usize), 3 => Just(1usize), 2 => 0..WORKSPACES];
    // A wrong confirmation now and then, so that refusals are exercised too.
    let wrong = || prop_oneof![3 => Just(false), 1 => Just(true)];
    let minutes = prop_oneof![
        Just(1i64),
        Just(30),
        Just(2 * 60),
        Just(12 * 60),
        Just(24 * 60),
        Just(72 * 60),
        1..=(4 * 24 * 60i64),
    ];
    prop_oneof![
        6 => Just(Op::Tick),
        6 => minutes.prop_map(|minutes| Op::Advance { minutes }),
        3 => (ws(), 1..=(4 * 24 * 60i64))
            .prop_map(|(ws, in_minutes)| Op::ScheduleAt { ws, in_minutes }),
        3 => (ws(), hours()).prop_map(|(ws, hours)| Op::ScheduleInactivity { ws, hours }),
        1 => (ws(), 1..=48i64).prop_map(|(ws, hours)| Op::Extend { ws, hours }),
        3 => (ws(), 0..RECURRING.len())
            .prop_map(|(ws, pattern)| Op::ScheduleRecurring { ws, pattern }),
        1 => ws().prop_map(|ws| Op::ClearRecurring { ws }),
        2 => (ws(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(ws, at, inactivity, inherit)| Op::Clear {
                ws,
                // The API refuses a clear of nothing, and `inherit` without the inactivity.
                at: at || !inactivity,
                inactivity,
                inherit: inherit && inactivity,
            }
        ),
        4 => (ws(), any::<bool>()).prop_map(|(ws, on)| Op::Protect { ws, on }),
        1 => (ws(), any::<bool>()).prop_map(|(ws, prod)| Op::Relabel { ws, prod }),
        2 => (any::<bool>(), wrong()).prop_map(|(protect_prod, wrong_confirm)| {
            Op::LabelPolicy { protect_prod, wrong_confirm }
        }),
        2 => (0..2usize, hours_or_none(), wrong()).prop_map(
            |(project, hours, wrong_confirm)| Op::ProjectDefault { project, hours, wrong_confirm }
        ),
        1 => (ws(), any::<bool>()).prop_map(|(ws, on)| Op::Lock { ws, on }),
        1 => (ws(), any::<bool>()).prop_map(|(ws, on)| Op::Archive { ws, on }),
        4 => ws().prop_map(|ws| Op::Apply { ws }),
        1 => ws().prop_map(|ws| Op::ManualDestroy { ws }),
        3 => Just(Op::RunnerSucceeds),
        2 => Just(Op::RunnerFails),
        1 => Just(Op::RunnerVanishes),
        1 => any::<bool>().prop_map(|succeed| Op::RunnerTakesSeveral { succeed }),
        1 => any::<bool>().prop_map(|succeed| Op::LateCompletion { succeed }),
        1 => Just(Op::RescueLeases),
        1 => (0..4usize).prop_map(|pick| Op::Cancel { pick }),
        3 => (0..TENANTS, 0..=2i64, wrong()).prop_map(|(tenant, grace_hours, wrong_confirm)| {
            Op::Deprovision { tenant, grace_hours, wrong_confirm }
        }),
        1 => Just(Op::FinalizeGrace),
        2 => (0..4usize, prop_oneof![3 => Just(true), 1 => Just(false)])
            .prop_map(|(pick, approve)| Op::Decide { pick, approve }),
        1 => (windows(), wrong())
            .prop_map(|(pattern, wrong_confirm)| Op::Windows { pattern, wrong_confirm }),
    ]
}
