//! Deliveries and their attempts: leasing due rows, recording outcomes, listing, redelivery.

use std::collections::BTreeMap;

use ebb_common::db::Db;
use ebb_common::sealing::Keyring;
use ebb_common::sql::{for_update, now_ms_sql, placeholders};
use ebb_common::time::{EpochMs, to_timestamp, to_timestamp_opt};
use ebb_common::{Error, Result};
use ebb_proto::notifier::v1 as pb;
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseTransaction, QueryResult, TransactionTrait, Value,
};

use crate::configurations::{self, Destination};
use crate::publish::{self, EventRecord, Exhaustion};
use crate::retry::{Next, Policy};
use crate::rows;
use crate::transport::AttemptResult;

/// A leased delivery with everything needed to attempt it.
#[derive(Debug, Clone)]
pub struct Job {
    /// Delivery id.
    pub id: String,
    /// Stable message id.
    pub message_id: String,
    /// Proves the lease when recording.
    pub lease_token: String,
    /// Attempts in the current cycle (since creation or the last redelivery).
    pub cycle_attempts: i64,
    /// Whether this attempt was asked for by a redelivery.
    pub redelivery: bool,
    /// The event.
    pub event: EventRecord,
    /// Configuration id.
    pub configuration_id: String,
    /// Configuration name.
    pub configuration_name: String,
    /// Destination type.
    pub destination: Destination,
    /// URL.
    pub url: String,
    /// Email recipients.
    pub email_addresses: Vec<String>,
    /// Secrets that sign it, newest first.
    pub secrets: Vec<String>,
}

/// Leases up to `limit` due deliveries of enabled configurations to `owner` for `ttl_ms`.
/// On PostgreSQL rows locked by another replica's claim are skipped, not waited for.
pub async fn claim(
    db: &Db,
    keys: &Keyring,
    owner: &str,
    limit: u32,
    ttl_ms: i64,
) -> Result<Vec<Job>> {
    let now = now_ms_sql(db.backend());
    let token = uuid::Uuid::new_v4().simple().to_string();
    let pick = format!(
        "SELECT d.id FROM deliveries d
         JOIN notification_configurations c ON c.id = d.configuration_id
         WHERE d.status = 'pending' AND d.next_attempt_ms <= {now}
           AND (d.lease_expires_ms IS NULL OR d.lease_expires_ms <= {now})
           AND c.enabled = 1
         ORDER BY d.next_attempt_ms
         LIMIT $4"
    );
    let lock = for_update().of("d").skip_locked().sql(db.backend());
    let sql = match db.backend() {
        // A materialized CTE runs the locking pick exactly once; as an `IN (subquery)` the
        // planner may re-run it and lease far more rows than the limit.
        DatabaseBackend::Postgres => format!(
            "WITH picked AS MATERIALIZED ({pick}{lock})
             UPDATE deliveries SET lease_owner = $1, lease_token = $2,
                lease_expires_ms = {now} + $3
             FROM picked WHERE deliveries.id = picked.id
             RETURNING deliveries.id"
        ),
        // SQLite has one writer at a time and evaluates the subquery once.
        _ => format!(
            "UPDATE deliveries SET lease_owner = $1, lease_token = $2,
                lease_expires_ms = {now} + $3
             WHERE id IN ({pick})
             RETURNING id"
        ),
    };
    let claimed = db
        .conn
        .query_all_raw(db.stmt(
            &sql,
            [
                Value::from(owner),
                Value::from(token.clone()),
                Value::from(ttl_ms),
                Value::from(i64::from(limit)),
            ],
        ))
        .await?;
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = claimed
        .iter()
        .map(|r| rows::get(r, "id"))
        .collect::<Result<_>>()?;
    let rows = db
        .conn
        .query_all_raw(
            db.stmt(
                &format!(
                    "SELECT d.id, d.message_id, d.cycle_attempts, d.redelivery, d.configuration_id,
                    c.name AS c_name, c.destination_type AS c_destination, c.url AS c_url,
                    c.email_addresses AS c_emails, {}
                 FROM deliveries d
                 JOIN events e ON e.id = d.event_id
                 JOIN notification_configurations c ON c.id = d.configuration_id
                 WHERE d.id IN ({}) AND d.lease_token = ${}",
                    publish::EVENT_COLUMNS,
                    placeholders(1, ids.len()),
                    ids.len() + 1
                ),
                ids.iter()
                    .map(|i| Value::from(i.clone()))
                    .chain([Value::from(token.clone())]),
            ),
        )
        .await?;
    let config_ids: Vec<String> = {
        let mut ids = rows
            .iter()
            .map(|r| rows::get::<String>(r, "configuration_id"))
            .collect::<Result<Vec<_>>>()?;
        ids.sort();
        ids.dedup();
        ids
    };
    let secrets = configurations::signing_secrets_of(db, keys, &config_ids).await?;
    rows.iter()
        .map(|r| {
            let destination: String = rows::get(r, "c_destination")?;
            Ok(Job {
                id: rows::get(r, "id")?,
                message_id: rows::get(r, "message_id")?,
                lease_token: token.clone(),
                cycle_attempts: i64::from(rows::get::<i32>(r, "cycle_attempts")?),
                redelivery: rows::flag(r, "redelivery")?,
                event: publish::event_from_row(r)?,
                configuration_id: rows::get(r, "configuration_id")?,
                configuration_name: rows::get(r, "c_name")?,
                destination: Destination::parse(&destination)?,
                url: rows::get(r, "c_url")?,
                email_addresses: rows::json(r, "c_emails")?,
                secrets: Vec::new(),
            })
        })
        .collect::<Result<Vec<Job>>>()
        .map(|jobs| attach_secrets(jobs, secrets))
}

