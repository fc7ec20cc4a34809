//! Queuing auto-destroy runs for due workspaces, each fire key decided once in one
//! transaction (AD-5, AD-6).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ebb_common::Result;
use ebb_common::db::stmt;
use ebb_common::time::{EpochMs, rfc3339};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::json;

use crate::events::{NewEvent, outbox};
use crate::runs::{QueuedDestroy, RunSource};
use crate::store::{exec, for_update, json_param, json_rows, placeholders, query_all, skip_locked};
use crate::tenancy::orgs;
use crate::tenancy::orgs::OrgRow;
use crate::timing;
use crate::timing::due::{self, FireKey};
use crate::timing::math;
use crate::workspaces::AutoDestroyStatus;
use crate::workspaces::{WORKSPACE_COLUMNS, WORKSPACE_FROM, WorkspaceRow};
use crate::{runs, workspaces};

/// What became of a fire key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Queued {
        run_id: String,
    },
    Deferred {
        reason: String,
    },
    Stale {
        reason: String,
    },
    SkippedProtected,
    /// Consumed without a run, for `reason` (`nothing_to_destroy`).
    Skipped {
        reason: String,
    },
    /// Reached outside every destroy window: moved to the next opening.
    WaitingForWindow {
        opens_at: Option<EpochMs>,
    },
}

/// The actor of the scheduler's decisions.
pub(crate) const ACTOR: &str = "scheduler";

/// What one fire key means for its workspace, decided from the locked row alone (AD-4, AD-6,
/// AD-12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Insert the destroy run (the database still refuses a second one).
    Queue,
    /// A schedule held by protection came due: consume it, never fire it.
    Consume,
    /// The workspace is protected and the key is not its held schedule: nothing to do.
    Protected,
    /// A recurring occurrence with nothing to destroy: record it as skipped for the reason
    /// and move on to the next occurrence.
    Skip(&'static str),
    /// The key no longer matches the workspace's schedule.
    Stale(&'static str),
    /// Locked or busy: try again on a later round.
    Defer(String),
    /// Reached outside every destroy window (late, or held by a lock or a run until the
    /// window closed): wait for the next opening, `None` when none will come.
    WaitForWindow(Option<EpochMs>),
}

/// Decides one fire key at `now`. Protection wins over everything: a protected workspace is
/// never queued, whatever its schedule says; nor is any workspace outside its destroy windows.
pub fn decide(ws: &WorkspaceRow, due_at: EpochMs, has_active_run: bool, now: EpochMs) -> Verdict {
    if ws.is_protected() {
        return if ws.held_due_at == Some(due_at) {
            Verdict::Consume
        } else {
            Verdict::Protected
        };
    }
    if ws.next_auto_destroy_at != Some(due_at) {
        return Verdict::Stale("the schedule changed or this due time already fired");
    }
    let timing = ws.timing();
    if timing.nothing_to_destroy(due_at) {
        return Verdict::Skip("nothing_to_destroy");
    }
    if !timing.windows.contains(now) {
        return Verdict::WaitForWindow(timing.windows.open_at_or_after(now));
    }
    if ws.locked {
        Verdict::Defer(format!("workspace is locked: {}", ws.lock_reason))
    } else if has_active_run {
        Verdict::Defer("workspace has an active run".to_owned())
    } else {
        Verdict::Queue
    }
}

/// Decides each fire key on its own, all in the caller's one transaction (AD-6).
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
    let active = runs::with_active_run(conn, &ids).await?;
    decide_locked(conn, keys, rows, &active, now).await
}

