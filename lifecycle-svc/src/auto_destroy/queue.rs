//! Queuing auto-destroy runs for due workspaces, each fire key decided once in one
//! transaction (AD-5, AD-6).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ebb_common::Result;
use ebb_common::time::{EpochMs, rfc3339};
use sea_orm::{ConnectionTrait, Value};
use serde_json::json;

use crate::events::{NewEvent, outbox};
use crate::runs::AutoDestroyRun;
use crate::store::{exec, for_update, placeholders, query_all};
use crate::tenancy::orgs;
use crate::tenancy::orgs::OrgRow;
use crate::timing::due::FireKey;
use crate::timing::math;
use crate::workspaces::AutoDestroyStatus;
use crate::workspaces::{WORKSPACE_COLUMNS, WORKSPACE_FROM, WorkspaceRow};
use crate::{runs, workspaces};

/// What became of a fire key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Queued { run_id: String },
    Deferred { reason: String },
    Stale { reason: String },
    SkippedProtected,
}

/// The actor of the scheduler's decisions.
pub(crate) const ACTOR: &str = "scheduler";

/// Decides each fire key on its own, all in the caller's one transaction (rule 6).
pub async fn queue_auto_destroy_runs(
    conn: &impl ConnectionTrait,
    keys: &[FireKey],
    now: EpochMs,
) -> Result<Vec<(FireKey, Decision)>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let ids: BTreeSet<&str> = keys.iter().map(|k| k.subject_id.as_str()).collect();
    let id_values: Vec<Value> = ids.iter().map(|id| (*id).into()).collect();
    // Locked in id order, so concurrent batches cannot deadlock.
    let rows: Vec<WorkspaceRow> = query_all(
        conn,
        &format!(
            "SELECT {WORKSPACE_COLUMNS} FROM {WORKSPACE_FROM} WHERE w.id IN ({}) ORDER BY w.id{}",
            placeholders(1, ids.len()),
            for_update(conn, "w")
        ),
        id_values,
    )
    .await?;
    let mut workspaces: HashMap<String, WorkspaceRow> =
        rows.into_iter().map(|w| (w.id.clone(), w)).collect();

    let active = runs::with_active_run(conn, &ids).await?;

    let mut orgs: BTreeMap<String, OrgRow> = BTreeMap::new();
    let mut events = Vec::new();
    let mut results = Vec::with_capacity(keys.len());
    let mut to_queue: Vec<(usize, FireKey, String)> = Vec::new();
    for key in keys {
        let Some(ws) = workspaces.get_mut(&key.subject_id) else {
            results.push((
                key.clone(),
                Decision::Stale {
                    reason: "workspace not found".into(),
                },
            ));
            continue;
        };
        if !orgs.contains_key(&ws.organization_id) {
            let org = orgs::get_org(conn, &ws.organization_id).await?;
            orgs.insert(org.id.clone(), org);
        }
        let org = &orgs[&ws.organization_id];
        if ws.is_protected() {
            events.push(NewEvent::new(
                &ws.organization_id,
                "workspace.auto_destroy.skipped",
                "workspace",
                &ws.id,
                ACTOR,
                json!({
                    "due_at": rfc3339(key.due_at), "workspace_name": ws.name, "reason": "protected",
                }),
            ));
            results.push((key.clone(), Decision::SkippedProtected));
            continue;
        }
        if ws.next_auto_destroy_at != Some(key.due_at) {
            results.push((
                key.clone(),
                Decision::Stale {
                    reason: "the schedule changed or this due time already fired".into(),
                },
            ));
            continue;
        }
        let hold = if ws.locked {
            Some(format!("workspace is locked: {}", ws.lock_reason))
        } else if active.contains(&ws.id) {
            Some("workspace has an active run".to_owned())
        } else {
            None
        };
        if let Some(reason) = hold {
            if ws.auto_destroy_status != AutoDestroyStatus::Deferred {
                ws.auto_destroy_status = AutoDestroyStatus::Deferred;
                workspaces::save(conn, ws, org, now).await?;
                events.push(NewEvent::new(
                    &ws.organization_id,
                    "workspace.auto_destroy.deferred",
                    "workspace",
                    &ws.id,
                    ACTOR,
                    json!({
                        "due_at": rfc3339(key.due_at), "workspace_name": ws.name, "reason": reason,
                    }),
                ));
            }
            results.push((key.clone(), Decision::Deferred { reason }));
            continue;
        }
        to_queue.push((results.len(), key.clone(), uuid::Uuid::now_v7().to_string()));
        results.push((
            key.clone(),
            Decision::Stale {
                reason: String::new(),
            },
        ));
    }
    // Everything that may fire is inserted in one statement; the unique indexes turn a key
    // that already fired (or a second active destroy) into a row that is not returned.
    let new_runs: Vec<AutoDestroyRun> = to_queue
        .iter()
        .filter_map(|(_, key, run_id)| {
            let ws = workspaces.get(&key.subject_id)?;
            Some(AutoDestroyRun {
                run_id: run_id.clone(),
                organization_id: ws.organization_id.clone(),
                workspace_id: ws.id.clone(),
                due_at: key.due_at,
                working_directory: ws.working_directory.clone(),
            })
        })
        .collect();
    let inserted = runs::insert_auto_destroy_runs(conn, &new_runs, now).await?;
    let mut fired = Vec::new();
    for (index, key, run_id) in to_queue {
        if !inserted.contains(&run_id) {
            results[index].1 = Decision::Stale {
                reason: "this due time already fired".into(),
            };
            continue;
        }
        let Some(ws) = workspaces.get_mut(&key.subject_id) else {
            continue;
        };
        let org = &orgs[&ws.organization_id];
        ws.last_fired_due_at = Some(key.due_at);
        ws.auto_destroy_status = AutoDestroyStatus::Queued;
        ws.next_auto_destroy_at = ws.timing().next_auto_destroy_at();
        ws.next_reminder_at =
            math::next_reminder_at(ws.next_auto_destroy_at, &org.lead_times()?, now);
        fired.push(ws.clone());
        events.push(NewEvent::new(
            &ws.organization_id,
            "workspace.auto_destroy.queued",
            "workspace",
            &ws.id,
            ACTOR,
            json!({
                "due_at": rfc3339(key.due_at), "workspace_name": ws.name, "run_id": run_id,
            }),
        ));
        events.push(NewEvent::new(&ws.organization_id, "run.queued", "run", &run_id, ACTOR, json!({
            "workspace_id": ws.id, "is_destroy": true, "source": "auto_destroy", "fire_due_at": rfc3339(key.due_at),
        })));
        results[index].1 = Decision::Queued { run_id };
    }
    mark_fired(conn, &fired, now).await?;
    outbox::write(conn, events, now).await?;
    Ok(results)
}

