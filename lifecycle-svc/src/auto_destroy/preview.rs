//! Which workspaces a proposed auto-destroy setting would destroy, and when. Reads only.

use std::collections::BTreeMap;

use crate::auto_destroy::policy;
use crate::store::query_all;
use crate::tenancy::orgs;
use crate::timing::math::{Branch, Timing};
use crate::timing::recurrence::Recurrence;
use crate::workspaces::WORKSPACE_COLUMNS;
use crate::workspaces::WORKSPACE_FROM;
use crate::workspaces::WorkspaceRow;
use ebb_common::Result;
use ebb_common::time::{EpochMs, to_duration, to_timestamp};
use ebb_proto::lifecycle::v1 as pb;
use sea_orm::{ConnectionTrait, Value};

/// The most workspaces one preview evaluates.
pub const MAX_PREVIEW_WORKSPACES: u64 = 100_000;

/// A proposed setting and the workspaces it would apply to.
#[derive(Debug, Clone)]
pub struct Proposal {
    pub organization_id: String,
    pub project_id: Option<String>,
    pub inactivity_ms: Option<i64>,
    pub auto_destroy_at: Option<EpochMs>,
    pub label_selector: BTreeMap<String, String>,
    /// A proposed recurring schedule.
    pub recurring: Option<Recurrence>,
}

/// What a proposal would do.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The destroys it would cause, soonest first, each with the time the minimum notice
    /// gives it (reason `minimum_notice` where it pushes the time).
    pub items: Vec<pb::AutoDestroyPreviewItem>,
    /// Matching workspaces it would not destroy (protected, or inactivity without an applied
    /// state).
    pub skipped: i32,
    /// How many destroys it brings within 7 days: the `confirm_count` the change needs when
    /// this exceeds the organization's threshold (AD-13).
    pub confirm_count: i32,
}

/// What the proposal would do, computed the way the change itself would be applied.
pub async fn preview(
    conn: &impl ConnectionTrait,
    proposal: &Proposal,
    now: EpochMs,
) -> Result<Outcome> {
    let org = orgs::get_org(conn, &proposal.organization_id).await?;
    let notice_ms = org.minimum_notice_ms()?;
    let mut sql = format!(
        "SELECT {WORKSPACE_COLUMNS} FROM {WORKSPACE_FROM} WHERE w.organization_id = $1 AND w.state = 'active'"
    );
    let mut values: Vec<Value> = vec![proposal.organization_id.clone().into()];
    if let Some(p) = &proposal.project_id {
        values.push(p.clone().into());
        sql.push_str(" AND w.project_id = $2");
    }
    sql.push_str(&format!(
        " ORDER BY w.created_at, w.id LIMIT {MAX_PREVIEW_WORKSPACES}"
    ));
    let rows: Vec<WorkspaceRow> = query_all(conn, &sql, values).await?;
    let mut items = Vec::new();
    let mut skipped = 0;
    let mut confirm_count = 0;
    for ws in rows {
        let labels = ws.labels()?;
        if !proposal
            .label_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            continue;
        }
        let mut timing = ws.timing();
        if let Some(ms) = proposal.inactivity_ms {
            timing.inactivity_ms = Some(ms);
        }
        if let Some(at) = proposal.auto_destroy_at {
            timing.auto_destroy_at = Some(at);
        }
        if let Some(recurrence) = &proposal.recurring {
            // As setting it would: the first occurrence at or after the minimum notice.
            timing.recurring_due_at = recurrence.next_at_or_after(now.saturating_add(notice_ms));
            timing.recurrence = Some(recurrence.clone());
        }
        timing.failed = false;
        let before = ws.next_auto_destroy_at;
        if timing
            .next_auto_destroy_at()
            .is_some_and(|due| before.is_none_or(|b| due < b))
        {
            timing.give_notice(now, notice_ms);
        }
        // A recurring occurrence with nothing to destroy destroys nothing.
        let after = timing.reminded_due();
        if policy::newly_within_window(before, after, now) {
            confirm_count += 1;
        }
        match after {
            Some(at) => items.push(pb::AutoDestroyPreviewItem {
                workspace_id: ws.id.clone(),
                workspace_name: ws.name.clone(),
                destroy_time: Some(to_timestamp(at)),
                reason: timing.reason().to_owned(),
                time_left: Some(to_duration((at - now).max(0))),
                next_occurrences: occurrences(&timing, at),
                waiting_for_window: timing.waiting_for_window(),
                scheduled_time: timing.held_by_window().map(to_timestamp),
            }),
            None => skipped += 1,
        }
    }
    items.sort_by_key(|i| i.destroy_time.as_ref().map(|t| (t.seconds, t.nanos)));
    Ok(Outcome {
        items,
        skipped,
        confirm_count,
    })
}

/// With a recurring schedule that decides `at`: `at` and the next occurrences after it.
fn occurrences(timing: &Timing, at: EpochMs) -> Vec<prost_types::Timestamp> {
    let Some(recurrence) = &timing.recurrence else {
        return Vec::new();
    };
    if timing.branch_of(at) != Branch::Recurring {
        return Vec::new();
    }
    std::iter::once(at)
        .chain(recurrence.upcoming(at, 4))
        .map(to_timestamp)
        .collect()
}
