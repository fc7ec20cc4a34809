//! When a workspace's auto-destroy comes due, and when its reminders go out: pure functions of
//! the workspace's settings, so every decision is computed the same way everywhere.

use ebb_common::time::EpochMs;

use super::recurrence::Recurrence;
use super::windows::InForce;

/// The inputs of the auto-destroy timing of one workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timing {
    /// Archived workspaces are never destroyed again.
    pub archived: bool,
    /// By flag or by organization policy.
    pub protected: bool,
    /// Retries are exhausted: left for an operator.
    pub failed: bool,
    /// One-shot destroy time.
    pub auto_destroy_at: Option<EpochMs>,
    /// Inactivity in force (own or inherited).
    pub inactivity_ms: Option<i64>,
    /// Time of the last applied state version.
    pub last_state_change_at: Option<EpochMs>,
    /// Whether an applied state version happened since the last destroy.
    pub applied_since_destroy: bool,
    /// The latest due time that already produced a run.
    pub last_fired_due_at: Option<EpochMs>,
    /// A scheduled retry of a failed auto-destroy.
    pub retry_at: Option<EpochMs>,
    /// How far operators pushed the inactivity deadline since the last applied state.
    pub inactivity_extension_ms: i64,
    /// The inactivity branch is never due before this: the floor a policy change set so that
    /// the organization's minimum notice holds (AD-12). Cleared by an applied state version.
    pub inactivity_not_before: Option<EpochMs>,
    /// A recurring schedule (cron in a time zone).
    pub recurrence: Option<Recurrence>,
    /// The due time of its current occurrence as stored (later than the cron's when extended).
    pub recurring_due_at: Option<EpochMs>,
    /// The destroy windows in force (the project's, else the organization's): a destroy that
    /// comes due outside every window waits for the next opening.
    pub windows: InForce,
    /// Not before this: when the scheduler reached a due time outside every window (late, or
    /// held back by a lock or a run); it then waits for the first opening after this in the
    /// windows in force. Ignored once a later time fired.
    pub window_not_before: Option<EpochMs>,
}

/// Which schedule a due time belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    /// The one-shot `auto_destroy_at`.
    OneShot,
    /// The inactivity period since the last applied state.
    Inactivity,
    /// A scheduled retry of a failed auto-destroy.
    Retry,
    /// An occurrence of the recurring schedule.
    Recurring,
}

impl Branch {
    /// The schedule's name in events.
    pub fn name(self) -> &'static str {
        match self {
            Branch::OneShot => "auto_destroy_at",
            Branch::Inactivity => "inactivity",
            Branch::Retry => "retry",
            Branch::Recurring => "recurring",
        }
    }
}

impl Timing {
    /// The due time of the inactivity branch, if it applies (AD-3: only once there has been
    /// an applied state version since the last destroy).
    pub fn inactivity_due(&self) -> Option<EpochMs> {
        if !self.applied_since_destroy {
            return None;
        }
        let due = self
            .last_state_change_at?
            .saturating_add(self.inactivity_ms?)
            .saturating_add(self.inactivity_extension_ms);
        Some(
            self.inactivity_not_before
                .map_or(due, |floor| due.max(floor)),
        )
    }

    /// The due time of the recurring schedule's current occurrence: the stored one until it
    /// has fired, then the first occurrence after the one that fired. Each occurrence is a
    /// fire key of its own.
    pub fn recurring_due(&self) -> Option<EpochMs> {
        let recurrence = self.recurrence.as_ref()?;
        let stored = self.recurring_due_at?;
        match self.last_fired_due_at {
            Some(fired) if stored <= fired => recurrence.next_after(fired),
            _ => Some(stored),
        }
    }

    /// Whether the schedule due at `due` is a recurring occurrence with nothing to destroy:
    /// no applied state version since the last destroy. Such an occurrence is recorded as
    /// skipped, never fired, and gets no reminders.
    pub fn nothing_to_destroy(&self, due: EpochMs) -> bool {
        !self.applied_since_destroy && self.branch_of(due) == Branch::Recurring
    }

    /// The due time reminders are sent for: the next auto-destroy, unless it is an occurrence
    /// with nothing to destroy (an applied state version brings its reminders back).
    pub fn reminded_due(&self) -> Option<EpochMs> {
        self.next_auto_destroy_at()
            .filter(|due| !self.nothing_to_destroy(*due))
    }

