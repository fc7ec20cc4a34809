//! The transactional outbox: every change writes its domain events in its own transaction;
//! each organization's events carry a gapless sequence (`org_seq`) in the order they became
//! visible. On PostgreSQL a change inserts its events unnumbered and [`number`] numbers them
//! after the commit, so one organization's changes do not queue behind a counter's row lock;
//! on SQLite, which commits one writer at a time, a change numbers its own events.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::actor;
use crate::store::{exec, json_param, json_rows, select_all};
use ebb_common::Result;
use ebb_common::db::stmt;
use ebb_common::time::EpochMs;
use sea_orm::sea_query::{Expr, ExprTrait, LikeExpr, Order, Query};
use sea_orm::{ConnectionTrait, DatabaseConnection, FromQueryResult, TransactionTrait, Value};
use serde_json::Value as Json;

/// A domain event about to be written.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub organization_id: String,
    pub event_type: &'static str,
    pub subject_type: &'static str,
    pub subject_id: String,
    pub actor: String,
    pub data: Json,
}

impl NewEvent {
    /// An event about `subject_type` `subject_id` in `organization_id`.
    pub fn new(
        organization_id: &str,
        event_type: &'static str,
        subject_type: &'static str,
        subject_id: &str,
        actor: &str,
        data: Json,
    ) -> Self {
        Self {
            organization_id: organization_id.to_owned(),
            event_type,
            subject_type,
            subject_id: subject_id.to_owned(),
            actor: actor.to_owned(),
            data,
        }
    }
}

const COLUMNS: usize = 10;

/// Rows per INSERT, well below SQLite's bound-parameter limit.
const CHUNK: usize = 1000;

/// An event with what its change knew when it wrote it: the actor in scope (already applied),
/// the trace and the time.
#[derive(Debug)]
struct Stamped {
    event: NewEvent,
    trace_context: String,
    now: EpochMs,
}

tokio::task_local! {
    /// Events of the change in scope, held until it commits (see [`collecting`]).
    static HELD: RefCell<Vec<Stamped>>;
}

/// Events a change wrote, held to be written just before it commits.
#[derive(Debug, Default)]
#[must_use = "held events are lost unless written"]
pub struct Held(Vec<Stamped>);

impl Held {
    /// Writes the held events within `conn`'s transaction.
    pub async fn write(self, conn: &impl ConnectionTrait) -> Result<()> {
        insert(conn, self.0).await
    }
}

/// Runs `work`, holding the events it writes instead of writing them at once; the caller writes
/// them with [`Held::write`] as the last statement before its commit. On SQLite, numbering an
/// event locks its organization's counter until the transaction ends, so writing them last
/// keeps that lock for the commit alone.
pub async fn collecting<T>(work: impl Future<Output = Result<T>>) -> Result<(T, Held)> {
    HELD.scope(RefCell::new(Vec::new()), async move {
        let out = work.await?;
        let held = HELD.with(|h| std::mem::take(&mut *h.borrow_mut()));
        Ok((out, Held(held)))
    })
    .await
}

/// Writes `events` within the caller's transaction, or holds them for its commit inside
/// [`collecting`].
pub async fn write(conn: &impl ConnectionTrait, events: Vec<NewEvent>, now: EpochMs) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    // The change's trace, carried to the sinks with each of its events.
    let trace_context = ebb_common::telemetry::current_traceparent();
    // The actor in scope caused every event of the change (see `crate::actor`).
    let scope = actor::current().map(|a| (a.id(), a.detail()));
    let mut stamped: Vec<Stamped> = events
        .into_iter()
        .map(|mut event| {
            if let Some((id, detail)) = &scope {
                event.actor.clone_from(id);
                if let Json::Object(data) = &mut event.data {
                    data.insert("actor".to_owned(), detail.clone());
                }
            }
            Stamped {
                event,
                trace_context: trace_context.clone(),
                now,
            }
        })
        .collect();
    if HELD
        .try_with(|h| h.borrow_mut().append(&mut stamped))
        .is_ok()
    {
        return Ok(());
    }
    insert(conn, stamped).await
}

