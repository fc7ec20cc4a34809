//! The audit store over SQL: appending to per-organization chains, reading them back in
//! sequence order, and verifying them.

use std::collections::{BTreeMap, HashMap};

use ebb_common::db::{Db, is_unique_violation};
use ebb_common::sql::{for_update, placeholders};
use ebb_common::{Error, Result};
use sea_orm::{ConnectionTrait, DatabaseTransaction, QueryResult, TransactionTrait, Value};

use crate::chain::{self, Break, Content, GENESIS_HASH, Record, Verifier};

/// An event to append, validated, with `data` in canonical JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Event id.
    pub id: String,
    /// The chain's organization.
    pub organization_id: String,
    /// Action.
    pub action: String,
    /// Subject type.
    pub subject_type: String,
    /// Subject id.
    pub subject_id: String,
    /// Actor.
    pub actor: String,
    /// RFC 8785 canonical JSON text of the event's data.
    pub data: String,
    /// Epoch milliseconds.
    pub occur_time_ms: i64,
}

/// An event as stored, with `data` still in canonical text.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// The appended content.
    pub event: NewEvent,
    /// Position in the chain.
    pub sequence: i64,
    /// Epoch milliseconds.
    pub record_time_ms: i64,
    /// Previous hash, hex.
    pub prev_hash: String,
    /// Hash, hex.
    pub hash: String,
}