    /// Whether the inactivity branch's due time was pushed by the minimum notice.
    pub fn pushed_by_notice(&self) -> bool {
        let Some(floor) = self.inactivity_not_before else {
            return false;
        };
        let unclamped = Timing {
            inactivity_not_before: None,
            ..self.clone()
        };
        unclamped.inactivity_due().is_some_and(|due| due < floor)
            && self.scheduled_due() == self.inactivity_due()
    }

    /// `next_auto_destroy_at`: when the earliest due time that has not fired yet fires — its
    /// own time, or the next opening of a destroy window when it falls outside every window —
    /// or none.
    pub fn next_auto_destroy_at(&self) -> Option<EpochMs> {
        let due = self.scheduled_due()?;
        let floor = self
            .window_not_before
            .filter(|f| self.last_fired_due_at.is_none_or(|fired| *f > fired));
        self.windows
            .open_at_or_after(floor.map_or(due, |f| due.max(f)))
    }

    /// The earliest due time that has not fired yet by the schedule alone, before destroy
    /// windows.
    pub fn scheduled_due(&self) -> Option<EpochMs> {
        if self.protected {
            return None;
        }
        self.due_ignoring_protection()
    }

    /// Whether a destroy window holds the next auto-destroy back past its scheduled time.
    pub fn waiting_for_window(&self) -> bool {
        self.scheduled_due()
            .is_some_and(|due| self.next_auto_destroy_at().is_none_or(|at| at > due))
    }

    /// The scheduled time, while a destroy window holds it back.
    pub fn held_by_window(&self) -> Option<EpochMs> {
        self.scheduled_due().filter(|_| self.waiting_for_window())
    }

    /// The window floor still in force, if any: one a later scheduled time or firing made
    /// irrelevant is dropped.
    pub fn live_window_floor(&self) -> Option<EpochMs> {
        let floor = self.window_not_before?;
        let due = self.scheduled_due()?;
        (due < floor && self.last_fired_due_at.is_none_or(|fired| floor > fired)).then_some(floor)
    }

    /// The due time of a schedule held back by protection: when it comes, it is consumed
    /// (`workspace.auto_destroy.skipped`), never fired (AD-12).
    pub fn held_due_at(&self) -> Option<EpochMs> {
        if !self.protected {
            return None;
        }
        self.due_ignoring_protection()
    }

    fn due_ignoring_protection(&self) -> Option<EpochMs> {
        if self.archived || self.failed {
            return None;
        }
        let unfired = |t: EpochMs| match self.last_fired_due_at {
            Some(fired) if t <= fired => None,
            _ => Some(t),
        };
        if let Some(retry) = self.retry_at.and_then(unfired) {
            return Some(retry);
        }
        [
            self.auto_destroy_at,
            self.inactivity_due(),
            self.recurring_due(),
        ]
        .into_iter()
        .flatten()
        .filter_map(unfired)
        .min()
    }

    /// Which schedule the due time `due` belongs to (the time it fires at, or a schedule's own).
    pub fn branch_of(&self, due: EpochMs) -> Branch {
        // The time a window moved it to belongs to the schedule that came due.
        let due = match self.scheduled_due() {
            Some(own) if self.next_auto_destroy_at() == Some(due) => own,
            _ => due,
        };
        if self.retry_at == Some(due) {
            Branch::Retry
        } else if self.auto_destroy_at == Some(due) {
            Branch::OneShot
        } else if self.recurring_due() == Some(due) {
            Branch::Recurring
        } else {
            Branch::Inactivity
        }
    }

    /// Consumes the schedule due at `due` without firing it (it came due while the workspace
    /// was protected): the one-shot is cleared and the inactivity clock restarts from `due`,
    /// so nothing that passed while protected can fire later (AD-12).
    pub fn consume(&mut self, due: EpochMs) {
        // A recurring schedule moves on to its first occurrence after `due`.
        if let (Some(recurrence), Some(at)) = (&self.recurrence, self.recurring_due())
            && at <= due
        {
            self.recurring_due_at = recurrence.next_after(due);
        }
        if self.auto_destroy_at.is_some_and(|at| at <= due) {
            self.auto_destroy_at = None;
        }
        if self.retry_at.is_some_and(|at| at <= due) {
            self.retry_at = None;
        }
        if let (Some(last), true) = (
            self.last_state_change_at,
            self.inactivity_due().is_some_and(|at| at <= due),
        ) {
            self.inactivity_extension_ms = self.inactivity_extension_ms.max(due - last);
            if self.inactivity_not_before.is_some_and(|floor| floor <= due) {
                self.inactivity_not_before = None;
            }
        }
    }