fn attach_secrets(mut jobs: Vec<Job>, secrets: Vec<(String, String)>) -> Vec<Job> {
    for job in &mut jobs {
        job.secrets = secrets
            .iter()
            .filter(|(c, _)| *c == job.configuration_id)
            .map(|(_, s)| s.clone())
            .collect();
    }
    jobs
}

/// One finished attempt waiting to be recorded.
#[derive(Debug)]
pub struct Finished {
    /// The leased delivery.
    pub job: Job,
    /// What the attempt produced.
    pub result: AttemptResult,
    /// When it started.
    pub started_ms: EpochMs,
    /// What happens next.
    pub next: Next,
}

/// Records finished attempts in one transaction (one commit for the whole group, which is
/// what makes high delivery rates possible) and moves each delivery on. An attempt whose
/// lease was lost (another replica owns the delivery now) is dropped. Returns how many were
/// dropped.
pub async fn record_all(
    db: &Db,
    finished: &[Finished],
    policy: &Policy,
    replica: &str,
) -> Result<usize> {
    let txn = db.conn.begin().await?;
    let mut lost = 0;
    for f in finished {
        if !record(&txn, f, policy, replica).await? {
            lost += 1;
        }
    }
    txn.commit().await?;
    Ok(lost)
}

async fn record(
    txn: &DatabaseTransaction,
    f: &Finished,
    policy: &Policy,
    replica: &str,
) -> Result<bool> {
    let (job, result) = (&f.job, &f.result);
    let b = txn.get_database_backend();
    let now_sql = now_ms_sql(b);
    let (status, delay_ms) = match f.next {
        Next::Succeeded => ("succeeded", 0),
        Next::Gone | Next::Exhausted => ("failed", 0),
        Next::RetryAfter(d) => ("pending", d.as_millis() as i64),
    };
    let last_error = if result.error.is_empty() && status != "succeeded" {
        result.describe()
    } else {
        result.error.clone()
    };
    let updated = txn
        .query_one_raw(ebb_common::db::stmt(
            b,
            &format!(
                "UPDATE deliveries SET status = $3, attempt_count = attempt_count + 1,
                    cycle_attempts = cycle_attempts + 1, redelivery = 0,
                    next_attempt_ms = {now_sql} + $4,
                    lease_owner = NULL, lease_token = NULL, lease_expires_ms = NULL,
                    last_response_status = $5, last_error = $6, updated_ms = {now_sql},
                    completed_ms = CASE WHEN $3 = 'pending' THEN NULL ELSE {now_sql} END
                 WHERE id = $1 AND lease_token = $2 AND status = 'pending'
                 RETURNING attempt_count"
            ),
            [
                Value::from(job.id.clone()),
                Value::from(job.lease_token.clone()),
                Value::from(status),
                Value::from(delay_ms),
                Value::from(result.status),
                Value::from(last_error.clone()),
            ],
        ))
        .await?;
    let Some(updated) = updated else {
        return Ok(false);
    };
    let number: i32 = rows::get(&updated, "attempt_count")?;
    txn.execute_raw(ebb_common::db::stmt(
        b,
        "INSERT INTO delivery_attempts (delivery_id, number, outcome, response_status,
            response_headers, response_body, response_body_truncated, error, started_ms,
            duration_ms, redelivery, replica)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        [
            Value::from(job.id.clone()),
            Value::from(number),
            Value::from(result.outcome.as_str()),
            Value::from(result.status),
            Value::from(serde_json::to_string(&result.headers).unwrap_or_default()),
            Value::from(result.body.clone()),
            Value::from(i32::from(result.truncated)),
            Value::from(result.error.clone()),
            Value::from(f.started_ms),
            Value::from(result.duration_ms),
            Value::from(i32::from(job.redelivery)),
            Value::from(replica),
        ],
    ))
    .await?;
    match f.next {
        Next::Gone => {
            configurations::disable(
                txn,
                &job.configuration_id,
                &format!(
                    "the endpoint answered 410 Gone to delivery {} on {}",
                    job.id,
                    ebb_common::time::rfc3339(ebb_common::time::now_ms())
                ),
            )
            .await?;
        }
        Next::Exhausted => {
            let event_id = publish::record_exhausted(
                txn,
                &Exhaustion {
                    delivery_id: &job.id,
                    event: &job.event,
                    configuration_id: &job.configuration_id,
                    configuration_name: &job.configuration_name,
                    attempts: i64::from(number),
                    last_response_status: result.status,
                    last_error: &last_error,
                },
                policy.first_delay(),
                ebb_common::time::now_ms(),
            )
            .await?;
            txn.execute_raw(ebb_common::db::stmt(
                b,
                "UPDATE deliveries SET exhausted_event_id = $2 WHERE id = $1",
                [Value::from(job.id.clone()), Value::from(event_id)],
            ))
            .await?;
        }
        _ => {}
    }
    Ok(true)
}