impl StoredEvent {
    /// The hashed content.
    pub fn content(&self) -> Content<'_> {
        Content {
            organization_id: &self.event.organization_id,
            sequence: self.sequence,
            id: &self.event.id,
            action: &self.event.action,
            subject_type: &self.event.subject_type,
            subject_id: &self.event.subject_id,
            actor: &self.event.actor,
            canonical_data: &self.event.data,
            occur_time_ms: self.event.occur_time_ms,
            record_time_ms: self.record_time_ms,
        }
    }

    /// The event as a chain record (the export line format).
    pub fn into_record(self) -> Result<Record> {
        let data = serde_json::from_str(&self.event.data).map_err(|e| {
            Error::Internal(format!(
                "stored data of event {} is not JSON: {e}",
                self.event.id
            ))
        })?;
        Ok(Record {
            organization_id: self.event.organization_id,
            sequence: self.sequence,
            id: self.event.id,
            action: self.event.action,
            subject_type: self.event.subject_type,
            subject_id: self.event.subject_id,
            actor: self.event.actor,
            data,
            occur_time_ms: self.event.occur_time_ms,
            record_time_ms: self.record_time_ms,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Appended {
    /// Newly recorded events.
    pub appended: usize,
    /// Events that were already recorded with the same content.
    pub already_recorded: usize,
}

/// Filters of a listing; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Filter {
    /// The chain listed.
    pub organization_id: String,
    /// Exact action.
    pub action: Option<String>,
    /// Action prefix.
    pub action_prefix: Option<String>,
    /// Exact subject type.
    pub subject_type: Option<String>,
    /// Exact subject id.
    pub subject_id: Option<String>,
    /// Exact actor.
    pub actor: Option<String>,
    /// Occurred at or after, epoch ms.
    pub start_ms: Option<i64>,
    /// Occurred before, epoch ms.
    pub end_ms: Option<i64>,
    /// Descending sequence order.
    pub newest_first: bool,
}

/// The outcome of a chain verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every event in the range verified.
    Intact {
        /// Events verified.
        verified: i64,
        /// The last sequence verified (or before the range when it is empty).
        head_sequence: i64,
        /// Its hash, hex.
        head_hash: String,
    },
    /// The first break.
    Broken {
        /// Events verified before the break.
        verified: i64,
        /// Where and why.
        at: Break,
    },
}

const COLUMNS: &str = "organization_id, sequence, id, action, subject_type, subject_id, actor, \
                       data, occur_time, record_time, prev_hash, hash";
/// Values per inserted row (the columns above plus `prev_sequence`).
const INSERT_COLUMNS: usize = 13;
/// Rows per INSERT statement, well below SQLite's bound-parameter limit.
const INSERT_CHUNK: usize = 500;
/// Rows read per query while verifying or exporting.
pub const SCAN_CHUNK: i64 = 5000;
/// Attempts of an append that lost a race on an event id in another organization's chain.
const APPEND_ATTEMPTS: usize = 3;

fn stored_event(row: &QueryResult) -> Result<StoredEvent> {
    Ok(StoredEvent {
        event: NewEvent {
            organization_id: row.try_get_by_index(0)?,
            id: row.try_get_by_index(2)?,
            action: row.try_get_by_index(3)?,
            subject_type: row.try_get_by_index(4)?,
            subject_id: row.try_get_by_index(5)?,
            actor: row.try_get_by_index(6)?,
            data: row.try_get_by_index(7)?,
            occur_time_ms: row.try_get_by_index(8)?,
        },
        sequence: row.try_get_by_index(1)?,
        record_time_ms: row.try_get_by_index(9)?,
        prev_hash: row.try_get_by_index(10)?,
        hash: row.try_get_by_index(11)?,
    })
}

/// The audit store.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// A store over `db` (migrated).
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Appends `events` in one transaction: each organization's events are chained in the
    /// order given after the events already recorded. Events already recorded with the same
    /// content are skipped; an id recorded with other content refuses the whole batch.
    pub async fn append(&self, events: &[NewEvent], now_ms: i64) -> Result<Appended> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let txn = self.db.conn.begin().await?;
            match append_in(&txn, events, now_ms).await {
                Ok(appended) => match txn.commit().await {
                    Ok(()) => {
                        metrics::counter!("ebb_audit_events_appended_total", "outcome" => "recorded")
                            .increment(appended.appended as u64);
                        metrics::counter!("ebb_audit_events_appended_total", "outcome" => "duplicate")
                            .increment(appended.already_recorded as u64);
                        return Ok(appended);
                    }
                    Err(e) if is_unique_violation(&e) && attempt < APPEND_ATTEMPTS => continue,
                    Err(e) => return Err(e.into()),
                },
                Err(AppendError::Db(e)) if is_unique_violation(&e) && attempt < APPEND_ATTEMPTS => {
                    // A concurrent append recorded one of these ids in another chain; the next
                    // attempt sees it and compares contents.
                    let _ = txn.rollback().await;
                    continue;
                }
                Err(AppendError::Db(e)) => return Err(e.into()),
                Err(AppendError::Refused(e)) => return Err(e),
            }
        }
    }

    /// One event by id.
    pub async fn get(&self, id: &str) -> Result<Option<StoredEvent>> {
        let row = self
            .db
            .conn
            .query_one_raw(self.db.stmt(
                &format!("SELECT {COLUMNS} FROM audit_events WHERE id = $1"),
                [id.into()],
            ))
            .await?;
        row.as_ref().map(stored_event).transpose()
    }

    /// Up to `limit` events matching `filter`, after the sequence `after` in the filter's
    /// order.
    pub async fn list(
        &self,
        filter: &Filter,
        after: Option<i64>,
        limit: u64,
    ) -> Result<Vec<StoredEvent>> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit_events WHERE organization_id = $1");
        let mut values: Vec<Value> = vec![filter.organization_id.clone().into()];
        let mut push = |sql: &mut String, clause: &str, value: Value| {
            values.push(value);
            sql.push_str(&clause.replace("$?", &format!("${}", values.len())));
        };
        if let Some(action) = &filter.action {
            push(&mut sql, " AND action = $?", action.clone().into());
        }
        if let Some(prefix) = &filter.action_prefix {
            // substr counts characters on both backends and, unlike LIKE, is case-sensitive
            // on SQLite and needs no escaping of `%` and `_`.
            let chars = i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX);
            push(
                &mut sql,
                " AND substr(action, 1, CAST($? AS INTEGER))",
                chars.into(),
            );
            push(&mut sql, " = $?", prefix.clone().into());
        }
        if let Some(v) = &filter.subject_type {
            push(&mut sql, " AND subject_type = $?", v.clone().into());
        }
        if let Some(v) = &filter.subject_id {
            push(&mut sql, " AND subject_id = $?", v.clone().into());
        }
        if let Some(v) = &filter.actor {
            push(&mut sql, " AND actor = $?", v.clone().into());
        }
        if let Some(v) = filter.start_ms {
            push(&mut sql, " AND occur_time >= $?", v.into());
        }
        if let Some(v) = filter.end_ms {
            push(&mut sql, " AND occur_time < $?", v.into());
        }
        if let Some(after) = after {
            let clause = if filter.newest_first {
                " AND sequence < $?"
            } else {
                " AND sequence > $?"
            };
            push(&mut sql, clause, after.into());
        }
        let order = if filter.newest_first { "DESC" } else { "ASC" };
        sql.push_str(&format!(" ORDER BY sequence {order} LIMIT {limit}"));
        let rows = self
            .db
            .conn
            .query_all_raw(self.db.stmt(&sql, values))
            .await?;
        rows.iter().map(stored_event).collect()
    }

    /// The head of `organization_id`'s chain: its last sequence and hash.
    pub async fn head(&self, organization_id: &str) -> Result<Option<(i64, String)>> {
        let row = self
            .db
            .conn
            .query_one_raw(self.db.stmt(
                "SELECT head_sequence, head_hash FROM audit_chains WHERE organization_id = $1",
                [organization_id.into()],
            ))
            .await?;
        match row {
            Some(row) => Ok(Some((row.try_get_by_index(0)?, row.try_get_by_index(1)?))),
            None => Ok(None),
        }
    }

    /// Events `from..=to` of a chain in sequence order, at most `limit`.
    pub async fn range(
        &self,
        organization_id: &str,
        from: i64,
        to: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        let rows = self
            .db
            .conn
            .query_all_raw(self.db.stmt(
                &format!(
                    "SELECT {COLUMNS} FROM audit_events WHERE organization_id = $1 \
                     AND sequence >= $2 AND sequence <= $3 ORDER BY sequence LIMIT $4"
                ),
                [organization_id.into(), from.into(), to.into(), limit.into()],
            ))
            .await?;
        rows.iter().map(stored_event).collect()
    }

    /// Recomputes the chain over `from..=to` (`to` = `None`: up to the head). Past the last
    /// stored event, the chain head row says how many events there must be, so events
    /// missing at the end are reported too.
    pub async fn verify(
        &self,
        organization_id: &str,
        from: i64,
        to: Option<i64>,
    ) -> Result<Option<Verification>> {
        let Some((head_sequence, _)) = self.head(organization_id).await? else {
            return Ok(None);
        };
        let from = from.max(1);
        // A range that starts past the head is a question about events that do not exist
        // yet, not a gap in the chain: reporting it as broken would be a false tamper alarm.
        if from > head_sequence {
            return Err(Error::OutOfRange(format!(
                "from_sequence {from} is past the chain head at sequence {head_sequence}"
            )));
        }
        let to = to.unwrap_or(head_sequence).min(head_sequence);
        let prev = if from == 1 {
            GENESIS_HASH
        } else {
            match self
                .range(organization_id, from - 1, from - 1, 1)
                .await?
                .pop()
            {
                Some(e) => chain::parse_hash(&e.hash).unwrap_or(GENESIS_HASH),
                None => {
                    return Ok(Some(Verification::Broken {
                        verified: 0,
                        at: Break {
                            sequence: from - 1,
                            kind: chain::BreakKind::SequenceGap,
                            detail: format!("event {} is missing", from - 1),
                        },
                    }));
                }
            }
        };
        let mut verifier = Verifier::new(organization_id, from, prev);
        // The next chunk is read while the current one is hashed, so the database and the
        // hashing overlap.
        let fetch = |from: i64| {
            let store = self.clone();
            let org = organization_id.to_owned();
            tokio::spawn(async move { store.range(&org, from, to, SCAN_CHUNK).await })
        };
        let mut pending = (from <= to).then(|| fetch(from));
        while let Some(handle) = pending.take() {
            let chunk = handle
                .await
                .map_err(|e| Error::Internal(format!("verification read failed: {e}")))??;
            let Some(last) = chunk.last().map(|e| e.sequence) else {
                break;
            };
            if last < to {
                pending = Some(fetch(last + 1));
            }
            for event in &chunk {
                if let Err(at) = verifier.check(&event.content(), &event.prev_hash, &event.hash) {
                    if let Some(h) = pending.take() {
                        h.abort();
                    }
                    return Ok(Some(Verification::Broken {
                        verified: verifier.verified(),
                        at,
                    }));
                }
            }
        }
        if verifier.head_sequence() < to {
            let missing = verifier.head_sequence() + 1;
            return Ok(Some(Verification::Broken {
                verified: verifier.verified(),
                at: Break {
                    sequence: missing,
                    kind: chain::BreakKind::SequenceGap,
                    detail: format!(
                        "event {missing} is missing: the chain head is at sequence {head_sequence}"
                    ),
                },
            }));
        }
        Ok(Some(Verification::Intact {
            verified: verifier.verified(),
            head_sequence: verifier.head_sequence(),
            head_hash: hex::encode(verifier.head_hash()),
        }))
    }
}

