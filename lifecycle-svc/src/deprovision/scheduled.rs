//! Scheduled actions: an action fired on an entity at a set time, through the same trigger as
//! an operator's, once per fire key, with reminders before it (DP-9).

use ebb_common::time::{EpochMs, rfc3339};
use ebb_common::{Error, Result};
use sea_orm::sea_query::{Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, FromQueryResult};
use serde_json::{Map, Value as Json, json};

use crate::deprovision::action_runs::{check_parameters, load_action};
use crate::deprovision::entities;
use crate::deprovision::steps::Engine;
use crate::deprovision::trigger::trigger;
use crate::events::{NewEvent, outbox};
use crate::store::{db_enum, decode_json, exec, keyset, query_all, query_one, select_all};
use crate::tenancy::orgs;
use crate::timing::recurrence::Recurrence;
use crate::timing::reminders::{self, Reminded};
use crate::timing::{self, math};
use ebb_common::sql;

db_enum! {
    /// Where a scheduled action stands.
    pub enum ScheduledStatus {
        Pending = "pending",
        Fired = "fired",
        Failed = "failed",
        Canceled = "canceled",
    }
}

// --- scheduled actions (DP-9) --------------------------------------------------------------

/// Columns of [`ScheduledRow`].
pub const SCHEDULED_COLUMNS: &str = "id, organization_id, entity_id, action, parameters, scheduled_at, status, action_run_id, error, \
    created_at, fire_at, recurring_cron, recurring_time_zone, series_id";

/// A scheduled action.
#[derive(Debug, Clone, FromQueryResult)]
pub struct ScheduledRow {
    pub id: String,
    pub organization_id: String,
    pub entity_id: String,
    pub action: String,
    pub parameters: String,
    pub scheduled_at: i64,
    pub status: ScheduledStatus,
    pub action_run_id: Option<String>,
    pub error: String,
    pub created_at: i64,
    /// When it fires: `scheduled_at`, or the next opening of the organization's destroy
    /// windows after it.
    pub fire_at: Option<i64>,
    pub recurring_cron: Option<String>,
    pub recurring_time_zone: Option<String>,
    /// The first occurrence of its recurring schedule (itself for the first).
    pub series_id: Option<String>,
}

impl ScheduledRow {
    /// When it fires.
    pub fn fires_at(&self) -> EpochMs {
        self.fire_at.unwrap_or(self.scheduled_at)
    }

    /// Its recurring schedule, if it is an occurrence of one that parses (a damaged one has
    /// no next occurrence: fails closed).
    pub fn recurrence(&self) -> Option<Recurrence> {
        Recurrence::stored(
            self.recurring_cron.as_deref(),
            self.recurring_time_zone.as_deref(),
        )
    }
}

/// A scheduled action by id.
pub async fn get_scheduled(conn: &impl ConnectionTrait, id: &str) -> Result<ScheduledRow> {
    query_one(
        conn,
        &format!("SELECT {SCHEDULED_COLUMNS} FROM scheduled_actions WHERE id = $1"),
        [id.into()],
    )
    .await?
    .ok_or_else(|| Error::not_found("scheduled action", id))
}

