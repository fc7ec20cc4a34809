//! The outbox relay: pushes lifecycle's domain events to audit-svc (`AppendEvents`) and
//! notifier-svc (`PublishEvent`), at least once, in commit order per organization.
//!
//! * One lease row per sink in lifecycle's database (owner, epoch, expiry in database time):
//!   only the replica holding a sink's lease sends to it, so replicas do not double-send.
//! * One cursor per (sink, organization): the last `org_seq` the sink acknowledged. Outbox rows
//!   carry `org_seq`, gapless and in commit order per organization, so a sink gets each
//!   organization's events in order, and a cursor never skips an event committed late.
//! * A cursor advances only after the sink answered, and only while the lease is still ours
//!   (same owner and epoch). A crash between the two resends the batch; both sinks are
//!   idempotent by event id, so every event lands exactly once.
//! * While a sink is unreachable the relay backs off (up to [`MAX_BACKOFF`]); nothing is lost,
//!   the outbox keeps the events.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use crate::Config;
use ebb_common::client::{TracedChannel, channel};
use ebb_common::db::{Db, now_ms_sql};
use ebb_proto::audit::v1::audit_service_client::AuditServiceClient;
use ebb_proto::audit::v1::{AppendEventsRequest, EventInput};
use ebb_proto::notifier::v1::notifier_service_client::NotifierServiceClient;
use ebb_proto::notifier::v1::{Event, PublishEventRequest};
use sea_orm::{ConnectionTrait, TransactionTrait};
use sea_orm_migration::prelude::*;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Outbox rows sent per round (audit-svc accepts up to 1000 per call).
const BATCH: i64 = 500;
/// How long a lease lasts without renewal; renewed every round.
const LEASE_TTL: Duration = Duration::from_secs(15);
/// Pause when there is nothing to send.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Pause before trying again to take a lease another replica holds.
const FOLLOWER_POLL: Duration = Duration::from_millis(500);
/// First pause after a failure; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Time limit of one call to a sink.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SinkKind {
    Audit,
    Notifier,
}

impl SinkKind {
    fn name(self) -> &'static str {
        match self {
            SinkKind::Audit => "audit",
            SinkKind::Notifier => "notifier",
        }
    }
}

enum Sink {
    Audit(AuditServiceClient<TracedChannel>),
    Notifier(NotifierServiceClient<TracedChannel>),
}

/// One outbox row.
#[derive(Debug, Clone)]
struct OutboxEvent {
    id: String,
    organization_id: String,
    org_seq: i64,
    event_type: String,
    subject_type: String,
    subject_id: String,
    actor: String,
    data: String,
    created_at: i64,
    /// W3C `traceparent` of the change that wrote it; may be empty.
    trace_context: String,
}

/// What one round did.
enum Round {
    /// Sent this many events.
    Sent(usize),
    /// Nothing to send.
    Idle,
    /// Another replica holds the lease.
    Follower,
}

/// The relay of `config`'s sinks over lifecycle's database, until `shutdown`. A sink whose URL
/// is empty is not relayed to.
pub fn run(
    config: &Config,
    db: Db,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let targets = [
        (SinkKind::Audit, config.audit_url.clone()),
        (SinkKind::Notifier, config.notifier_url.clone()),
    ];
    let retention = config.outbox_retention;
    async move {
        let owner = uuid::Uuid::new_v4().to_string();
        let mut loops = Vec::new();
        let mut sinks = Vec::new();
        for (kind, url) in targets {
            if url.is_empty() {
                tracing::info!(
                    sink = kind.name(),
                    "outbox relay disabled: no URL configured"
                );
                continue;
            }
            let sink = match channel(&url, CALL_TIMEOUT) {
                Ok(ch) => match kind {
                    SinkKind::Audit => Sink::Audit(AuditServiceClient::new(ch)),
                    SinkKind::Notifier => Sink::Notifier(NotifierServiceClient::new(ch)),
                },
                Err(e) => {
                    tracing::error!(sink = kind.name(), error = %e, "outbox relay disabled");
                    continue;
                }
            };
            sinks.push(kind.name());
            loops.push(relay_loop(
                kind,
                sink,
                db.clone(),
                owner.clone(),
                shutdown.clone(),
            ));
        }
        let pruning = prune_loop(db.clone(), sinks, retention, shutdown.clone());
        futures::future::join(futures::future::join_all(loops), pruning).await;
    }
}