/// Records on each fired workspace the due time it fired and its recomputed schedule.
async fn mark_fired(
    conn: &impl ConnectionTrait,
    fired: &[WorkspaceRow],
    now: EpochMs,
) -> Result<()> {
    for chunk in fired.chunks(1000) {
        let mut rows = Vec::with_capacity(chunk.len());
        let mut values: Vec<Value> = vec![now.into()];
        for ws in chunk {
            let b = values.len();
            rows.push(format!(
                "(${}, CAST(${} AS BIGINT), CAST(${} AS BIGINT), CAST(${} AS BIGINT))",
                b + 1,
                b + 2,
                b + 3,
                b + 4
            ));
            values.extend([
                ws.id.clone().into(),
                ws.last_fired_due_at.into(),
                ws.next_auto_destroy_at.into(),
                ws.next_reminder_at.into(),
            ]);
        }
        // Correlated lookups keep this one statement portable between SQLite and PostgreSQL.
        let sql = format!(
            "WITH v (id, fired, next_at, reminder_at) AS (VALUES {}) \
             UPDATE workspaces SET auto_destroy_status = 'queued', updated_at = $1, \
             last_fired_due_at = (SELECT fired FROM v WHERE v.id = workspaces.id), \
             next_auto_destroy_at = (SELECT next_at FROM v WHERE v.id = workspaces.id), \
             next_reminder_at = (SELECT reminder_at FROM v WHERE v.id = workspaces.id) \
             WHERE id IN (SELECT id FROM v)",
            rows.join(", ")
        );
        exec(conn, &sql, values).await?;
    }
    Ok(())
}
