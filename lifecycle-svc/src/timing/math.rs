//! When a workspace's auto-destroy comes due, and when its reminders go out: pure functions of
//! the workspace's settings, so every decision is computed the same way everywhere.

use ebb_common::time::EpochMs;

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
}

impl Timing {
    /// The due time of the inactivity branch, if it applies (rule 3: only once there has been
    /// an applied state version since the last destroy).
    pub fn inactivity_due(&self) -> Option<EpochMs> {
        if !self.applied_since_destroy {
            return None;
        }
        Some(
            self.last_state_change_at?
                .saturating_add(self.inactivity_ms?)
                .saturating_add(self.inactivity_extension_ms),
        )
    }

    /// `next_auto_destroy_at`: the earliest due time that has not fired yet, or none.
    pub fn next_auto_destroy_at(&self) -> Option<EpochMs> {
        if self.archived || self.protected || self.failed {
            return None;
        }
        let unfired = |t: EpochMs| match self.last_fired_due_at {
            Some(fired) if t <= fired => None,
            _ => Some(t),
        };
        if let Some(retry) = self.retry_at.and_then(unfired) {
            return Some(retry);
        }
        [self.auto_destroy_at, self.inactivity_due()]
            .into_iter()
            .flatten()
            .filter_map(unfired)
            .min()
    }

    /// Which branch decides the next due time: `auto_destroy_at`, `inactivity` or `retry`.
    pub fn reason(&self) -> &'static str {
        let next = self.next_auto_destroy_at();
        if next.is_some() && next == self.retry_at {
            "retry"
        } else if next.is_some() && next == self.auto_destroy_at {
            "auto_destroy_at"
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
    fn backoff_doubles_and_is_capped() {
        assert_eq!(retry_backoff_ms(1000, 1), 1000);
        assert_eq!(retry_backoff_ms(1000, 3), 4000);
        assert_eq!(retry_backoff_ms(1000, 40), 86_400_000);
    }
}