async fn relay_loop(
    kind: SinkKind,
    mut sink: Sink,
    db: Db,
    owner: String,
    shutdown: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let pause = match round(kind, &mut sink, &db, &owner).await {
            Ok(Round::Sent(n)) => {
                backoff = MIN_BACKOFF;
                tracing::debug!(sink = kind.name(), events = n, "outbox events relayed");
                if n as i64 >= BATCH {
                    Duration::ZERO
                } else {
                    IDLE_POLL
                }
            }
            Ok(Round::Idle) => {
                backoff = MIN_BACKOFF;
                IDLE_POLL
            }
            Ok(Round::Follower) => FOLLOWER_POLL,
            Err(e) => {
                tracing::warn!(sink = kind.name(), error = %e, retry_in = ?backoff, "outbox relay round failed");
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                pause
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    // Let another replica take over at once instead of waiting for the lease to expire.
    let released = db
        .conn
        .execute_raw(db.stmt(
            "UPDATE outbox_relay_leases SET expires_at = 0 WHERE sink = $1 AND owner = $2",
            [kind.name().into(), owner.into()],
        ))
        .await;
    if let Err(e) = released {
        tracing::warn!(sink = kind.name(), error = %e, "cannot release the outbox relay lease");
    }
}

/// Takes or renews the sink's lease; its epoch when held.
async fn lease(db: &Db, kind: SinkKind, owner: &str) -> Result<Option<i64>, DbErr> {
    let now = now_ms_sql(db.backend());
    let sql = format!(
        "UPDATE outbox_relay_leases SET \
             epoch = CASE WHEN owner = $1 THEN epoch ELSE epoch + 1 END, \
             owner = $1, expires_at = {now} + $2 \
         WHERE sink = $3 AND (owner = $1 OR expires_at <= {now}) RETURNING epoch"
    );
    let ttl = LEASE_TTL.as_millis() as i64;
    let row = db
        .conn
        .query_one_raw(db.stmt(&sql, [owner.into(), ttl.into(), kind.name().into()]))
        .await?;
    row.map(|r| r.try_get_by_index::<i64>(0)).transpose()
}

/// The next events to send: for each organization, the contiguous run after its cursor.
///
/// The organizations with something to send are those whose event counter is past the sink's
/// cursor, found without reading the outbox; each one's events are then read by the
/// `(organization_id, org_seq)` index from its cursor on. A round's cost grows with the number
/// of organizations and of events sent, never with the history already relayed. The
/// organizations whose cursor moved least recently go first, so one busy organization does not
/// hold back the others.
async fn pending(db: &Db, kind: SinkKind) -> Result<Vec<OutboxEvent>, DbErr> {
    let behind = db
        .conn
        .query_all_raw(db.stmt(
            "SELECT o.id, COALESCE(c.last_org_seq, 0), o.event_seq \
             FROM organizations o LEFT JOIN outbox_relay_cursors c \
                 ON c.sink = $1 AND c.organization_id = o.id \
             WHERE o.event_seq > COALESCE(c.last_org_seq, 0) \
             ORDER BY COALESCE(c.updated_at, 0), o.id LIMIT $2",
            [kind.name().into(), BATCH.into()],
        ))
        .await?;
    let mut out = Vec::new();
    for row in &behind {
        let left = BATCH - out.len() as i64;
        if left <= 0 {
            break;
        }
        let org: String = row.try_get_by_index(0)?;
        let cursor: i64 = row.try_get_by_index(1)?;
        let head: i64 = row.try_get_by_index(2)?;
        let take = std::cmp::min(left, head - cursor);
        let rows = db
            .conn
            .query_all_raw(db.stmt(
                "SELECT id, organization_id, org_seq, type, subject_type, subject_id, actor, data, \
                        created_at, trace_context \
                 FROM outbox WHERE organization_id = $1 AND org_seq > $2 AND org_seq <= $3 \
                 ORDER BY org_seq LIMIT $4",
                [org.into(), cursor.into(), head.into(), take.into()],
            ))
            .await?;
        // The counter and the events move in one transaction, so every event up to the head
        // read above is committed and the run after the cursor has no gap, in order. Only
        // pruning makes one, for a sink that was turned off for longer than the retention:
        // what it missed is skipped, with a warning, one gap per round.
        let mut expected = cursor + 1;
        for row in &rows {
            let event = OutboxEvent {
                id: row.try_get_by_index(0)?,
                organization_id: row.try_get_by_index(1)?,
                org_seq: row.try_get_by_index(2)?,
                event_type: row.try_get_by_index(3)?,
                subject_type: row.try_get_by_index(4)?,
                subject_id: row.try_get_by_index(5)?,
                actor: row.try_get_by_index(6)?,
                data: row.try_get_by_index(7)?,
                created_at: row.try_get_by_index(8)?,
                trace_context: row.try_get_by_index(9)?,
            };
            if event.org_seq != expected {
                if expected != cursor + 1 {
                    break;
                }
                tracing::warn!(
                    sink = kind.name(),
                    organization_id = %event.organization_id,
                    from = expected,
                    to = event.org_seq - 1,
                    "events pruned before this sink received them are skipped"
                );
            }
            expected = event.org_seq + 1;
            out.push(event);
        }
    }
    Ok(out)
}

/// What a relay round costs the database when it holds the lease of `sink` ("audit" or
/// "notifier") as `owner`: renewing the lease, numbering what committed unnumbered and looking
/// for events to send. The number of events found. For benchmarks.
pub async fn probe(db: &Db, sink: &str, owner: &str) -> Result<usize, DbErr> {
    let kind = match sink {
        "audit" => SinkKind::Audit,
        "notifier" => SinkKind::Notifier,
        other => return Err(DbErr::Custom(format!("no sink {other}"))),
    };
    if lease(db, kind, owner).await?.is_none() {
        return Ok(0);
    }
    super::outbox::number(&db.conn).await?;
    Ok(pending(db, kind).await?.len())
}

/// Outbox rows deleted per statement when pruning.
const PRUNE_BATCH: i64 = 5000;
/// Pause between pruning passes.
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// Deletes outbox events older than `retention_ms` (by `now_ms`) that every sink of `sinks`
/// has acknowledged; the number deleted. An event some sink has not acknowledged stays,
/// however old; with no sinks nothing is relayed and nothing is deleted.
pub async fn prune(db: &Db, sinks: &[&str], retention_ms: i64, now_ms: i64) -> Result<u64, DbErr> {
    if sinks.is_empty() {
        return Ok(0);
    }
    let cutoff = now_ms.saturating_sub(retention_ms);
    let mut values: Vec<sea_orm::Value> = sinks.iter().map(|s| (*s).into()).collect();
    values.push((sinks.len() as i64).into());
    let relayed = db
        .conn
        .query_all_raw(db.stmt(
            &format!(
                "SELECT organization_id, MIN(last_org_seq) FROM outbox_relay_cursors \
                 WHERE sink IN ({}) GROUP BY organization_id HAVING COUNT(*) = ${}",
                ebb_common::sql::placeholders(1, sinks.len()),
                sinks.len() + 1
            ),
            values,
        ))
        .await?;
    let mut deleted = 0;
    for row in &relayed {
        let org: String = row.try_get_by_index(0)?;
        let upto: i64 = row.try_get_by_index(1)?;
        loop {
            let n = db
                .conn
                .execute_raw(db.stmt(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox \
                     WHERE organization_id = $1 AND org_seq <= $2 AND created_at < $3 \
                     ORDER BY org_seq LIMIT $4)",
                    [
                        org.clone().into(),
                        upto.into(),
                        cutoff.into(),
                        PRUNE_BATCH.into(),
                    ],
                ))
                .await?
                .rows_affected();
            deleted += n;
            if (n as i64) < PRUNE_BATCH {
                break;
            }
        }
    }
    Ok(deleted)
}

/// Prunes the outbox every [`PRUNE_INTERVAL`] until `shutdown`.
async fn prune_loop(
    db: Db,
    sinks: Vec<&'static str>,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let retention_ms = <i64 as TryFrom<u128>>::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        match prune(&db, &sinks, retention_ms, ebb_common::time::now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "relayed outbox events pruned"),
            Err(e) => tracing::warn!(error = %e, "pruning the outbox failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(PRUNE_INTERVAL) => {}
        }
    }
}