/// Filters of [`list`].
#[derive(Debug, Default)]
pub struct Filter {
    /// Required.
    pub organization_id: String,
    /// Optional.
    pub configuration_id: String,
    /// Optional.
    pub event_id: String,
    /// Optional pattern.
    pub event_type: String,
    /// Stored status names; empty for all.
    pub statuses: Vec<&'static str>,
    /// Created at or after.
    pub after_ms: Option<EpochMs>,
    /// Created before.
    pub before_ms: Option<EpochMs>,
}

const DELIVERY_COLUMNS: &str = "id, message_id, event_id, event_type, configuration_id, \
    organization_id, status, attempt_count, next_attempt_ms, last_response_status, last_error, \
    created_ms, completed_ms, exhausted_event_id";

fn status_from_str(s: &str) -> pb::DeliveryStatus {
    match s {
        "pending" => pb::DeliveryStatus::Pending,
        "succeeded" => pb::DeliveryStatus::Succeeded,
        "failed" => pb::DeliveryStatus::Failed,
        "cancelled" => pb::DeliveryStatus::Cancelled,
        _ => pb::DeliveryStatus::Unspecified,
    }
}

/// Stored name of a status.
pub fn status_name(s: i32) -> Option<&'static str> {
    match pb::DeliveryStatus::try_from(s).ok()? {
        pb::DeliveryStatus::Pending => Some("pending"),
        pb::DeliveryStatus::Succeeded => Some("succeeded"),
        pb::DeliveryStatus::Failed => Some("failed"),
        pb::DeliveryStatus::Cancelled => Some("cancelled"),
        pb::DeliveryStatus::Unspecified => None,
    }
}

