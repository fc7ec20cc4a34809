//! What the model remembers, independently of the database, and the rules it computes
//! itself rather than asking the code under test.

use std::collections::{BTreeSet, VecDeque};

use ebb_common::time::EpochMs;

use crate::timing::recurrence::Recurrence;
use crate::workspaces::WorkspaceRow;

use chrono::{Datelike, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use super::case::{DAY, WINDOWS, WORKSPACES};

/// What the model knows independently of the database.
pub(super) struct Model {
    pub(super) now: EpochMs,
    pub(super) notice_ms: i64,
    /// The protection flag, as the operator last set it.
    pub(super) flag: [bool; WORKSPACES],
    /// Whether the workspace carries `env=prod`.
    pub(super) prod: [bool; WORKSPACES],
    /// Whether the organization's label policy protects `env=prod`.
    pub(super) policy_prod: bool,
    /// Since when each protected workspace has been protected without a break.
    pub(super) protected_since: [Option<EpochMs>; WORKSPACES],
    /// When a policy change (AD-12) last brought each workspace's destroy forward.
    pub(super) implicit_at: [Option<EpochMs>; WORKSPACES],
    /// Every one-shot time the operator chose (or extended to), per workspace.
    pub(super) explicit_at: Vec<BTreeSet<EpochMs>>,
    /// Due times that came while their workspace was protected: never to fire (AD-12).
    pub(super) came_due_protected: BTreeSet<(usize, EpochMs)>,
    /// The recurring schedule each workspace was last given, as the model parsed it.
    pub(super) recurring: Vec<Option<Recurrence>>,
    /// Occurrences the operator extended to, per workspace.
    pub(super) recurring_extended: Vec<BTreeSet<EpochMs>>,
    /// The organization's destroy windows, [`WINDOWS`]`[i]`, as last set.
    pub(super) windows: Option<usize>,
    /// Whether auto-destroys wait for approval: `Some(true)` only those of `env=prod`
    /// workspaces, `Some(false)` all of them.
    pub(super) approval: Option<bool>,
    /// Runs already checked.
    pub(super) runs: BTreeSet<String>,
    /// Runs whose runner vanished after claiming them, with their lease tokens.
    pub(super) abandoned: VecDeque<(String, String)>,
}

impl Model {
    pub(super) fn protected(&self, ws: usize) -> bool {
        self.flag[ws] || (self.policy_prod && self.prod[ws])
    }

    pub(super) fn protection(&self) -> [bool; WORKSPACES] {
        std::array::from_fn(|i| self.protected(i))
    }
}

impl Model {
    /// Whether a destroy may start at `t` under the windows last set, read off the local
    /// wall clock here rather than by the code under test.
    pub(super) fn in_window(&self, t: EpochMs) -> bool {
        let Some((days, start, end, zone)) = self.windows.map(|i| WINDOWS[i]) else {
            return true;
        };
        let zone: Tz = zone.parse().expect("a zone of the cases");
        let Some(local) = Utc.timestamp_millis_opt(t).single() else {
            return false;
        };
        let local = local.with_timezone(&zone);
        let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
            [local.weekday().num_days_from_monday() as usize];
        let open_day = match days {
            "mon-fri" => !matches!(day, "sat" | "sun"),
            other => other.split(',').any(|d| d == day),
        };
        let hhmm = format!("{:02}:{:02}", local.hour(), local.minute());
        open_day && start <= hhmm.as_str() && hhmm.as_str() < end
    }

    /// Whether `due` is a time the workspace's recurring schedule names: an occurrence of the
    /// cron as the model reads it, or one the operator extended to.
    pub(super) fn is_occurrence(&self, ws: usize, due: EpochMs) -> bool {
        self.recurring[ws]
            .as_ref()
            .is_some_and(|r| r.next_at_or_after(due) == Some(due))
            || self.recurring_extended[ws].contains(&due)
    }

    /// The current occurrence of a workspace's recurring schedule, computed by the model: the
    /// stored one until it has fired, then the cron's next.
    pub(super) fn recurring_due(&self, i: usize, ws: &WorkspaceRow) -> Option<EpochMs> {
        let r = self.recurring[i].as_ref()?;
        let stored = ws.recurring_due_at?;
        match ws.last_fired_due_at {
            Some(fired) if stored <= fired => r.next_after(fired),
            _ => Some(stored),
        }
    }
}

/// The due time of a workspace's inactivity branch as DESIGN AD-3 defines it, computed here
/// rather than by the code under test.
pub(super) fn inactivity_due(ws: &WorkspaceRow) -> Option<EpochMs> {
    if !ws.applied_since_destroy {
        return None;
    }
    let inactivity = if ws.inherits_project_auto_destroy {
        ws.project_default_inactivity_ms
    } else {
        ws.auto_destroy_inactivity_ms
    }?;
    let due = ws.last_state_change_at? + inactivity + ws.inactivity_extension_ms;
    Some(ws.inactivity_not_before.map_or(due, |floor| due.max(floor)))
}

/// Whether a change moved a destroy into the blast-radius window (AD-13): due within 7 days
/// now, and not that soon before.
pub(super) fn newly_within_week(
    before: Option<EpochMs>,
    after: Option<EpochMs>,
    now: EpochMs,
) -> bool {
    let horizon = now + 7 * DAY;
    match after {
        Some(at) if at <= horizon => before.is_none_or(|b| b > horizon || at < b),
        _ => false,
    }
}
