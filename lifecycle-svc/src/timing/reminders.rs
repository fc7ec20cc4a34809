//! The reminder loop (AD-10, DP-9): a subject whose `next_reminder_at` has come gets the
//! reminder of the latest lead time that has passed — once per (schedule, lead time), kept by
//! the timeline's ledger — and its next reminder time moves on.

use std::collections::BTreeMap;

use ebb_common::Result;
use ebb_common::time::EpochMs;
use sea_orm::ConnectionTrait;

use super::snooze_links::Links;
use super::{Timeline, math};
use crate::events::{NewEvent, outbox};
use crate::store::{exec, skip_locked};
use crate::tenancy::orgs::{self, OrgRow};

/// A subject with a reminder to send.
pub trait Reminded {
    /// Its id.
    fn id(&self) -> &str;
    /// Its organization, whose lead times apply.
    fn organization_id(&self) -> &str;
    /// When it falls due, if it still does.
    fn due_at(&self) -> Option<EpochMs>;
    /// The reminder event for the lead time `lead_ms` before `due_at`.
    fn reminder(&self, due_at: EpochMs, lead_ms: i64) -> NewEvent;
}

/// The statement selecting the subjects of one shard whose reminder time has come, rows
/// locked (skipping those another replica holds) on PostgreSQL. Binds `$1` now, `$2` shard
/// count, `$3` shard.
pub fn due_statement(
    conn: &impl ConnectionTrait,
    timeline: &Timeline,
    columns: &str,
    from: &str,
    alias: &str,
    limit: u64,
) -> String {
    format!(
        "SELECT {columns} FROM {from} WHERE {alias}.next_reminder_at <= $1 \
         AND {alias}.shard_key % $2 = $3{live} ORDER BY {alias}.next_reminder_at LIMIT {limit}{lock}",
        live = timeline.live.replace(" AND ", &format!(" AND {alias}.")),
        lock = skip_locked(conn, alias),
    )
}

/// Sends what is due for `subjects`, records each in the ledger and moves each subject's
/// `next_reminder_at`; the number of reminders sent.
/// With `links`, a reminder of a workspace carries a snooze link.
pub async fn send<R: Reminded>(
    conn: &impl ConnectionTrait,
    timeline: &Timeline,
    subjects: &[R],
    links: Option<&Links>,
    now: EpochMs,
) -> Result<u32> {
    let mut orgs: BTreeMap<String, OrgRow> = BTreeMap::new();
    let mut events = Vec::new();
    for subject in subjects {
        let org_id = subject.organization_id();
        if !orgs.contains_key(org_id) {
            orgs.insert(org_id.to_owned(), orgs::get_org(conn, org_id).await?);
        }
        let leads = orgs[org_id].lead_times()?;
        let mut next_reminder = None;
        if let Some(due_at) = subject.due_at() {
            if let Some(lead) = math::due_lead_time(due_at, &leads, now) {
                // The lead times this one supersedes are recorded too, so a schedule set at
                // short notice gets one reminder, not all of them.
                let mut first = true;
                for l in std::iter::once(lead).chain(math::superseded(lead, &leads)) {
                    let (sql, values) = (timeline.ledger)(subject.id(), due_at, l, now);
                    let inserted = exec(conn, sql, values).await?;
                    if first && inserted == 1 {
                        let mut event = subject.reminder(due_at, lead);
                        if let Some(links) = links {
                            links.decorate(&mut event, due_at, orgs[org_id].snooze_step_ms());
                        }
                        events.push(event);
                    }
                    first = false;
                }
            }
            next_reminder = math::next_reminder_after(due_at, &leads, now);
        }
        exec(
            conn,
            &format!(
                "UPDATE {} SET next_reminder_at = $1 WHERE id = $2",
                timeline.table
            ),
            [next_reminder.into(), subject.id().into()],
        )
        .await?;
    }
    let sent = events.len() as u32;
    outbox::write(conn, events, now).await?;
    Ok(sent)
}