/// Advances the cursors past `sent`, if the lease is still ours.
async fn advance(
    db: &Db,
    kind: SinkKind,
    owner: &str,
    epoch: i64,
    sent: &[OutboxEvent],
) -> Result<bool, DbErr> {
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for e in sent {
        let seq = last.entry(&e.organization_id).or_insert(0);
        *seq = std::cmp::max(*seq, e.org_seq);
    }
    let backend = db.backend();
    let txn = db.conn.begin().await?;
    let lock = ebb_common::sql::for_update().sql(backend);
    let held = txn
        .query_one_raw(db.stmt(
            &format!(
                "SELECT epoch FROM outbox_relay_leases \
                 WHERE sink = $1 AND owner = $2 AND epoch = $3{lock}"
            ),
            [kind.name().into(), owner.into(), epoch.into()],
        ))
        .await?
        .is_some();
    if !held {
        txn.rollback().await?;
        return Ok(false);
    }
    let now = now_ms_sql(backend);
    for (org, seq) in last {
        txn.execute_raw(db.stmt(
            &format!(
                "INSERT INTO outbox_relay_cursors (sink, organization_id, last_org_seq, updated_at) \
                 VALUES ($1, $2, $3, {now}) \
                 ON CONFLICT (sink, organization_id) DO UPDATE \
                 SET last_org_seq = excluded.last_org_seq, updated_at = excluded.updated_at \
                 WHERE outbox_relay_cursors.last_org_seq < excluded.last_org_seq"
            ),
            [kind.name().into(), org.into(), seq.into()],
        ))
        .await?;
    }
    txn.commit().await?;
    Ok(true)
}

