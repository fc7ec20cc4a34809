//! Accepting events: checking them, storing them once, and creating one delivery per matching
//! enabled configuration in the same transaction.

use std::time::Duration;

use ebb_common::db::now_ms_sql;
use ebb_common::error::Violations;
use ebb_common::time::{EpochMs, from_timestamp};
use ebb_common::{Error, Result};
use ebb_proto::notifier::v1 as pb;
use sea_orm::{ConnectionTrait, Value};
use serde_json::{Map, Value as Json};

use crate::configurations::{self, Configuration, Scope};
use crate::{patterns, rows};

/// The type of the event recorded when a delivery's retries run out.
pub const EXHAUSTED_EVENT_TYPE: &str = "notification.delivery.exhausted";

/// An event as stored and rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Unique id.
    pub id: String,
    /// Owner.
    pub organization_id: String,
    /// Dotted type.
    pub event_type: String,
    /// What it is about.
    pub subject_type: String,
    /// What it is about.
    pub subject_id: String,
    /// Name of what it is about.
    pub subject_name: String,
    /// Who caused it.
    pub actor: String,
    /// Scope keys.
    pub project_id: String,
    /// Scope keys.
    pub workspace_id: String,
    /// Scope keys.
    pub entity_id: String,
    /// Event fields, a JSON object.
    pub data: Json,
    /// When it happened.
    pub occur_ms: EpochMs,
}

impl EventRecord {
    /// Checks a published event and fills scope keys and the subject name from `data`.
    pub fn from_proto(e: Option<&pb::Event>, now: EpochMs) -> Result<Self> {
        let Some(e) = e else {
            return Err(Error::invalid("event", "is required"));
        };
        let mut v = Violations::new();
        for (field, value, required) in [
            ("event.id", &e.id, true),
            ("event.organization_id", &e.organization_id, true),
            ("event.subject_type", &e.subject_type, false),
            ("event.subject_id", &e.subject_id, false),
        ] {
            if (required && value.trim().is_empty()) || value.len() > 200 {
                v.add(field, "is required, at most 200 characters");
            }
        }
        let type_ok = !e.r#type.is_empty()
            && !e.r#type.contains('*')
            && e.r#type.len() <= 200
            && patterns::validate(&e.r#type).is_ok()
            && !e.r#type.contains(':');
        if !type_ok {
            v.add(
                "event.type",
                "must be dot-separated segments of a-z, 0-9 and _, e.g. workspace.auto_destroy.queued",
            );
        }
        let occur_ms = match &e.occur_time {
            None => Some(now),
            Some(ts) => v.check("event.occur_time", from_timestamp(ts)),
        };
        v.finish()?;
        let data = e
            .data
            .as_ref()
            .map(struct_to_json)
            .unwrap_or_else(|| Json::Object(Map::new()));
        let from_data = |explicit: &str, keys: &[&str]| -> String {
            if !explicit.is_empty() {
                return explicit.to_owned();
            }
            keys.iter()
                .find_map(|k| data.get(*k).and_then(Json::as_str).map(str::to_owned))
                .unwrap_or_default()
        };
        let subject_is = |kind: &str| {
            if e.subject_type == kind {
                e.subject_id.clone()
            } else {
                String::new()
            }
        };
        let workspace_id = from_data(&e.workspace_id, &["workspace_id"]);
        let entity_id = from_data(&e.entity_id, &["entity_id"]);
        Ok(Self {
            id: e.id.trim().to_owned(),
            organization_id: e.organization_id.trim().to_owned(),
            event_type: e.r#type.clone(),
            subject_type: e.subject_type.clone(),
            subject_id: e.subject_id.clone(),
            subject_name: from_data(
                &e.subject_name,
                &["name", "subject_name", "workspace_name", "entity_name"],
            ),
            actor: e.actor.clone(),
            project_id: from_data(&e.project_id, &["project_id"]),
            workspace_id: if workspace_id.is_empty() {
                subject_is("workspace")
            } else {
                workspace_id
            },
            entity_id: if entity_id.is_empty() {
                subject_is("entity")
            } else {
                entity_id
            },
            data,
            occur_ms: occur_ms.unwrap_or(now),
        })
    }

    /// Whether a configuration's scope covers this event.
    pub fn in_scope(&self, scope: &Scope) -> bool {
        match scope {
            Scope::Organization => true,
            Scope::Project(id) => &self.project_id == id,
            Scope::Workspace(id) => &self.workspace_id == id,
            Scope::Entity(id) => &self.entity_id == id,
        }
    }

    fn wanted_by(&self, c: &Configuration) -> bool {
        c.enabled
            && c.organization_id == self.organization_id
            && self.in_scope(&c.spec.scope)
            && patterns::matches_any(&c.spec.event_types, &self.event_type)
    }
}

/// A protobuf `Struct` as a JSON object.
pub fn struct_to_json(s: &prost_types::Struct) -> Json {
    Json::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &prost_types::Value) -> Json {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(|n| {
                // Whole numbers print without ".0", as their senders wrote them.
                if n.as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                {
                    Json::from(n.as_f64().unwrap_or_default() as i64)
                } else {
                    Json::Number(n)
                }
            })
            .unwrap_or(Json::Null),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_to_json).collect()),
    }
}

