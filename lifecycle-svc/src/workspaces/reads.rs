//! GetWorkspace's reads: point reads arriving together answered by one statement
//! ([`ebb_common::coalesce`]).

use std::sync::Arc;

use ebb_common::Result;
use ebb_common::coalesce::{Coalescer, Fetch};
use ebb_common::reads::ReadPool;
use sea_orm::Value;

use super::{WORKSPACE_COLUMNS, WORKSPACE_FROM, WorkspaceRow};
use crate::store::{placeholders, query_all};

/// Statements of workspace reads running at once. Each answers up to
/// [`ebb_common::coalesce::MAX_BATCH`] reads, so a few keep the database busy without taking
/// the connections other reads and writes need.
const SLOTS: usize = 4;

/// Workspaces read by id outside a transaction, coalesced.
pub type WorkspaceReads = Coalescer<WorkspaceRow>;

/// Workspace reads through `read`.
pub fn workspace_reads(read: ReadPool) -> WorkspaceReads {
    let fetch: Fetch<WorkspaceRow> = Arc::new(move |ids: Vec<String>| {
        let read = read.clone();
        Box::pin(async move { by_ids(&read, ids).await })
    });
    Coalescer::new("workspace", SLOTS, fetch)
}

async fn by_ids(read: &ReadPool, ids: Vec<String>) -> Result<Vec<(String, WorkspaceRow)>> {
    let sql = format!(
        "SELECT {WORKSPACE_COLUMNS} FROM {WORKSPACE_FROM} WHERE w.id IN ({})",
        placeholders(1, ids.len())
    );
    let rows: Vec<WorkspaceRow> = query_all(read, &sql, ids.into_iter().map(Value::from)).await?;
    Ok(rows.into_iter().map(|w| (w.id.clone(), w)).collect())
}