/// A failed round: the database or the sink.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("{sink} refused or did not answer: {status}")]
    Sink {
        sink: &'static str,
        status: tonic::Status,
    },
}

async fn round(kind: SinkKind, sink: &mut Sink, db: &Db, owner: &str) -> Result<Round, RoundError> {
    let Some(epoch) = lease(db, kind, owner).await? else {
        return Ok(Round::Follower);
    };
    // Committed events get their numbers before the sinks' cursors are compared with them.
    super::outbox::number(&db.conn).await?;
    let events = pending(db, kind).await?;
    if events.is_empty() {
        return Ok(Round::Idle);
    }
    let sent: &[OutboxEvent] = match sink {
        Sink::Audit(client) => {
            let request = AppendEventsRequest {
                events: events.iter().map(audit_input).collect(),
            };
            client
                .append_events(request)
                .await
                .map_err(|status| RoundError::Sink {
                    sink: kind.name(),
                    status,
                })?;
            &events
        }
        Sink::Notifier(client) => {
            // One event per call, in order; what was published before a failure still counts.
            let mut published = 0;
            let mut failure = None;
            for e in &events {
                // Each call joins the trace of the change that wrote the event.
                let span = tracing::info_span!("outbox.publish", event_id = %e.id);
                let span = ebb_common::telemetry::follow_remote(&e.trace_context, span);
                match client
                    .publish_event(PublishEventRequest {
                        event: Some(notifier_event(e)),
                    })
                    .instrument(span)
                    .await
                {
                    Ok(_) => published += 1,
                    Err(status) => {
                        failure = Some(status);
                        break;
                    }
                }
            }
            if published > 0 && !advance(db, kind, owner, epoch, &events[..published]).await? {
                return Ok(Round::Follower);
            }
            if let Some(status) = failure {
                return Err(RoundError::Sink {
                    sink: kind.name(),
                    status,
                });
            }
            return Ok(Round::Sent(published));
        }
    };
    if !advance(db, kind, owner, epoch, sent).await? {
        return Ok(Round::Follower);
    }
    Ok(Round::Sent(sent.len()))
}

fn audit_input(e: &OutboxEvent) -> EventInput {
    EventInput {
        id: e.id.clone(),
        organization_id: e.organization_id.clone(),
        action: e.event_type.clone(),
        subject_type: e.subject_type.clone(),
        subject_id: e.subject_id.clone(),
        actor: e.actor.clone(),
        data: Some(data_struct(&e.data)),
        occur_time: Some(ebb_common::time::to_timestamp(e.created_at)),
        traceparent: e.trace_context.clone(),
    }
}

fn notifier_event(e: &OutboxEvent) -> Event {
    Event {
        id: e.id.clone(),
        organization_id: e.organization_id.clone(),
        r#type: e.event_type.clone(),
        subject_type: e.subject_type.clone(),
        subject_id: e.subject_id.clone(),
        data: Some(data_struct(&e.data)),
        occur_time: Some(ebb_common::time::to_timestamp(e.created_at)),
        ..Default::default()
    }
}

/// The outbox's JSON data as a protobuf Struct; a value that is not an object is kept under
/// `value`, and text that is not JSON under `raw`, so that nothing is dropped.
fn data_struct(text: &str) -> prost_types::Struct {
    use serde_json::Value as Json;
    match serde_json::from_str::<Json>(text) {
        Ok(Json::Object(map)) => prost_types::Struct {
            fields: map.into_iter().map(|(k, v)| (k, proto_value(v))).collect(),
        },
        Ok(other) => prost_types::Struct {
            fields: [("value".to_owned(), proto_value(other))].into(),
        },
        Err(_) => prost_types::Struct {
            fields: [("raw".to_owned(), proto_value(Json::String(text.to_owned())))].into(),
        },
    }
}

fn proto_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as Json;
    let kind = match value {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        // Protobuf numbers are doubles; integers beyond 2^53 lose precision, as in any JSON
        // consumer that reads numbers as doubles.
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s),
        Json::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(proto_value).collect(),
        }),
        Json::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map.into_iter().map(|(k, v)| (k, proto_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_keeps_every_value() {
        let s = data_struct(r#"{"name":"ws","n":3,"tags":["a"]}"#);
        assert_eq!(s.fields.len(), 3);
        let s = data_struct("[1,2]");
        assert!(s.fields.contains_key("value"));
        let s = data_struct("not json");
        assert!(s.fields.contains_key("raw"));
    }
}