fn delivery_from_row(r: &QueryResult) -> Result<(i64, pb::Delivery)> {
    let status: String = rows::get(r, "status")?;
    let created: i64 = rows::get(r, "created_ms")?;
    let pending = status == "pending";
    Ok((
        created,
        pb::Delivery {
            id: rows::get(r, "id")?,
            message_id: rows::get(r, "message_id")?,
            event_id: rows::get(r, "event_id")?,
            event_type: rows::get(r, "event_type")?,
            configuration_id: rows::get(r, "configuration_id")?,
            organization_id: rows::get(r, "organization_id")?,
            status: status_from_str(&status) as i32,
            attempt_count: rows::get(r, "attempt_count")?,
            next_attempt_time: pending
                .then(|| rows::get::<i64>(r, "next_attempt_ms").map(to_timestamp))
                .transpose()?,
            last_response_status: rows::get(r, "last_response_status")?,
            last_error: rows::get(r, "last_error")?,
            create_time: Some(to_timestamp(created)),
            complete_time: to_timestamp_opt(rows::get(r, "completed_ms")?),
            exhausted_event_id: rows::get::<Option<String>>(r, "exhausted_event_id")?
                .unwrap_or_default(),
        },
    ))
}

/// A page of deliveries, newest first.
pub async fn list(
    db: &Db,
    f: &Filter,
    after: Option<&(i64, String)>,
    limit: u64,
) -> Result<Vec<(i64, pb::Delivery)>> {
    let mut sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE organization_id = $1");
    let mut values = vec![Value::from(f.organization_id.clone())];
    let mut add = |sql: &mut String, clause: &str, v: Value| {
        values.push(v);
        sql.push_str(&clause.replace("?", &format!("${}", values.len())));
    };
    if !f.configuration_id.is_empty() {
        add(
            &mut sql,
            " AND configuration_id = ?",
            Value::from(f.configuration_id.clone()),
        );
    }
    if !f.event_id.is_empty() {
        add(
            &mut sql,
            " AND event_id = ?",
            Value::from(f.event_id.clone()),
        );
    }
    if let Some(ms) = f.after_ms {
        add(&mut sql, " AND created_ms >= ?", Value::from(ms));
    }
    if let Some(ms) = f.before_ms {
        add(&mut sql, " AND created_ms < ?", Value::from(ms));
    }
    if !f.event_type.is_empty() && !f.event_type.contains('*') && !f.event_type.contains(':') {
        add(
            &mut sql,
            " AND event_type = ?",
            Value::from(f.event_type.clone()),
        );
    }
    if !f.statuses.is_empty() {
        let first = values.len() + 1;
        for s in &f.statuses {
            values.push(Value::from(*s));
        }
        sql.push_str(&format!(
            " AND status IN ({})",
            placeholders(first, f.statuses.len())
        ));
    }
    if let Some((key, id)) = after {
        values.push(Value::from(*key));
        values.push(Value::from(id.clone()));
        sql.push_str(&format!(
            " AND (created_ms < ${a} OR (created_ms = ${a} AND id < ${b}))",
            a = values.len() - 1,
            b = values.len()
        ));
    }
    let pattern = (f.event_type.contains('*') || f.event_type.contains(':'))
        .then(|| vec![f.event_type.clone()]);
    sql.push_str(" ORDER BY created_ms DESC, id DESC");
    if pattern.is_none() {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    // Patterns are matched here; the scan stops once the page is full.
    let rows = db.conn.query_all_raw(db.stmt(&sql, values)).await?;
    let mut out = Vec::new();
    for r in &rows {
        let d = delivery_from_row(r)?;
        if let Some(p) = &pattern
            && !crate::patterns::matches_any(p, &d.1.event_type)
        {
            continue;
        }
        out.push(d);
        if out.len() as u64 >= limit {
            break;
        }
    }
    Ok(out)
}

/// One delivery.
pub async fn get<C: ConnectionTrait>(conn: &C, id: &str) -> Result<pb::Delivery> {
    let row = conn
        .query_one_raw(ebb_common::db::stmt(
            conn.get_database_backend(),
            &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1"),
            [Value::from(id)],
        ))
        .await?
        .ok_or_else(|| Error::not_found("delivery", id))?;
    Ok(delivery_from_row(&row)?.1)
}

/// A page of a delivery's attempts, oldest first.
pub async fn attempts(
    db: &Db,
    delivery_id: &str,
    after_number: i64,
    limit: u64,
) -> Result<Vec<pb::DeliveryAttempt>> {
    let rows = db
        .conn
        .query_all_raw(db.stmt(
            &format!(
                "SELECT delivery_id, number, outcome, response_status, response_headers,
                    response_body, response_body_truncated, error, started_ms, duration_ms,
                    redelivery
                 FROM delivery_attempts WHERE delivery_id = $1 AND number > $2
                 ORDER BY number LIMIT {limit}"
            ),
            [Value::from(delivery_id), Value::from(after_number)],
        ))
        .await?;
    rows.iter()
        .map(|r| {
            let outcome: String = rows::get(r, "outcome")?;
            let headers: String = rows::get(r, "response_headers")?;
            Ok(pb::DeliveryAttempt {
                delivery_id: rows::get(r, "delivery_id")?,
                number: rows::get(r, "number")?,
                outcome: match outcome.as_str() {
                    "succeeded" => pb::AttemptOutcome::Succeeded,
                    "rejected" => pb::AttemptOutcome::Rejected,
                    "timed_out" => pb::AttemptOutcome::TimedOut,
                    "unreachable" => pb::AttemptOutcome::Unreachable,
                    _ => pb::AttemptOutcome::Unspecified,
                } as i32,
                response_status: rows::get(r, "response_status")?,
                response_headers: serde_json::from_str::<BTreeMap<String, String>>(&headers)
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                response_body: rows::get(r, "response_body")?,
                response_body_truncated: rows::flag(r, "response_body_truncated")?,
                error: rows::get(r, "error")?,
                start_time: Some(to_timestamp(rows::get(r, "started_ms")?)),
                duration_ms: rows::get(r, "duration_ms")?,
                redelivery: rows::flag(r, "redelivery")?,
            })
        })
        .collect()
}

/// Whether a delivery exists (for attempt lists of unknown ids).
pub async fn exists(db: &Db, id: &str) -> Result<bool> {
    Ok(db
        .conn
        .query_one_raw(db.stmt("SELECT id FROM deliveries WHERE id = $1", [Value::from(id)]))
        .await?
        .is_some())
}

/// Schedules one delivery again now. A delivery being attempted keeps its lease, and that
/// attempt counts as the first of the new cycle.
pub async fn redeliver_one<C: ConnectionTrait>(conn: &C, id: &str) -> Result<pb::Delivery> {
    let b = conn.get_database_backend();
    let current = get(conn, id).await?;
    if current.status == pb::DeliveryStatus::Cancelled as i32 {
        return Err(Error::precondition(format!(
            "delivery {id} was cancelled because its configuration was deleted"
        )));
    }
    conn.execute_raw(ebb_common::db::stmt(
        b,
        &format!(
            "UPDATE deliveries SET status = 'pending', cycle_attempts = 0, redelivery = 1,
                next_attempt_ms = {now}, completed_ms = NULL, updated_ms = {now}
             WHERE id = $1 AND status <> 'cancelled'",
            now = now_ms_sql(b)
        ),
        [Value::from(id)],
    ))
    .await?;
    get(conn, id).await
}

/// Schedules again the deliveries of `org` created in `[start, end)` with the given statuses.
pub async fn redeliver_range<C: ConnectionTrait>(
    conn: &C,
    org: &str,
    start: EpochMs,
    end: EpochMs,
    configuration_id: &str,
    statuses: &[&'static str],
) -> Result<u64> {
    let b = conn.get_database_backend();
    let mut values = vec![Value::from(org), Value::from(start), Value::from(end)];
    let mut sql = format!(
        "UPDATE deliveries SET status = 'pending', cycle_attempts = 0, redelivery = 1,
            next_attempt_ms = {now}, completed_ms = NULL, updated_ms = {now}
         WHERE organization_id = $1 AND created_ms >= $2 AND created_ms < $3",
        now = now_ms_sql(b)
    );
    if !configuration_id.is_empty() {
        values.push(Value::from(configuration_id));
        sql.push_str(&format!(" AND configuration_id = ${}", values.len()));
    }
    let first = values.len() + 1;
    for s in statuses {
        values.push(Value::from(*s));
    }
    sql.push_str(&format!(
        " AND status IN ({})",
        placeholders(first, statuses.len())
    ));
    Ok(conn
        .execute_raw(ebb_common::db::stmt(b, &sql, values))
        .await?
        .rows_affected())
}