/// Stores `event` unless its id is known, and creates its deliveries. Returns how many were
/// created (0 for a repeated id).
pub async fn publish<C: ConnectionTrait>(
    conn: &C,
    event: &EventRecord,
    first_delay: Duration,
    now: EpochMs,
) -> Result<u64> {
    // The insert comes first so the transaction takes SQLite's write lock before reading.
    let inserted = conn
        .execute_raw(ebb_common::db::stmt(
            conn.get_database_backend(),
            "INSERT INTO events (id, organization_id, type, subject_type, subject_id, subject_name,
                actor, project_id, workspace_id, entity_id, data, occur_ms, received_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (id) DO NOTHING",
            [
                Value::from(event.id.clone()),
                Value::from(event.organization_id.clone()),
                Value::from(event.event_type.clone()),
                Value::from(event.subject_type.clone()),
                Value::from(event.subject_id.clone()),
                Value::from(event.subject_name.clone()),
                Value::from(event.actor.clone()),
                Value::from(event.project_id.clone()),
                Value::from(event.workspace_id.clone()),
                Value::from(event.entity_id.clone()),
                Value::from(event.data.to_string()),
                Value::from(event.occur_ms),
                Value::from(now),
            ],
        ))
        .await?
        .rows_affected();
    if inserted == 0 {
        return Ok(0);
    }
    fan_out(conn, event, None, first_delay, now).await
}

/// Creates a delivery of `event` for every enabled configuration that wants it, except
/// `exclude`.
async fn fan_out<C: ConnectionTrait>(
    conn: &C,
    event: &EventRecord,
    exclude: Option<&str>,
    first_delay: Duration,
    now: EpochMs,
) -> Result<u64> {
    let targets: Vec<Configuration> = configurations::enabled_in(conn, &event.organization_id)
        .await?
        .into_iter()
        .filter(|c| Some(c.id.as_str()) != exclude && event.wanted_by(c))
        .collect();
    let b = conn.get_database_backend();
    let delay_ms = first_delay.as_millis() as i64;
    let mut created = 0;
    for chunk in targets.chunks(400) {
        let mut values = Vec::with_capacity(chunk.len() * 6);
        let mut tuples = Vec::with_capacity(chunk.len());
        for c in chunk {
            let n = values.len();
            tuples.push(format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, 'pending', 0, 0, 0, {} + {delay_ms}, 0, '', ${}, ${})",
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5,
                n + 6,
                now_ms_sql(b),
                n + 7,
                n + 7,
            ));
            values.extend([
                Value::from(format!("dlv_{}", uuid::Uuid::now_v7().simple())),
                Value::from(format!("msg_{}", uuid::Uuid::now_v7().simple())),
                Value::from(event.id.clone()),
                Value::from(event.event_type.clone()),
                Value::from(c.id.clone()),
                Value::from(event.organization_id.clone()),
                Value::from(now),
            ]);
        }
        created += conn
            .execute_raw(ebb_common::db::stmt(
                b,
                &format!(
                    "INSERT INTO deliveries (id, message_id, event_id, event_type, configuration_id,
                        organization_id, status, attempt_count, cycle_attempts, redelivery,
                        next_attempt_ms, last_response_status, last_error, created_ms, updated_ms)
                     VALUES {}",
                    tuples.join(", ")
                ),
                values,
            ))
            .await?
            .rows_affected();
    }
    Ok(created)
}

/// What is known about a dead-lettered delivery.
#[derive(Debug, Clone)]
pub struct Exhaustion<'a> {
    /// The delivery.
    pub delivery_id: &'a str,
    /// Its event.
    pub event: &'a EventRecord,
    /// The configuration that could not be reached.
    pub configuration_id: &'a str,
    /// Its name.
    pub configuration_name: &'a str,
    /// Attempts made.
    pub attempts: i64,
    /// Last status seen.
    pub last_response_status: i32,
    /// Last error.
    pub last_error: &'a str,
}