/// Inserts `events`: numbered in their organizations' sequences on SQLite, for [`number`] to
/// number on PostgreSQL.
async fn insert(conn: &impl ConnectionTrait, events: Vec<Stamped>) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let backend = conn.get_database_backend();
    let mut by_org: BTreeMap<String, Vec<Stamped>> = BTreeMap::new();
    for e in events {
        by_org
            .entry(e.event.organization_id.clone())
            .or_default()
            .push(e);
    }
    if backend == sea_orm::DatabaseBackend::Postgres {
        for (org, events) in by_org {
            for chunk in events.chunks(CHUNK) {
                insert_unnumbered(conn, &org, chunk).await?;
            }
        }
        return Ok(());
    }
    let mut rows: Vec<(i64, Stamped)> = Vec::new();
    for (org, events) in by_org {
        let n = events.len() as i64;
        let last: i64 = conn
            .query_one_raw(stmt(
                backend,
                "UPDATE organizations SET event_seq = event_seq + $1 WHERE id = $2 RETURNING event_seq",
                [n.into(), org.clone().into()],
            ))
            .await?
            .ok_or_else(|| ebb_common::Error::not_found("organization", org.clone()))?
            .try_get("", "event_seq")?;
        let first = last - n + 1;
        rows.extend(
            events
                .into_iter()
                .enumerate()
                .map(|(i, e)| (first + i as i64, e)),
        );
    }
    for chunk in rows.chunks(CHUNK) {
        let mut sql = String::from(
            "INSERT INTO outbox (org_seq, organization_id, type, subject_type, subject_id, actor, data, \
             created_at, trace_context, id) VALUES ",
        );
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * COLUMNS);
        for (i, (org_seq, s)) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            let b = i * COLUMNS;
            let row: Vec<String> = (1..=COLUMNS).map(|k| format!("${}", b + k)).collect();
            sql.push_str(&format!("({})", row.join(",")));
            values.extend([(*org_seq).into(), s.event.organization_id.clone().into()]);
            values.extend(row_values(s));
        }
        conn.execute_raw(stmt(backend, &sql, values)).await?;
    }
    Ok(())
}

/// The values of one outbox row after its `org_seq` and organization, its id last.
fn row_values(s: &Stamped) -> [Value; 8] {
    let e = &s.event;
    [
        e.event_type.into(),
        e.subject_type.into(),
        e.subject_id.clone().into(),
        e.actor.clone().into(),
        e.data.to_string().into(),
        s.now.into(),
        s.trace_context.clone().into(),
        uuid::Uuid::now_v7().to_string().into(),
    ]
}

/// On PostgreSQL: inserts `events` of organization `org` without their numbers, in one
/// statement that takes no lock but the new rows'. [`number`] numbers them once committed.
///
/// The events travel as one JSON array, so the statement's text is the same whatever their
/// number: the server parses and plans it once per connection, where a list of placeholders
/// made each batch size a statement of its own, with thousands of parameters to plan.
async fn insert_unnumbered(
    conn: &impl ConnectionTrait,
    org: &str,
    events: &[Stamped],
) -> Result<()> {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        k: usize,
        id: String,
        r#type: &'a str,
        subject_type: &'a str,
        subject_id: &'a str,
        actor: &'a str,
        data: &'a Json,
        created_at: EpochMs,
        trace_context: &'a str,
    }
    let rows: Vec<Row> = events
        .iter()
        .enumerate()
        .map(|(k, s)| Row {
            k,
            id: uuid::Uuid::now_v7().to_string(),
            r#type: s.event.event_type,
            subject_type: s.event.subject_type,
            subject_id: &s.event.subject_id,
            actor: &s.event.actor,
            data: &s.event.data,
            created_at: s.now,
            trace_context: &s.trace_context,
        })
        .collect();
    let source = json_rows(
        sea_orm::DatabaseBackend::Postgres,
        2,
        &[
            ("k", "BIGINT"),
            ("id", "TEXT"),
            ("type", "TEXT"),
            ("subject_type", "TEXT"),
            ("subject_id", "TEXT"),
            ("actor", "TEXT"),
            ("data", "JSON"),
            ("created_at", "BIGINT"),
            ("trace_context", "TEXT"),
        ],
    );
    // Ordered by `k`, so the rows take their `seq` (the order they are numbered in) in the
    // order the change wrote them. `data` arrives as JSON and is stored as the very text it
    // was sent as.
    let inserted = exec(
        conn,
        &format!(
            "INSERT INTO outbox (id, organization_id, type, subject_type, subject_id, actor, data, \
             created_at, trace_context) \
             SELECT v.id, $1, v.type, v.subject_type, v.subject_id, v.actor, v.data::text, \
             v.created_at, v.trace_context FROM {source} \
             WHERE EXISTS (SELECT 1 FROM organizations WHERE id = $1) ORDER BY v.k"
        ),
        [org.into(), json_param(&rows)?],
    )
    .await?;
    if inserted != events.len() as u64 {
        return Err(ebb_common::Error::not_found("organization", org));
    }
    Ok(())
}

/// Events numbered per statement by [`number`].
const NUMBER_BATCH: i64 = 5000;