/// Schedules an action; its parameters are checked now, its conditions when it fires.
pub async fn schedule_action(
    conn: &impl ConnectionTrait,
    entity_id: &str,
    action: &str,
    parameters: &Map<String, Json>,
    when: When,
    actor: &str,
    now: EpochMs,
) -> Result<ScheduledRow> {
    let (at, recurrence) = match when {
        When::At(at) if at <= now => {
            return Err(Error::invalid("scheduled_time", "must be in the future"));
        }
        When::At(at) => (at, None),
        When::Recurring(r) => match r.next_after(now) {
            Some(at) => (at, Some(*r)),
            None => {
                return Err(Error::invalid(
                    "recurring.cron",
                    format!("{:?} names no time from now on", r.cron()),
                ));
            }
        },
    };
    let entity = entities::get_entity(conn, entity_id).await?;
    let (_, def) = load_action(conn, &entity, action).await?;
    let parameters = check_parameters(&def, parameters)?;
    let org = orgs::get_org(conn, &entity.organization_id).await?;
    let fire_at = org.windows().open_at_or_after(at).ok_or_else(|| {
        Error::precondition(format!(
            "organization {}'s destroy windows never open; fix its destroy_windows setting",
            org.id
        ))
    })?;
    let id = uuid::Uuid::now_v7().to_string();
    let occurrence = Occurrence {
        organization_id: &entity.organization_id,
        entity_id,
        action,
        parameters: &Json::Object(parameters.clone()).to_string(),
        at,
        fire_at,
        recurrence: recurrence.as_ref(),
        series_id: recurrence.as_ref().map(|_| id.as_str()),
    };
    insert(conn, &id, &occurrence, &org.lead_times()?, now).await?;
    outbox::write(
        conn,
        vec![NewEvent::new(&entity.organization_id, "scheduled_action.created", "scheduled_action", &id, actor, json!({
            "action": action, "entity_id": entity_id, "scheduled_at": rfc3339(at), "parameters": parameters,
            "fire_at": rfc3339(fire_at), "owner": entity.owner(),
            "recurring": recurrence.as_ref().map(|r| json!({"cron": r.cron(), "time_zone": r.time_zone()})),
        }))],
        now,
    )
    .await?;
    get_scheduled(conn, &id).await
}

/// When a scheduled action fires: once, or at every occurrence of a recurring schedule (the
/// first after now; each occurrence a scheduled action, and a fire key, of its own).
#[derive(Debug, Clone)]
pub enum When {
    At(EpochMs),
    Recurring(Box<Recurrence>),
}

/// One occurrence to insert.
struct Occurrence<'a> {
    organization_id: &'a str,
    entity_id: &'a str,
    action: &'a str,
    parameters: &'a str,
    at: EpochMs,
    fire_at: EpochMs,
    recurrence: Option<&'a Recurrence>,
    series_id: Option<&'a str>,
}

/// Inserts a pending occurrence; one already scheduled for the same series and time is left
/// as it is (the database keeps one per series and time). Whether it was inserted.
async fn insert(
    conn: &impl ConnectionTrait,
    id: &str,
    o: &Occurrence<'_>,
    lead_times: &[i64],
    now: EpochMs,
) -> Result<bool> {
    let shard_key = (uuid::Uuid::new_v4().as_u128() % (1 << 30)) as i32;
    let n = exec(
        conn,
        "INSERT INTO scheduled_actions (id, organization_id, entity_id, action, parameters, scheduled_at, status, \
         next_reminder_at, shard_key, created_at, fire_at, recurring_cron, recurring_time_zone, series_id) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (series_id, scheduled_at) WHERE series_id IS NOT NULL DO NOTHING",
        [
            id.into(),
            o.organization_id.into(),
            o.entity_id.into(),
            o.action.into(),
            o.parameters.into(),
            o.at.into(),
            math::next_reminder_at(Some(o.fire_at), lead_times, now).into(),
            shard_key.into(),
            now.into(),
            o.fire_at.into(),
            o.recurrence.map(|r| r.cron().to_owned()).into(),
            o.recurrence.map(|r| r.time_zone().to_owned()).into(),
            o.series_id.map(str::to_owned).into(),
        ],
    )
    .await?;
    Ok(n == 1)
}