/// Records a `notification.delivery.exhausted` event and delivers it to the organization's
/// other configurations that subscribe to it. Returns the event id.
pub async fn record_exhausted<C: ConnectionTrait>(
    conn: &C,
    x: &Exhaustion<'_>,
    first_delay: Duration,
    now: EpochMs,
) -> Result<String> {
    let id = format!("evt_{}", uuid::Uuid::now_v7().simple());
    let event = EventRecord {
        id: id.clone(),
        organization_id: x.event.organization_id.clone(),
        event_type: EXHAUSTED_EVENT_TYPE.into(),
        subject_type: "notification_delivery".into(),
        subject_id: x.delivery_id.into(),
        subject_name: x.configuration_name.into(),
        actor: "notifier".into(),
        project_id: x.event.project_id.clone(),
        workspace_id: x.event.workspace_id.clone(),
        entity_id: x.event.entity_id.clone(),
        data: serde_json::json!({
            "delivery_id": x.delivery_id,
            "failed_event_id": x.event.id,
            "failed_event_type": x.event.event_type,
            "configuration_id": x.configuration_id,
            "configuration_name": x.configuration_name,
            "attempts": x.attempts,
            "last_response_status": x.last_response_status,
            "last_error": x.last_error,
        }),
        occur_ms: now,
    };
    publish_inner(conn, &event, now).await?;
    // A dead letter about a dead letter is recorded but not sent on, so a broken receiver of
    // exhaustion events cannot feed itself.
    if x.event.event_type != EXHAUSTED_EVENT_TYPE {
        fan_out(conn, &event, Some(x.configuration_id), first_delay, now).await?;
    }
    Ok(id)
}

async fn publish_inner<C: ConnectionTrait>(conn: &C, e: &EventRecord, now: EpochMs) -> Result<()> {
    conn.execute_raw(ebb_common::db::stmt(
        conn.get_database_backend(),
        "INSERT INTO events (id, organization_id, type, subject_type, subject_id, subject_name,
            actor, project_id, workspace_id, entity_id, data, occur_ms, received_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
        [
            Value::from(e.id.clone()),
            Value::from(e.organization_id.clone()),
            Value::from(e.event_type.clone()),
            Value::from(e.subject_type.clone()),
            Value::from(e.subject_id.clone()),
            Value::from(e.subject_name.clone()),
            Value::from(e.actor.clone()),
            Value::from(e.project_id.clone()),
            Value::from(e.workspace_id.clone()),
            Value::from(e.entity_id.clone()),
            Value::from(e.data.to_string()),
            Value::from(now),
        ],
    ))
    .await?;
    Ok(())
}

/// An event as read back from the database, by the columns `e_*` of a joined query.
pub fn event_from_row(row: &sea_orm::QueryResult) -> Result<EventRecord> {
    let data: String = rows::get(row, "e_data")?;
    Ok(EventRecord {
        id: rows::get(row, "e_id")?,
        organization_id: rows::get(row, "e_organization_id")?,
        event_type: rows::get(row, "e_type")?,
        subject_type: rows::get(row, "e_subject_type")?,
        subject_id: rows::get(row, "e_subject_id")?,
        subject_name: rows::get(row, "e_subject_name")?,
        actor: rows::get(row, "e_actor")?,
        project_id: rows::get(row, "e_project_id")?,
        workspace_id: rows::get(row, "e_workspace_id")?,
        entity_id: rows::get(row, "e_entity_id")?,
        data: serde_json::from_str(&data)
            .map_err(|e| Error::Internal(format!("column e_data: {e}")))?,
        occur_ms: rows::get(row, "e_occur_ms")?,
    })
}

/// The `e_*` column list for [`event_from_row`], reading table alias `e`.
pub const EVENT_COLUMNS: &str = "e.id AS e_id, e.organization_id AS e_organization_id, \
    e.type AS e_type, e.subject_type AS e_subject_type, e.subject_id AS e_subject_id, \
    e.subject_name AS e_subject_name, e.actor AS e_actor, e.project_id AS e_project_id, \
    e.workspace_id AS e_workspace_id, e.entity_id AS e_entity_id, e.data AS e_data, \
    e.occur_ms AS e_occur_ms";