/// Key of the transaction-scoped advisory lock that makes one numbering run at a time.
const NUMBERING_LOCK: i64 = 0x6562_625f_6f75_7462; // "ebb_outb"

/// Numbers the committed events that have no number yet, on PostgreSQL; the number of events
/// numbered. Each organization's events take the next numbers of its counter in the order they
/// were inserted (`seq`), the counter and the events moving in one transaction, so an
/// organization's numbers are gapless and a number is visible only once every smaller one is.
/// One numbering runs at a time (an advisory lock held for its transaction); a change that
/// commits while it runs is numbered by the next one. On SQLite events are numbered as they
/// are written and this does nothing.
pub async fn number(conn: &DatabaseConnection) -> std::result::Result<u64, sea_orm::DbErr> {
    let backend = conn.get_database_backend();
    if backend != sea_orm::DatabaseBackend::Postgres {
        return Ok(0);
    }
    let mut numbered = 0;
    loop {
        let waiting = conn
            .query_one_raw(stmt(
                backend,
                "SELECT 1 FROM outbox WHERE org_seq IS NULL LIMIT 1",
                [],
            ))
            .await?
            .is_some();
        if !waiting {
            return Ok(numbered);
        }
        let txn = conn.begin().await?;
        txn.execute_raw(stmt(
            backend,
            "SELECT pg_advisory_xact_lock($1)",
            [NUMBERING_LOCK.into()],
        ))
        .await?;
        let n = txn
            .execute_raw(stmt(
                backend,
                "WITH p AS (SELECT seq, organization_id, \
                     ROW_NUMBER() OVER (PARTITION BY organization_id ORDER BY seq) AS k \
                     FROM (SELECT seq, organization_id FROM outbox WHERE org_seq IS NULL \
                           ORDER BY seq LIMIT $1) AS oldest), \
                 c AS (SELECT organization_id, COUNT(*) AS n FROM p GROUP BY organization_id), \
                 b AS (UPDATE organizations o SET event_seq = o.event_seq + c.n FROM c \
                       WHERE o.id = c.organization_id RETURNING o.id, o.event_seq - c.n AS base) \
                 UPDATE outbox x SET org_seq = b.base + p.k FROM p JOIN b ON b.id = p.organization_id \
                 WHERE x.seq = p.seq",
                [NUMBER_BATCH.into()],
            ))
            .await?
            .rows_affected();
        txn.commit().await?;
        numbered += n;
        if (n as i64) < NUMBER_BATCH {
            return Ok(numbered);
        }
    }
}

/// An outbox event.
#[derive(Debug, Clone, FromQueryResult)]
pub struct OutboxRow {
    pub seq: i64,
    pub id: String,
    pub organization_id: String,
    pub org_seq: i64,
    pub event_type: String,
    pub subject_type: String,
    pub subject_id: String,
    pub actor: String,
    pub data: String,
    pub created_at: i64,
}

/// Filters of an outbox listing.
#[derive(Debug, Clone, Default)]
pub struct OutboxFilter {
    /// One organization's events, after its `org_seq` `after_org_seq`.
    pub organization: Option<(String, i64)>,
    /// An exact event type, or a prefix ending in `.` or `*`.
    pub event_type: String,
    pub subject_id: String,
}

/// One page of numbered outbox events in commit order, after the global sequence `after_seq`.
pub async fn list(
    conn: &impl ConnectionTrait,
    filter: &OutboxFilter,
    after_seq: i64,
    limit: u64,
) -> Result<Vec<OutboxRow>> {
    let mut q = Query::select();
    q.expr(Expr::cust(
        "seq, id, organization_id, org_seq, type AS event_type, subject_type, subject_id, \
         actor, data, created_at",
    ))
    .from("outbox")
    .and_where(Expr::col("seq").gt(after_seq))
    // Committed since the last numbering: listed once numbered.
    .and_where(Expr::col("org_seq").is_not_null());
    if let Some((org, after_org_seq)) = &filter.organization {
        q.and_where(Expr::col("organization_id").eq(org.as_str()))
            .and_where(Expr::col("org_seq").gt(*after_org_seq));
    }
    let t = &filter.event_type;
    if t.ends_with('.') || t.ends_with('*') {
        let prefix = t.trim_end_matches('*').replace('%', "").replace('_', "\\_");
        q.and_where(Expr::col("type").like(LikeExpr::new(format!("{prefix}%")).escape('\\')));
    } else if !t.is_empty() {
        q.and_where(Expr::col("type").eq(t.as_str()));
    }
    if !filter.subject_id.is_empty() {
        q.and_where(Expr::col("subject_id").eq(filter.subject_id.as_str()));
    }
    q.order_by("seq", Order::Asc).limit(limit);
    select_all(conn, &q).await
}