enum AppendError {
    Db(sea_orm::DbErr),
    Refused(Error),
}

impl From<sea_orm::DbErr> for AppendError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Db(e)
    }
}

/// The organization's chain head, created when missing and locked until commit.
async fn lock_head(
    txn: &DatabaseTransaction,
    organization_id: &str,
) -> Result<(i64, [u8; 32]), AppendError> {
    let backend = txn.get_database_backend();
    // On SQLite this first write also takes the database's write lock, so the read below
    // cannot be invalidated by another writer.
    txn.execute_raw(ebb_common::db::stmt(
        backend,
        "INSERT INTO audit_chains (organization_id, head_sequence, head_hash) VALUES ($1, 0, $2) \
         ON CONFLICT (organization_id) DO NOTHING",
        [organization_id.into(), chain::genesis_hex().into()],
    ))
    .await?;
    let lock = for_update().sql(backend);
    let row = txn
        .query_one_raw(ebb_common::db::stmt(
            backend,
            &format!(
                "SELECT head_sequence, head_hash FROM audit_chains WHERE organization_id = $1{lock}"
            ),
            [organization_id.into()],
        ))
        .await?
        .ok_or_else(|| {
            AppendError::Refused(Error::Internal(format!(
                "chain head of organization {organization_id} vanished"
            )))
        })?;
    let sequence: i64 = row.try_get_by_index(0)?;
    let hash: String = row.try_get_by_index(1)?;
    let hash = chain::parse_hash(&hash).ok_or_else(|| {
        AppendError::Refused(Error::Internal(format!(
            "chain head of organization {organization_id} has a malformed hash"
        )))
    })?;
    Ok((sequence, hash))
}