/// Decides each fire key of `rows`, workspaces the caller's transaction has locked; `active`
/// names those with an active run.
async fn decide_locked(
    conn: &impl ConnectionTrait,
    keys: &[FireKey],
    rows: Vec<WorkspaceRow>,
    active: &BTreeSet<String>,
    now: EpochMs,
) -> Result<Vec<(FireKey, Decision)>> {
    let mut workspaces: HashMap<String, WorkspaceRow> =
        rows.into_iter().map(|w| (w.id.clone(), w)).collect();

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
        match decide(ws, key.due_at, active.contains(&ws.id), now) {
            Verdict::Queue => {}
            Verdict::Consume => {
                // AD-12: what came due while protected is consumed, never kept loaded.
                let event = ws.consume_held(key.due_at, "protected", ACTOR);
                workspaces::save(conn, ws, org, ACTOR, now).await?;
                events.push(event);
                results.push((key.clone(), Decision::SkippedProtected));
                continue;
            }
            Verdict::Skip(reason) => {
                let event = ws.consume_held(key.due_at, reason, ACTOR);
                // Occurrences that passed meanwhile (the scheduler was stopped) have nothing
                // to destroy either: the schedule moves on to the first one still ahead
                // rather than skipping them one round at a time.
                if let (Some(recurrence), Some(next)) = (ws.recurrence(), ws.recurring_due_at)
                    && next <= now
                {
                    ws.recurring_due_at = recurrence.next_after(now);
                }
                workspaces::save(conn, ws, org, ACTOR, now).await?;
                events.push(event);
                results.push((
                    key.clone(),
                    Decision::Skipped {
                        reason: reason.into(),
                    },
                ));
                continue;
            }
            Verdict::Protected => {
                results.push((key.clone(), Decision::SkippedProtected));
                continue;
            }
            Verdict::WaitForWindow(opens_at) => {
                // Not before now, in whichever windows are in force: the next opening is a
                // fire key of its own, and the reminders follow the new time.
                ws.window_not_before = Some(now);
                if ws.auto_destroy_status == AutoDestroyStatus::Deferred {
                    ws.auto_destroy_status = AutoDestroyStatus::Idle;
                }
                workspaces::save(conn, ws, org, ACTOR, now).await?;
                events.push(NewEvent::new(
                    &ws.organization_id,
                    "workspace.auto_destroy.waiting_for_window",
                    "workspace",
                    &ws.id,
                    ACTOR,
                    json!({
                        "due_at": rfc3339(key.due_at), "workspace_name": ws.name,
                        "opens_at": opens_at.map(rfc3339), "owner": ws.owner(),
                    }),
                ));
                results.push((key.clone(), Decision::WaitingForWindow { opens_at }));
                continue;
            }
            Verdict::Stale(reason) => {
                results.push((
                    key.clone(),
                    Decision::Stale {
                        reason: reason.into(),
                    },
                ));
                continue;
            }
            Verdict::Defer(reason) => {
                if ws.auto_destroy_status != AutoDestroyStatus::Deferred {
                    ws.auto_destroy_status = AutoDestroyStatus::Deferred;
                    workspaces::save(conn, ws, org, ACTOR, now).await?;
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
    let new_runs: Vec<QueuedDestroy> = to_queue
        .iter()
        .filter_map(|(_, key, run_id)| {
            let ws = workspaces.get(&key.subject_id)?;
            let org = &orgs[&ws.organization_id];
            Some(QueuedDestroy {
                run_id: run_id.clone(),
                organization_id: ws.organization_id.clone(),
                workspace_id: ws.id.clone(),
                working_directory: ws.working_directory.clone(),
                source: RunSource::AutoDestroy,
                message: "auto-destroy".to_owned(),
                fire_due_at: Some(key.due_at),
                action_step_id: None,
                approval_deadline: needs_approval(org, ws)
                    .then(|| now.saturating_add(org.approval_window_ms)),
            })
        })
        .collect();
    let inserted = runs::insert_destroy_runs(conn, &new_runs, now).await?;
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
        let schedule = ws.timing().branch_of(key.due_at).name();
        ws.last_fired_due_at = Some(key.due_at);
        ws.auto_destroy_status = AutoDestroyStatus::Queued;
        ws.next_auto_destroy_at = ws.timing().next_auto_destroy_at();
        ws.window_held_due_at = ws.timing().held_by_window();
        ws.next_reminder_at =
            math::next_reminder_at(ws.timing().reminded_due(), &org.lead_times()?, now);
        fired.push(ws.clone());
        events.push(NewEvent::new(
            &ws.organization_id,
            "workspace.auto_destroy.queued",
            "workspace",
            &ws.id,
            ACTOR,
            json!({
                "due_at": rfc3339(key.due_at), "workspace_name": ws.name, "run_id": run_id,
                "schedule": schedule, "owner": ws.owner(),
            }),
        ));
        events.push(NewEvent::new(&ws.organization_id, "run.queued", "run", &run_id, ACTOR, json!({
            "workspace_id": ws.id, "is_destroy": true, "source": "auto_destroy", "fire_due_at": rfc3339(key.due_at),
        })));
        if needs_approval(org, ws) {
            events.push(NewEvent::new(&ws.organization_id, "workspace.auto_destroy.awaiting_approval", "workspace", &ws.id, ACTOR, json!({
                "run_id": run_id, "workspace_name": ws.name, "due_at": rfc3339(key.due_at),
                "approval_deadline": rfc3339(now.saturating_add(org.approval_window_ms)), "owner": ws.owner(),
            })));
        }
        results[index].1 = Decision::Queued { run_id };
    }
    mark_fired(conn, &fired, now).await?;
    outbox::write(conn, events, now).await?;
    Ok(results)
}

/// One page of a shard's due workspaces, decided.
#[derive(Debug)]
pub struct DuePage {
    /// One result per fire key found, in due order.
    pub results: Vec<(FireKey, Decision)>,
    /// Where the next page starts; `None` when this page was not full.
    pub last: Option<FireKey>,
}

/// Finds up to `limit` of a shard's due workspaces after `after`, locking them as it finds
/// them, and decides each as [`queue_auto_destroy_runs`] does, all in the caller's one
/// transaction (AD-5, AD-6). A workspace another transaction holds is not waited for: it stays
/// due for the next sweep.
pub async fn queue_due(
    conn: &impl ConnectionTrait,
    (shard, shard_count): (i32, i32),
    limit: u64,
    after: Option<FireKey>,
    now: EpochMs,
) -> Result<DuePage> {
    let (keys, rows, active) = find_due_rows(conn, (shard, shard_count), limit, after, now).await?;
    let full = u64::try_from(keys.len()).unwrap_or(u64::MAX) >= limit;
    let last = keys.last().filter(|_| full).cloned();
    let results = if keys.is_empty() {
        Vec::new()
    } else {
        decide_locked(conn, &keys, rows, &active, now).await?
    };
    Ok(DuePage { results, last })
}

/// Up to `limit` of a shard's due workspaces after `after`, in due order, each read and locked
/// by the statement that finds it (one per due column): a workspace another transaction holds
/// is skipped, not waited for. With them, those that have an active run.
async fn find_due_rows(
    conn: &impl ConnectionTrait,
    (shard, shard_count): (i32, i32),
    limit: u64,
    after: Option<FireKey>,
    now: EpochMs,
) -> Result<(Vec<FireKey>, Vec<WorkspaceRow>, BTreeSet<String>)> {
    let (after_due, after_id) = after
        .map(|k| (k.due_at, k.subject_id))
        .unwrap_or((i64::MIN, String::new()));
    let lock = skip_locked(conn, "w");
    let mut found: Vec<(FireKey, WorkspaceRow)> = Vec::new();
    let mut active = BTreeSet::new();
    for due in timing::WORKSPACES.due_columns {
        let rows = conn
            .query_all_raw(stmt(
                conn.get_database_backend(),
                &format!(
                    "SELECT {WORKSPACE_COLUMNS}, w.{due} AS due_at, EXISTS (SELECT 1 FROM runs r \
                     WHERE r.workspace_id = w.id AND r.status IN ('queued', 'running')) \
                     AS has_active_run FROM {WORKSPACE_FROM} \
                     WHERE {} ORDER BY w.{due}, w.id LIMIT {limit}{lock}",
                    due::range_condition(due, "w.")
                ),
                due::range_values((shard, shard_count), (after_due, after_id.clone()), now),
            ))
            .await?;
        for row in &rows {
            let ws = WorkspaceRow::from_query_result(row, "")?;
            let due_at: i64 = row.try_get("", "due_at")?;
            if row.try_get::<bool>("", "has_active_run")? {
                active.insert(ws.id.clone());
            }
            let key = FireKey {
                subject_id: ws.id.clone(),
                due_at,
            };
            found.push((key, ws));
        }
    }
    found.sort_by(|(a, _), (b, _)| (a.due_at, &a.subject_id).cmp(&(b.due_at, &b.subject_id)));
    found.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let (keys, rows) = found.into_iter().unzip();
    Ok((keys, rows, active))
}

/// Whether the workspace's auto-destroy waits for approval: its organization requires it,
/// for every workspace or for its labels (labels that do not decode: it does).
fn needs_approval(org: &OrgRow, ws: &WorkspaceRow) -> bool {
    match ws.labels() {
        Ok(labels) => org.requires_approval(&labels),
        Err(_) => org.require_approval,
    }
}

/// Records on each fired workspace the due time it fired and its recomputed schedule.
async fn mark_fired(
    conn: &impl ConnectionTrait,
    fired: &[WorkspaceRow],
    now: EpochMs,
) -> Result<()> {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        id: &'a str,
        fired: Option<EpochMs>,
        next_at: Option<EpochMs>,
        reminder_at: Option<EpochMs>,
        window_held: Option<EpochMs>,
    }
    if fired.is_empty() {
        return Ok(());
    }
    let rows: Vec<Row> = fired
        .iter()
        .map(|ws| Row {
            id: &ws.id,
            fired: ws.last_fired_due_at,
            next_at: ws.next_auto_destroy_at,
            reminder_at: ws.next_reminder_at,
            window_held: ws.window_held_due_at,
        })
        .collect();
    let source = json_rows(
        conn.get_database_backend(),
        2,
        &[
            ("id", "TEXT"),
            ("fired", "BIGINT"),
            ("next_at", "BIGINT"),
            ("reminder_at", "BIGINT"),
            ("window_held", "BIGINT"),
        ],
    );
    // One join against the list (UPDATE … FROM, on SQLite and PostgreSQL alike): each row
    // finds its values by the primary key, whatever the batch's size.
    exec(
        conn,
        &format!(
            "UPDATE workspaces SET auto_destroy_status = 'queued', updated_at = $1, \
             last_fired_due_at = v.fired, next_auto_destroy_at = v.next_at, \
             next_reminder_at = v.reminder_at, window_held_due_at = v.window_held, \
             window_not_before = NULL \
             FROM {source} WHERE v.id = workspaces.id"
        ),
        [now.into(), json_param(&rows)?],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspaces::WorkspaceState;

    const H: i64 = 3_600_000;

    fn workspace() -> WorkspaceRow {
        WorkspaceRow {
            id: "ws".into(),
            organization_id: "org".into(),
            project_id: "p".into(),
            name: "pr-1".into(),
            labels: "{}".into(),
            state: WorkspaceState::Active,
            protected: false,
            protected_by_policy: false,
            locked: false,
            lock_reason: String::new(),
            working_directory: String::new(),
            auto_destroy_at: Some(10 * H),
            auto_destroy_inactivity_ms: None,
            inherits_project_auto_destroy: false,
            auto_destroy_status: AutoDestroyStatus::Idle,
            last_state_change_at: None,
            latest_serial: 0,
            applied_since_destroy: false,
            last_fired_due_at: None,
            auto_destroy_failures: 0,
            auto_destroy_retry_at: None,
            next_auto_destroy_at: Some(10 * H),
            next_reminder_at: None,
            inactivity_extension_ms: 0,
            held_due_at: None,
            inactivity_not_before: None,
            recurring_cron: None,
            recurring_time_zone: None,
            recurring_due_at: None,
            owner_email: String::new(),
            owner_slack_user_id: String::new(),
            created_at: 0,
            updated_at: 0,
            project_default_inactivity_ms: None,
            window_not_before: None,
            window_held_due_at: None,
            destroy_windows: None,
        }
    }

    #[test]
    fn a_due_key_queues_unless_locked_busy_or_stale() {
        let ws = workspace();
        assert_eq!(decide(&ws, 10 * H, false, 10 * H), Verdict::Queue);
        assert!(matches!(
            decide(&ws, 10 * H, true, 10 * H),
            Verdict::Defer(_)
        ));
        assert!(matches!(
            decide(&ws, 9 * H, false, 10 * H),
            Verdict::Stale(_)
        ));
        let locked = WorkspaceRow {
            locked: true,
            lock_reason: "release freeze".into(),
            ..workspace()
        };
        assert_eq!(
            decide(&locked, 10 * H, false, 10 * H),
            Verdict::Defer("workspace is locked: release freeze".into())
        );
    }

    #[test]
    fn protection_consumes_its_held_schedule_and_never_queues() {
        let held = WorkspaceRow {
            protected_by_policy: true,
            next_auto_destroy_at: None,
            held_due_at: Some(10 * H),
            ..workspace()
        };
        assert_eq!(decide(&held, 10 * H, false, 10 * H), Verdict::Consume);
        assert_eq!(decide(&held, 11 * H, false, 10 * H), Verdict::Protected);
        // Even a row that somehow still carries a pending time is never queued.
        let inconsistent = WorkspaceRow {
            protected: true,
            ..workspace()
        };
        assert_eq!(
            decide(&inconsistent, 10 * H, false, 10 * H),
            Verdict::Protected
        );
    }
}