/// After an occurrence of a recurring action fired (or failed): the next occurrence after
/// both its time and now (a late scheduler skips what passed rather than firing it), inside
/// the organization's windows.
async fn schedule_next(
    conn: &impl ConnectionTrait,
    row: &ScheduledRow,
    org: &orgs::OrgRow,
    now: EpochMs,
) -> Result<Option<String>> {
    let (Some(recurrence), Some(series)) = (row.recurrence(), row.series_id.as_deref()) else {
        return Ok(None);
    };
    let Some(at) = recurrence.next_after(std::cmp::max(row.scheduled_at, now)) else {
        return Ok(None);
    };
    let Some(fire_at) = org.windows().open_at_or_after(at) else {
        return Ok(None);
    };
    let id = uuid::Uuid::now_v7().to_string();
    let occurrence = Occurrence {
        organization_id: &row.organization_id,
        entity_id: &row.entity_id,
        action: &row.action,
        parameters: &row.parameters,
        at,
        fire_at,
        recurrence: Some(&recurrence),
        series_id: Some(series),
    };
    if !insert(conn, &id, &occurrence, &org.lead_times()?, now).await? {
        return Ok(None);
    }
    outbox::write(
        conn,
        vec![NewEvent::new(
            &row.organization_id,
            "scheduled_action.created",
            "scheduled_action",
            &id,
            "scheduler",
            json!({
                "action": row.action, "entity_id": row.entity_id, "scheduled_at": rfc3339(at),
                "fire_at": rfc3339(fire_at), "series_id": series, "previous_id": row.id,
                "recurring": {"cron": recurrence.cron(), "time_zone": recurrence.time_zone()},
            }),
        )],
        now,
    )
    .await?;
    Ok(Some(id))
}

