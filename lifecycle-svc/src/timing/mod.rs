//! The timing machinery both seeds share (AD-5, AD-6, AD-10, DP-9): pure schedule math, the
//! due scan by fire key and the reminder loop. A workspace's auto-destroy and a scheduled
//! action are two [`Timeline`]s of the same machinery.

pub(crate) mod due;
pub(crate) mod math;
pub(crate) mod recurrence;
pub(crate) mod reminders;
pub(crate) mod snooze_links;
pub(crate) mod windows;

use ebb_common::time::EpochMs;
use sea_orm::Value;

/// A statement and its values.
pub type Statement = (&'static str, Vec<Value>);

/// A table of things that fall due, indexed by `(due column, shard_key)` and
/// `(next_reminder_at, shard_key)`.
#[derive(Debug)]
pub struct Timeline {
    /// The table.
    pub table: &'static str,
    /// The columns of the next due time, each indexed where not null: a row falls due by
    /// the one that is set (the due scan reads each by its index and merges).
    pub due_columns: &'static [&'static str],
    /// A further condition a row must meet to fall due (SQL starting with ` AND`), or empty.
    pub live: &'static str,
    /// The statement and values that record one reminder as sent for (subject, due time, lead
    /// time, now); refused by the ledger's key when it was sent before.
    pub ledger: fn(&str, EpochMs, i64, EpochMs) -> Statement,
}

/// Workspaces, falling due for auto-destroy.
pub const WORKSPACES: Timeline = Timeline {
    table: "workspaces",
    // A pending auto-destroy, or a schedule held by protection that comes due to be
    // consumed (AD-12); a workspace has at most one of the two.
    due_columns: &["next_auto_destroy_at", "held_due_at"],
    live: "",
    ledger: |id, due, lead, now| {
        (
            "INSERT INTO auto_destroy_reminders (workspace_id, due_at, lead_ms, sent_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            vec![id.into(), due.into(), lead.into(), now.into()],
        )
    },
};

/// Scheduled actions, falling due to fire at `fire_at`: their scheduled time, or the next
/// opening of a destroy window. A window moves the time, so the ledger is keyed by due time
/// and lead time, as workspaces' is.
pub const SCHEDULED_ACTIONS: Timeline = Timeline {
    table: "scheduled_actions",
    due_columns: &["fire_at"],
    live: " AND status = 'pending'",
    ledger: |id, due, lead, now| {
        (
            "INSERT INTO scheduled_action_reminders (scheduled_action_id, due_at, lead_ms, \
             sent_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            vec![id.into(), due.into(), lead.into(), now.into()],
        )
    },
};
