//! GetWorkspace's reads: point reads arriving together answered by one statement
//! ([`ebb_common::coalesce`]).

use std::sync::Arc;

use ebb_common::coalesce::{Coalescer, Fetch};
use ebb_common::reads::ReadPool;
use ebb_common::{Error, Result};

use super::{WORKSPACE_COLUMNS, WORKSPACE_FROM, WorkspaceRow};
use crate::store::by_ids;

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
        Box::pin(async move {
            let select = format!("SELECT {WORKSPACE_COLUMNS} FROM {WORKSPACE_FROM}");
            let rows: Vec<WorkspaceRow> = by_ids(&read, &select, "w.id", &ids).await?;
            Ok(rows.into_iter().map(|w| (w.id.clone(), w)).collect())
        })
    });
    Coalescer::new("workspace", SLOTS, fetch)
}

/// A workspace by id, as [`super::get_workspace`] reads it, through `reads`.
pub async fn get_workspace(reads: &WorkspaceReads, id: &str) -> Result<WorkspaceRow> {
    reads
        .get(id)
        .await?
        .ok_or_else(|| Error::not_found("workspace", id))
}