    /// Applies the minimum notice after a policy change (AD-12): an inactivity branch that
    /// would come due before `now + notice_ms` comes due then instead. The one-shot, chosen
    /// explicitly, is never pushed. Whether it pushed anything.
    pub fn give_notice(&mut self, now: EpochMs, notice_ms: i64) -> bool {
        if notice_ms <= 0 {
            return false;
        }
        let earliest = now.saturating_add(notice_ms);
        let mut pushed = false;
        if self.inactivity_due().is_some_and(|due| due < earliest) {
            self.inactivity_not_before = Some(earliest);
            pushed = true;
        }
        // A recurring occurrence sooner than the notice is skipped: the schedule's first
        // occurrence at or after the notice is the one that fires (never a time the cron
        // does not name).
        if let (Some(recurrence), Some(at)) = (&self.recurrence, self.recurring_due())
            && at < earliest
        {
            self.recurring_due_at = recurrence.next_at_or_after(earliest);
            pushed = true;
        }
        // A pending retry is implicit too: it waits for the notice as well.
        if self.retry_at.is_some_and(|at| at < earliest) {
            self.retry_at = Some(earliest);
            pushed = true;
        }
        pushed
    }

    /// Which branch decides the next due time: `auto_destroy_at`, `inactivity`, `retry`, or
    /// `minimum_notice` when a policy change pushed the inactivity branch.
    pub fn reason(&self) -> &'static str {
        if self.pushed_by_notice() {
            return "minimum_notice";
        }
        let next = self.scheduled_due();
        if next.is_some() && next == self.retry_at {
            "retry"
        } else if next.is_some() && next == self.auto_destroy_at {
            "auto_destroy_at"
        } else if next.is_some() && next == self.recurring_due() {
            "recurring"
        } else {
            "inactivity"
        }
    }
}

/// The earliest reminder still to send for a schedule due at `due`: the latest lead-time
/// instant that has passed (so a schedule set at short notice gets one reminder, not all of
/// them), or the earliest one still ahead.
pub fn next_reminder_at(
    due: Option<EpochMs>,
    lead_times_ms: &[i64],
    now: EpochMs,
) -> Option<EpochMs> {
    let due = due?;
    if due <= now {
        return None;
    }
    let instants: Vec<EpochMs> = lead_times_ms.iter().map(|l| due - l).collect();
    let passed = instants.iter().copied().filter(|t| *t <= now).max();
    passed.or_else(|| instants.iter().copied().filter(|t| *t > now).min())
}

/// The lead times whose reminder is due at `now` for a schedule due at `due`: only the one
/// closest to the due time among those that have passed.
pub fn due_lead_time(due: EpochMs, lead_times_ms: &[i64], now: EpochMs) -> Option<i64> {
    if due <= now {
        return None;
    }
    lead_times_ms
        .iter()
        .copied()
        .filter(|lead| due - lead <= now)
        .min()
}

/// The lead times larger than `lead`: their reminders are superseded by the one sent for
/// `lead` and are recorded as sent without a message.
pub fn superseded(lead: i64, lead_times_ms: &[i64]) -> Vec<i64> {
    lead_times_ms
        .iter()
        .copied()
        .filter(|l| *l > lead)
        .collect()
}

/// The first lead-time instant still ahead of `now` for a schedule due at `due`: when the
/// reminder loop looks at it next.
pub fn next_reminder_after(due: EpochMs, lead_times_ms: &[i64], now: EpochMs) -> Option<EpochMs> {
    lead_times_ms
        .iter()
        .map(|l| due - l)
        .filter(|t| *t > now)
        .min()
}

