//! Which workspaces a proposed auto-destroy setting would destroy, and when. Reads only.

use std::collections::BTreeMap;

use crate::store::query_all;
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
}

/// The destroys the proposal would cause, soonest first, and how many matching workspaces it
/// would not destroy (protected, or inactivity without an applied state).
pub async fn preview(
    conn: &impl ConnectionTrait,
    proposal: &Proposal,
    now: EpochMs,
) -> Result<(Vec<pb::AutoDestroyPreviewItem>, i32)> {
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
        timing.failed = false;
        match timing.next_auto_destroy_at() {
            Some(at) => items.push(pb::AutoDestroyPreviewItem {
                workspace_id: ws.id.clone(),
                workspace_name: ws.name.clone(),
                destroy_time: Some(to_timestamp(at)),
                reason: timing.reason().to_owned(),
                time_left: Some(to_duration((at - now).max(0))),
            }),
            None => skipped += 1,
        }
    }
    items.sort_by_key(|i| i.destroy_time.as_ref().map(|t| (t.seconds, t.nanos)));
    Ok((items, skipped))
}