async fn append_in(
    txn: &DatabaseTransaction,
    events: &[NewEvent],
    now_ms: i64,
) -> Result<Appended, AppendError> {
    let backend = txn.get_database_backend();
    // Chain heads are locked in organization order, so concurrent batches spanning several
    // organizations cannot deadlock.
    let mut by_org: BTreeMap<&str, Vec<&NewEvent>> = BTreeMap::new();
    for e in events {
        by_org.entry(&e.organization_id).or_default().push(e);
    }
    let mut heads = BTreeMap::new();
    for org in by_org.keys() {
        heads.insert(*org, lock_head(txn, org).await?);
    }

    // Under the locks, look for ids already recorded: same content is a retry, other content a
    // conflict.
    let mut existing: HashMap<String, NewEvent> = HashMap::new();
    for chunk in events.chunks(INSERT_CHUNK) {
        let rows = txn
            .query_all_raw(ebb_common::db::stmt(
                backend,
                &format!(
                    "SELECT {COLUMNS} FROM audit_events WHERE id IN ({})",
                    placeholders(1, chunk.len())
                ),
                chunk.iter().map(|e| Value::from(e.id.clone())),
            ))
            .await?;
        for row in &rows {
            let stored = stored_event(row).map_err(AppendError::Refused)?;
            existing.insert(stored.event.id.clone(), stored.event);
        }
    }

    let mut outcome = Appended::default();
    let mut rows: Vec<StoredEvent> = Vec::with_capacity(events.len());
    for (org, org_events) in &by_org {
        let (mut sequence, mut prev) = heads[org];
        for event in org_events {
            if let Some(recorded) = existing.get(&event.id) {
                if recorded != *event {
                    return Err(AppendError::Refused(Error::AlreadyExists(format!(
                        "event {} is already recorded with different content",
                        event.id
                    ))));
                }
                outcome.already_recorded += 1;
                continue;
            }
            sequence += 1;
            let mut stored = StoredEvent {
                event: (*event).clone(),
                sequence,
                record_time_ms: now_ms,
                prev_hash: hex::encode(prev),
                hash: String::new(),
            };
            let hash = stored.content().hash(&prev);
            stored.hash = hex::encode(hash);
            prev = hash;
            rows.push(stored);
            outcome.appended += 1;
        }
        if sequence != heads[org].0 {
            txn.execute_raw(ebb_common::db::stmt(
                backend,
                "UPDATE audit_chains SET head_sequence = $1, head_hash = $2 \
                 WHERE organization_id = $3",
                [sequence.into(), hex::encode(prev).into(), (*org).into()],
            ))
            .await?;
        }
    }

    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut sql = format!("INSERT INTO audit_events ({COLUMNS}, prev_sequence) VALUES ");
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * INSERT_COLUMNS);
        for (i, row) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "({})",
                placeholders(i * INSERT_COLUMNS + 1, INSERT_COLUMNS)
            ));
            let prev_sequence = (row.sequence > 1).then_some(row.sequence - 1);
            values.extend([
                row.event.organization_id.clone().into(),
                row.sequence.into(),
                row.event.id.clone().into(),
                row.event.action.clone().into(),
                row.event.subject_type.clone().into(),
                row.event.subject_id.clone().into(),
                row.event.actor.clone().into(),
                row.event.data.clone().into(),
                row.event.occur_time_ms.into(),
                row.record_time_ms.into(),
                row.prev_hash.clone().into(),
                row.hash.clone().into(),
                prev_sequence.into(),
            ]);
        }
        txn.execute_raw(ebb_common::db::stmt(backend, &sql, values))
            .await?;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(org: &str, id: &str, action: &str) -> NewEvent {
        NewEvent {
            id: id.into(),
            organization_id: org.into(),
            action: action.into(),
            subject_type: "workspace".into(),
            subject_id: "ws-1".into(),
            actor: "user:alice".into(),
            data: r#"{"n":1}"#.into(),
            occur_time_ms: 1_700_000_000_000,
        }
    }

    async fn store() -> (tempfile::TempDir, Store, Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("audit.db").display()
        );
        let db = Db::connect(&url, 4).await.expect("connect");
        db.migrate::<crate::migrations::Migrator>()
            .await
            .expect("migrate");
        (dir, Store::new(db.clone()), db)
    }

    #[tokio::test]
    async fn appends_chain_per_organization_and_are_idempotent() {
        let (_dir, store, _db) = store().await;
        let batch = vec![
            event("a", "1", "x.created"),
            event("b", "2", "x.created"),
            event("a", "3", "x.deleted"),
        ];
        let out = store.append(&batch, 5).await.expect("append");
        assert_eq!(
            out,
            Appended {
                appended: 3,
                already_recorded: 0
            }
        );
        let again = store.append(&batch, 6).await.expect("retry");
        assert_eq!(
            again,
            Appended {
                appended: 0,
                already_recorded: 3
            }
        );
        assert_eq!(store.head("a").await.expect("head").map(|h| h.0), Some(2));
        assert_eq!(store.head("b").await.expect("head").map(|h| h.0), Some(1));

        let mut changed = event("a", "3", "x.deleted");
        changed.actor = "user:mallory".into();
        let err = store
            .append(&[event("a", "4", "y"), changed], 7)
            .await
            .expect_err("conflict");
        assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
        // Nothing of the refused batch was recorded.
        assert!(store.get("4").await.expect("get").is_none());
        assert!(matches!(
            store.verify("a", 1, None).await.expect("verify"),
            Some(Verification::Intact {
                verified: 2,
                head_sequence: 2,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn the_database_refuses_changes_and_gaps() {
        let (_dir, store, db) = store().await;
        store
            .append(&[event("a", "1", "x")], 1)
            .await
            .expect("append");
        for sql in [
            "UPDATE audit_events SET actor = 'x'",
            "DELETE FROM audit_events",
        ] {
            let err = db.conn.execute_unprepared(sql).await.expect_err(sql);
            assert!(err.to_string().contains("append-only"), "{err}");
        }
        let gap = "INSERT INTO audit_events (organization_id, sequence, prev_sequence, id, action, \
                   subject_type, subject_id, actor, data, occur_time, record_time, prev_hash, hash) \
                   VALUES ('a', 3, 2, 'g', 'x', 's', 's', 'a', '{}', 1, 1, \
                   '0000000000000000000000000000000000000000000000000000000000000000', \
                   '0000000000000000000000000000000000000000000000000000000000000000')";
        let err = db.conn.execute_unprepared(gap).await.expect_err("gap");
        assert!(
            err.to_string().to_lowercase().contains("foreign key"),
            "{err}"
        );
    }
}