/// Delay before retry number `failures` (1-based) of a failed auto-destroy: doubling from
/// `base_ms`, capped at a day.
pub fn retry_backoff_ms(base_ms: i64, failures: i32) -> i64 {
    let exp = failures.clamp(1, 20) as u32 - 1;
    base_ms.saturating_mul(1i64 << exp).min(86_400_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn off_by_default() {
        assert_eq!(Timing::default().next_auto_destroy_at(), None);
    }

    #[test]
    fn earliest_branch_wins_and_inactivity_needs_an_applied_state() {
        let mut t = Timing {
            auto_destroy_at: Some(10 * H),
            inactivity_ms: Some(2 * H),
            last_state_change_at: Some(H),
            ..Timing::default()
        };
        assert_eq!(
            t.next_auto_destroy_at(),
            Some(10 * H),
            "no applied state yet"
        );
        t.applied_since_destroy = true;
        assert_eq!(t.next_auto_destroy_at(), Some(3 * H));
        assert_eq!(t.reason(), "inactivity");
        t.last_fired_due_at = Some(3 * H);
        assert_eq!(
            t.next_auto_destroy_at(),
            Some(10 * H),
            "a fired due time never fires again"
        );
        assert_eq!(t.reason(), "auto_destroy_at");
    }

    #[test]
    fn an_extension_pushes_only_the_inactivity_deadline() {
        let t = Timing {
            inactivity_ms: Some(2 * H),
            last_state_change_at: Some(H),
            applied_since_destroy: true,
            inactivity_extension_ms: H,
            ..Timing::default()
        };
        assert_eq!(t.inactivity_due(), Some(4 * H));
    }

    #[test]
    fn protected_archived_and_failed_never_fire() {
        let base = Timing {
            auto_destroy_at: Some(H),
            ..Timing::default()
        };
        for t in [
            Timing {
                protected: true,
                ..base.clone()
            },
            Timing {
                archived: true,
                ..base.clone()
            },
            Timing {
                failed: true,
                ..base.clone()
            },
        ] {
            assert_eq!(t.next_auto_destroy_at(), None);
        }
    }

    #[test]
    fn retry_takes_over_until_it_fires() {
        let t = Timing {
            auto_destroy_at: Some(H),
            last_fired_due_at: Some(H),
            retry_at: Some(2 * H),
            ..Timing::default()
        };
        assert_eq!(t.next_auto_destroy_at(), Some(2 * H));
        assert_eq!(t.reason(), "retry");
        let fired = Timing {
            last_fired_due_at: Some(2 * H),
            ..t
        };
        assert_eq!(fired.next_auto_destroy_at(), None);
    }

    #[test]
    fn reminders_pick_the_nearest_passed_lead_time() {
        let leads = [24 * H, 12 * H];
        let due = 100 * H;
        assert_eq!(next_reminder_at(Some(due), &leads, 0), Some(76 * H));
        assert_eq!(due_lead_time(due, &leads, 80 * H), Some(24 * H));
        assert_eq!(next_reminder_at(Some(due), &leads, 80 * H), Some(76 * H));
        // Set at short notice: only the 12h reminder is due.
        assert_eq!(due_lead_time(due, &leads, 95 * H), Some(12 * H));
        assert_eq!(superseded(12 * H, &leads), vec![24 * H]);
        assert_eq!(due_lead_time(due, &leads, 101 * H), None);
    }

    #[test]
    fn the_next_reminder_is_the_first_lead_instant_ahead() {
        let due = 100 * H;
        assert_eq!(
            next_reminder_after(due, &[24 * H, 12 * H], 70 * H),
            Some(76 * H)
        );
        assert_eq!(next_reminder_after(due, &[24 * H, 12 * H], 90 * H), None);
        assert_eq!(next_reminder_after(due, &[], 0), None);
    }

    #[test]
    fn a_schedule_held_by_protection_is_consumed_not_kept_loaded() {
        let mut t = Timing {
            protected: true,
            auto_destroy_at: Some(10 * H),
            inactivity_ms: Some(24 * H),
            last_state_change_at: Some(0),
            applied_since_destroy: true,
            ..Timing::default()
        };
        assert_eq!(
            t.next_auto_destroy_at(),
            None,
            "never pending while protected"
        );
        assert_eq!(t.held_due_at(), Some(10 * H));
        assert_eq!(t.branch_of(10 * H), Branch::OneShot);
        t.consume(10 * H);
        assert_eq!(t.auto_destroy_at, None, "the one-shot is cleared");
        assert_eq!(t.held_due_at(), Some(24 * H), "inactivity is held next");
        t.consume(24 * H);
        assert_eq!(
            t.held_due_at(),
            Some(48 * H),
            "the clock restarts when consumed"
        );
        t.protected = false;
        assert_eq!(t.next_auto_destroy_at(), Some(48 * H));
        assert_eq!(t.held_due_at(), None);
    }

    #[test]
    fn the_minimum_notice_pushes_inactivity_but_never_the_one_shot() {
        let mut t = Timing {
            inactivity_ms: Some(24 * H),
            last_state_change_at: Some(0),
            applied_since_destroy: true,
            ..Timing::default()
        };
        // Policy lowered at hour 30: due at 24 h, already past.
        assert!(t.give_notice(30 * H, 24 * H));
        assert_eq!(t.next_auto_destroy_at(), Some(54 * H));
        assert_eq!(t.reason(), "minimum_notice");
        assert!(!t.give_notice(30 * H, 24 * H), "already far enough");
        // An explicit one-shot sooner than the notice is honoured as given.
        t.auto_destroy_at = Some(31 * H);
        assert_eq!(t.next_auto_destroy_at(), Some(31 * H));
        assert_eq!(t.reason(), "auto_destroy_at");
        // Zero turns the notice off.
        let mut off = Timing {
            inactivity_not_before: None,
            auto_destroy_at: None,
            ..t
        };
        assert!(!off.give_notice(30 * H, 0));
        assert_eq!(off.next_auto_destroy_at(), Some(24 * H));
    }

    fn hourly() -> Option<Recurrence> {
        Some(Recurrence::parse("0 * * * *", "UTC", "cron", "time_zone").expect("valid"))
    }

    #[test]
    fn each_recurring_occurrence_fires_once_and_the_next_follows() {
        let mut t = Timing {
            recurrence: hourly(),
            recurring_due_at: Some(10 * H),
            applied_since_destroy: true,
            ..Timing::default()
        };
        assert_eq!(t.next_auto_destroy_at(), Some(10 * H));
        assert_eq!(t.branch_of(10 * H), Branch::Recurring);
        assert_eq!(t.reason(), "recurring");
        // Fired: the next occurrence is its own fire key.
        t.last_fired_due_at = Some(10 * H);
        assert_eq!(t.next_auto_destroy_at(), Some(11 * H));
        assert_eq!(t.recurring_due(), Some(11 * H));
    }

    #[test]
    fn an_occurrence_with_nothing_to_destroy_is_skipped_without_reminders() {
        let mut t = Timing {
            recurrence: hourly(),
            recurring_due_at: Some(10 * H),
            ..Timing::default()
        };
        assert!(t.nothing_to_destroy(10 * H));
        assert_eq!(t.reminded_due(), None, "no reminder for nothing to destroy");
        t.consume(10 * H);
        assert_eq!(t.recurring_due_at, Some(11 * H), "the next occurrence");
        t.applied_since_destroy = true;
        assert!(!t.nothing_to_destroy(11 * H));
        assert_eq!(t.reminded_due(), Some(11 * H));
    }

    #[test]
    fn the_minimum_notice_skips_recurring_occurrences_to_the_first_after_it() {
        let mut t = Timing {
            recurrence: hourly(),
            recurring_due_at: Some(10 * H),
            applied_since_destroy: true,
            ..Timing::default()
        };
        // At 9:30 with a 2 h notice: 10:00 and 11:00 are skipped, 12:00 (>= 11:30) fires.
        assert!(t.give_notice(9 * H + H / 2, 2 * H));
        assert_eq!(t.next_auto_destroy_at(), Some(12 * H));
        assert_eq!(
            t.reason(),
            "recurring",
            "still an occurrence the cron names"
        );
    }

    #[test]
    fn protection_consumes_recurring_occurrences_one_by_one() {
        let mut t = Timing {
            protected: true,
            recurrence: hourly(),
            recurring_due_at: Some(10 * H),
            applied_since_destroy: true,
            ..Timing::default()
        };
        assert_eq!(t.next_auto_destroy_at(), None);
        assert_eq!(t.held_due_at(), Some(10 * H));
        t.consume(10 * H);
        assert_eq!(t.held_due_at(), Some(11 * H));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(retry_backoff_ms(1000, 1), 1000);
        assert_eq!(retry_backoff_ms(1000, 3), 4000);
        assert_eq!(retry_backoff_ms(1000, 40), 86_400_000);
    }
}