/// Cancels a pending scheduled action.
pub async fn cancel_scheduled(
    conn: &impl ConnectionTrait,
    id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<ScheduledRow> {
    let mut row = get_scheduled(conn, id).await?;
    // An occurrence of a recurring action that already fired stands for its series: the
    // series' pending occurrence is canceled, which ends it.
    if row.status != ScheduledStatus::Pending
        && let Some(series) = row.series_id.clone()
        && let Some(pending) = query_one::<ScheduledRow>(
            conn,
            &format!(
                "SELECT {SCHEDULED_COLUMNS} FROM scheduled_actions \
                 WHERE series_id = $1 AND status = 'pending'"
            ),
            [series.into()],
        )
        .await?
    {
        row = pending;
    }
    let id = row.id.clone();
    let n = exec(
        conn,
        "UPDATE scheduled_actions SET status = 'canceled', next_reminder_at = NULL WHERE id = $1 AND status = 'pending'",
        [id.clone().into()],
    )
    .await?;
    if n == 0 {
        return Err(Error::precondition(format!(
            "scheduled action {id} is already {}",
            row.status
        )));
    }
    let id = id.as_str();
    outbox::write(
        conn,
        vec![NewEvent::new(
            &row.organization_id,
            "scheduled_action.canceled",
            "scheduled_action",
            id,
            actor,
            json!({}),
        )],
        now,
    )
    .await?;
    get_scheduled(conn, id).await
}

/// What became of a scheduled action's fire key.
pub enum FireDecision {
    Fired {
        action_run_id: String,
    },
    Stale(String),
    Failed(String),
    /// Reached outside every destroy window: it fires at the next opening instead.
    WaitingForWindow {
        opens_at: Option<EpochMs>,
    },
}

/// Fires one scheduled action through the same trigger as an operator's, once: the action
/// run's unique `scheduled_action_id` is its fire key.
pub async fn fire_scheduled(
    conn: &impl ConnectionTrait,
    engine: &Engine,
    id: &str,
    due: EpochMs,
    now: EpochMs,
) -> Result<(FireDecision, bool)> {
    let lock = sql::for_update().sql(conn.get_database_backend());
    let Some(row) = query_one::<ScheduledRow>(
        conn,
        &format!("SELECT {SCHEDULED_COLUMNS} FROM scheduled_actions WHERE id = $1{lock}"),
        [id.into()],
    )
    .await?
    else {
        return Ok((
            FireDecision::Stale("no such scheduled action".into()),
            false,
        ));
    };
    if row.status != ScheduledStatus::Pending || row.fires_at() != due {
        return Ok((
            FireDecision::Stale(format!("the scheduled action is {}", row.status)),
            false,
        ));
    }
    let org = orgs::get_org(conn, &row.organization_id).await?;
    let windows = org.windows();
    if !windows.contains(now) {
        // Late (the scheduler was stopped) past the window's close: the next opening is a
        // fire key of its own, with its reminders.
        let opens_at = windows.open_at_or_after(now);
        if let Some(at) = opens_at {
            move_fire_at(conn, &row, at, &org.lead_times()?, now).await?;
        }
        outbox::write(
            conn,
            vec![NewEvent::new(
                &row.organization_id,
                "scheduled_action.waiting_for_window",
                "scheduled_action",
                id,
                "scheduler",
                json!({
                    "action": row.action, "entity_id": row.entity_id,
                    "scheduled_at": rfc3339(row.scheduled_at), "opens_at": opens_at.map(rfc3339),
                }),
            )],
            now,
        )
        .await?;
        return Ok((FireDecision::WaitingForWindow { opens_at }, false));
    }
    let parameters: Map<String, Json> =
        decode_json("scheduled_actions", "parameters", &row.id, &row.parameters)?;
    match trigger(
        conn,
        engine,
        &row.entity_id,
        &row.action,
        &parameters,
        false,
        Some(id),
        "scheduler",
        now,
    )
    .await
    {
        Ok(t) => {
            let run_id = t.run.map(|r| r.id).unwrap_or_default();
            exec(
                conn,
                "UPDATE scheduled_actions SET status = 'fired', action_run_id = $1, next_reminder_at = NULL WHERE id = $2",
                [run_id.clone().into(), id.into()],
            )
            .await?;
            schedule_next(conn, &row, &org, now).await?;
            Ok((
                FireDecision::Fired {
                    action_run_id: run_id,
                },
                t.queued_runs,
            ))
        }
        Err(
            e @ (Error::FailedPrecondition(_) | Error::InvalidArgument(_) | Error::NotFound { .. }),
        ) => {
            let reason = e.to_string();
            exec(
                conn,
                "UPDATE scheduled_actions SET status = 'failed', error = $1, next_reminder_at = NULL WHERE id = $2",
                [reason.clone().into(), id.into()],
            )
            .await?;
            // The next occurrence is decided on its own: this one's conditions may hold then.
            schedule_next(conn, &row, &org, now).await?;
            outbox::write(
                conn,
                vec![NewEvent::new(
                    &row.organization_id,
                    "scheduled_action.failed",
                    "scheduled_action",
                    id,
                    "scheduler",
                    json!({
                        "action": row.action, "entity_id": row.entity_id, "reason": reason,
                    }),
                )],
                now,
            )
            .await?;
            Ok((FireDecision::Failed(reason), false))
        }
        Err(other) => Err(other),
    }
}

/// A scheduled action with its entity's owner, whom its reminders reach too.
#[derive(Debug, Clone, FromQueryResult)]
struct Owned {
    #[sea_orm(nested)]
    row: ScheduledRow,
    owner_email: String,
    owner_slack_user_id: String,
}

impl Reminded for Owned {
    fn id(&self) -> &str {
        &self.row.id
    }

    fn organization_id(&self) -> &str {
        &self.row.organization_id
    }

    fn due_at(&self) -> Option<EpochMs> {
        (self.row.status == ScheduledStatus::Pending).then_some(self.row.fires_at())
    }

    fn reminder(&self, due_at: EpochMs, lead_ms: i64) -> NewEvent {
        let row = &self.row;
        NewEvent::new(
            &row.organization_id,
            "scheduled_action.reminder",
            "scheduled_action",
            &row.id,
            "scheduler",
            json!({
                "action": row.action, "entity_id": row.entity_id, "scheduled_at": rfc3339(due_at),
                "lead_time_ms": lead_ms, "lead_time": ebb_common::time::human(lead_ms),
                "owner": crate::workspaces::owner_json(&self.owner_email, &self.owner_slack_user_id),
            }),
        )
    }
}

/// Moves a pending scheduled action's firing to `at` (never before its scheduled time: the
/// database refuses it), with its next reminder for the new time.
async fn move_fire_at(
    conn: &impl ConnectionTrait,
    row: &ScheduledRow,
    at: EpochMs,
    lead_times: &[i64],
    now: EpochMs,
) -> Result<()> {
    exec(
        conn,
        "UPDATE scheduled_actions SET fire_at = $1, next_reminder_at = $2 \
         WHERE id = $3 AND status = 'pending'",
        [
            at.into(),
            math::next_reminder_at(Some(at), lead_times, now).into(),
            row.id.clone().into(),
        ],
    )
    .await?;
    Ok(())
}

/// After the organization's destroy windows changed: each pending scheduled action fires at
/// its scheduled time, or the first opening of the new windows after it.
pub async fn follow_windows(
    conn: &impl ConnectionTrait,
    org: &orgs::OrgRow,
    now: EpochMs,
) -> Result<u32> {
    let lock = sql::for_update().sql(conn.get_database_backend());
    let pending: Vec<ScheduledRow> = query_all(
        conn,
        &format!(
            "SELECT {SCHEDULED_COLUMNS} FROM scheduled_actions \
             WHERE organization_id = $1 AND status = 'pending' ORDER BY id{lock}"
        ),
        [org.id.clone().into()],
    )
    .await?;
    let (windows, leads) = (org.windows(), org.lead_times()?);
    let mut moved = 0;
    for row in pending {
        // A setting that never opens leaves the time as it was: it fires only inside it.
        let Some(at) = windows.open_at_or_after(row.scheduled_at) else {
            continue;
        };
        if at != row.fires_at() {
            move_fire_at(conn, &row, at, &leads, now).await?;
            moved += 1;
        }
    }
    Ok(moved)
}

/// Sends the due reminders of scheduled actions in one shard, each lead time once.
pub async fn send_scheduled_reminders(
    conn: &impl ConnectionTrait,
    shard: i32,
    shard_count: i32,
    limit: u64,
    now: EpochMs,
) -> Result<u32> {
    let columns = SCHEDULED_COLUMNS
        .split(", ")
        .map(|c| format!("s.{}", c.trim()))
        .chain(["e.owner_email".into(), "e.owner_slack_user_id".into()])
        .collect::<Vec<_>>()
        .join(", ");
    let sql = reminders::due_statement(
        conn,
        &timing::SCHEDULED_ACTIONS,
        &columns,
        "scheduled_actions s JOIN entities e ON e.id = s.entity_id",
        "s",
        limit,
    );
    let due: Vec<Owned> =
        query_all(conn, &sql, [now.into(), shard_count.into(), shard.into()]).await?;
    reminders::send(conn, &timing::SCHEDULED_ACTIONS, &due, None, now).await
}

/// One page of an organization's scheduled actions (of one entity, if given), soonest first,
/// after `after` (scheduled_at, id).
pub async fn list(
    conn: &impl ConnectionTrait,
    organization_id: &str,
    entity_id: Option<&str>,
    after: Option<(i64, String)>,
    limit: u64,
) -> Result<Vec<ScheduledRow>> {
    let mut q = Query::select();
    q.expr(Expr::cust(SCHEDULED_COLUMNS))
        .from("scheduled_actions")
        .and_where(Expr::col("organization_id").eq(organization_id));
    if let Some(e) = entity_id {
        q.and_where(Expr::col("entity_id").eq(e));
    }
    if let Some(position) = after {
        q.cond_where(keyset("scheduled_at", "id", position, Order::Asc));
    }
    q.order_by("scheduled_at", Order::Asc)
        .order_by("id", Order::Asc)
        .limit(limit);
    select_all(conn, &q).await
}
