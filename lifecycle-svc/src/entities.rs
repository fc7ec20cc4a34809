//! Entities and their relationships: typed, directed edges that are never deleted, with grace
//! periods finalized by the sweep or forced by an operator.

use std::collections::BTreeMap;

use ebb_common::time::{EpochMs, rfc3339};
use ebb_common::{Error, Result};
use sea_orm::{ConnectionTrait, DatabaseBackend, FromQueryResult, Value};
use serde_json::json;

use crate::catalog;
use crate::outbox::{self, NewEvent};
use crate::sql::{exec, query_all, query_one};
use crate::workspaces;

/// Columns of [`EntityRow`].
pub const ENTITY_COLUMNS: &str =
    "id, organization_id, kind, name, state, attributes, workspace_id, created_at, updated_at";

/// An entity.
#[derive(Debug, Clone, FromQueryResult)]
pub struct EntityRow {
    pub id: String,
    pub organization_id: String,
    pub kind: String,
    pub name: String,
    pub state: String,
    pub attributes: String,
    pub workspace_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl EntityRow {
    /// Attributes as a map.
    pub fn attributes(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.attributes).unwrap_or_default()
    }
}

/// Columns of [`RelationshipRow`].
pub const RELATIONSHIP_COLUMNS: &str = "id, organization_id, type AS rel_type, from_entity_id, to_entity_id, state, \
    deletion_scheduled_at, finalized_at, finalize_method, action_run_id, created_at, updated_at";

/// A relationship.
#[derive(Debug, Clone, FromQueryResult)]
pub struct RelationshipRow {
    pub id: String,
    pub organization_id: String,
    pub rel_type: String,
    pub from_entity_id: String,
    pub to_entity_id: String,
    pub state: String,
    pub deletion_scheduled_at: Option<i64>,
    pub finalized_at: Option<i64>,
    pub finalize_method: Option<String>,
    pub action_run_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An entity by id.
pub async fn get_entity(conn: &impl ConnectionTrait, id: &str) -> Result<EntityRow> {
    query_one(
        conn,
        &format!("SELECT {ENTITY_COLUMNS} FROM entities WHERE id = $1"),
        [id.into()],
    )
    .await?
    .ok_or_else(|| Error::not_found("entity", id))
}

/// Creates an entity in its kind's initial state.
#[allow(clippy::too_many_arguments)]
pub async fn create_entity(
    conn: &impl ConnectionTrait,
    org_id: &str,
    kind: &str,
    name: &str,
    attributes: &BTreeMap<String, String>,
    workspace_id: Option<&str>,
    actor: &str,
    now: EpochMs,
) -> Result<EntityRow> {
    workspaces::get_org(conn, org_id).await?;
    let kind_def = catalog::kind(conn, kind).await.map_err(|e| match e {
        Error::NotFound { .. } => {
            Error::invalid("kind", format!("`{kind}` is not a kind of the catalog"))
        }
        other => other,
    })?;
    if let Some(ws) = workspace_id {
        let w = workspaces::get_workspace(conn, ws)
            .await
            .map_err(|_| Error::invalid("workspace_id", "no such workspace"))?;
        if w.organization_id != org_id {
            return Err(Error::invalid("workspace_id", "no such workspace"));
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    let n = exec(
        conn,
        "INSERT INTO entities (id, organization_id, kind, name, state, attributes, workspace_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (organization_id, kind, name) DO NOTHING",
        [
            id.clone().into(),
            org_id.into(),
            kind.into(),
            name.into(),
            kind_def.initial().into(),
            json!(attributes).to_string().into(),
            workspace_id.map(str::to_owned).into(),
            now.into(),
        ],
    )
    .await?;
    if n == 0 {
        return Err(Error::AlreadyExists(format!(
            "a {kind} named {name:?} already exists"
        )));
    }
    outbox::write(
        conn,
        vec![NewEvent::new(
            org_id,
            "entity.created",
            "entity",
            &id,
            actor,
            json!({"kind": kind, "name": name}),
        )],
        now,
    )
    .await?;
    get_entity(conn, &id).await
}

/// Changes an entity's plain attributes.
pub async fn update_entity(
    conn: &impl ConnectionTrait,
    id: &str,
    name: Option<String>,
    attributes: Option<BTreeMap<String, String>>,
    workspace_id: Option<Option<String>>,
    actor: &str,
    now: EpochMs,
) -> Result<EntityRow> {
    let mut e = get_entity(conn, id).await?;
    if let Some(n) = name {
        e.name = n;
    }
    if let Some(a) = attributes {
        e.attributes = json!(a).to_string();
    }
    if let Some(w) = workspace_id {
        if let Some(ws) = &w {
            let row = workspaces::get_workspace(conn, ws)
                .await
                .map_err(|_| Error::invalid("entity.workspace_id", "no such workspace"))?;
            if row.organization_id != e.organization_id {
                return Err(Error::invalid("entity.workspace_id", "no such workspace"));
            }
        }
        e.workspace_id = w;
    }
    let clash: Option<EntityRow> = query_one(
        conn,
        &format!("SELECT {ENTITY_COLUMNS} FROM entities WHERE organization_id = $1 AND kind = $2 AND name = $3 AND id <> $4"),
        [e.organization_id.clone().into(), e.kind.clone().into(), e.name.clone().into(), id.into()],
    )
    .await?;
    if clash.is_some() {
        return Err(Error::AlreadyExists(format!(
            "a {} named {:?} already exists",
            e.kind, e.name
        )));
    }
    exec(
        conn,
        "UPDATE entities SET name = $1, attributes = $2, workspace_id = $3, updated_at = $4 WHERE id = $5",
        [e.name.clone().into(), e.attributes.clone().into(), e.workspace_id.clone().into(), now.into(), id.into()],
    )
    .await?;
    outbox::write(
        conn,
        vec![NewEvent::new(
            &e.organization_id,
            "entity.updated",
            "entity",
            id,
            actor,
            json!({"name": e.name}),
        )],
        now,
    )
    .await?;
    get_entity(conn, id).await
}

/// Moves an entity to `state`, recording the transition.
pub async fn transition_entity(
    conn: &impl ConnectionTrait,
    entity: &EntityRow,
    state: &str,
    action_run_id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<()> {
    if entity.state == state {
        return Ok(());
    }
    exec(
        conn,
        "UPDATE entities SET state = $1, updated_at = $2 WHERE id = $3",
        [state.into(), now.into(), entity.id.clone().into()],
    )
    .await?;
    outbox::write(
        conn,
        vec![NewEvent::new(&entity.organization_id, "entity.transitioned", "entity", &entity.id, actor, json!({
            "kind": entity.kind, "name": entity.name, "from": entity.state, "to": state, "action_run_id": action_run_id,
        }))],
        now,
    )
    .await
}

/// Entities of an organization, by creation.
pub async fn list_entities(
    conn: &impl ConnectionTrait,
    org: &str,
    kind: Option<&str>,
    state: Option<&str>,
    after: Option<(i64, String)>,
    limit: u64,
) -> Result<Vec<EntityRow>> {
    let mut sql = format!("SELECT {ENTITY_COLUMNS} FROM entities WHERE organization_id = $1");
    let mut values: Vec<Value> = vec![org.into()];
    if let Some(k) = kind {
        values.push(k.into());
        sql.push_str(&format!(" AND kind = ${}", values.len()));
    }
    if let Some(s) = state {
        values.push(s.into());
        sql.push_str(&format!(" AND state = ${}", values.len()));
    }
    if let Some((t, id)) = after {
        values.push(t.into());
        let a = values.len();
        values.push(id.into());
        sql.push_str(&format!(
            " AND (created_at > ${a} OR (created_at = ${a} AND id > ${}))",
            values.len()
        ));
    }
    sql.push_str(&format!(" ORDER BY created_at, id LIMIT {limit}"));
    query_all(conn, &sql, values).await
}

/// A relationship by id.
pub async fn get_relationship(conn: &impl ConnectionTrait, id: &str) -> Result<RelationshipRow> {
    query_one(
        conn,
        &format!("SELECT {RELATIONSHIP_COLUMNS} FROM relationships WHERE id = $1"),
        [id.into()],
    )
    .await?
    .ok_or_else(|| Error::not_found("relationship", id))
}

/// Creates an active relationship between two entities of one organization.
pub async fn create_relationship(
    conn: &impl ConnectionTrait,
    rel_type: &str,
    from: &str,
    to: &str,
    actor: &str,
    now: EpochMs,
) -> Result<RelationshipRow> {
    let a = get_entity(conn, from)
        .await
        .map_err(|_| Error::invalid("from_entity_id", "no such entity"))?;
    let b = get_entity(conn, to)
        .await
        .map_err(|_| Error::invalid("to_entity_id", "no such entity"))?;
    if a.organization_id != b.organization_id {
        return Err(Error::invalid("to_entity_id", "no such entity"));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let n = exec(
        conn,
        "INSERT INTO relationships (id, organization_id, type, from_entity_id, to_entity_id, state, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'active', $6, $6) ON CONFLICT DO NOTHING",
        [id.clone().into(), a.organization_id.clone().into(), rel_type.into(), from.into(), to.into(), now.into()],
    )
    .await?;
    if n == 0 {
        return Err(Error::AlreadyExists(format!(
            "a live {rel_type} relationship from {from} to {to} already exists"
        )));
    }
    outbox::write(
        conn,
        vec![NewEvent::new(
            &a.organization_id,
            "relationship.created",
            "relationship",
            &id,
            actor,
            json!({
                "type": rel_type, "from_entity_id": from, "to_entity_id": to,
            }),
        )],
        now,
    )
    .await?;
    get_relationship(conn, &id).await
}

/// Filters of a relationship list.
#[derive(Debug, Clone, Default)]
pub struct RelationshipFilter {
    pub organization_id: String,
    pub state: Option<&'static str>,
    pub overdue: bool,
    pub entity_id: Option<String>,
}

/// Relationships of an organization, by creation.
pub async fn list_relationships(
    conn: &impl ConnectionTrait,
    f: &RelationshipFilter,
    after: Option<(i64, String)>,
    limit: u64,
    now: EpochMs,
) -> Result<Vec<RelationshipRow>> {
    let mut sql =
        format!("SELECT {RELATIONSHIP_COLUMNS} FROM relationships WHERE organization_id = $1");
    let mut values: Vec<Value> = vec![f.organization_id.clone().into()];
    if let Some(s) = f.state {
        values.push(s.into());
        sql.push_str(&format!(" AND state = ${}", values.len()));
    }
    if f.overdue {
        values.push(now.into());
        sql.push_str(&format!(
            " AND state = 'removing' AND deletion_scheduled_at < ${}",
            values.len()
        ));
    }
    if let Some(e) = &f.entity_id {
        values.push(e.clone().into());
        let n = values.len();
        sql.push_str(&format!(
            " AND (from_entity_id = ${n} OR to_entity_id = ${n})"
        ));
    }
    if let Some((t, id)) = after {
        values.push(t.into());
        let a = values.len();
        values.push(id.into());
        sql.push_str(&format!(
            " AND (created_at > ${a} OR (created_at = ${a} AND id > ${}))",
            values.len()
        ));
    }
    sql.push_str(&format!(" ORDER BY created_at, id LIMIT {limit}"));
    query_all(conn, &sql, values).await
}

/// Moves a relationship to `state`, recording the transition.
pub async fn transition_relationship(
    conn: &impl ConnectionTrait,
    rel: &RelationshipRow,
    state: &str,
    action_run_id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<()> {
    if rel.state == state {
        return Ok(());
    }
    let (finalized, method): (Option<i64>, Option<&str>) = if state == "removed" {
        (Some(now), Some("immediate"))
    } else {
        (None, None)
    };
    exec(
        conn,
        "UPDATE relationships SET state = $1, finalized_at = $2, finalize_method = $3, action_run_id = $4, \
         deletion_scheduled_at = NULL, updated_at = $5 WHERE id = $6",
        [state.into(), finalized.into(), method.map(str::to_owned).into(), action_run_id.into(), now.into(), rel.id.clone().into()],
    )
    .await?;
    outbox::write(
        conn,
        vec![NewEvent::new(&rel.organization_id, "relationship.transitioned", "relationship", &rel.id, actor, json!({
            "type": rel.rel_type, "from": rel.state, "to": state, "action_run_id": action_run_id,
        }))],
        now,
    )
    .await
}

/// Holds a `removing` relationship until `now + grace` (rule 4) and records
/// `deprovision.scheduled`.
pub async fn schedule_deletion(
    conn: &impl ConnectionTrait,
    rel: &RelationshipRow,
    grace_seconds: i64,
    actor: &str,
    now: EpochMs,
) -> Result<()> {
    let at = now.saturating_add(grace_seconds.saturating_mul(1000));
    exec(
        conn,
        "UPDATE relationships SET deletion_scheduled_at = $1, updated_at = $2 WHERE id = $3 AND state = 'removing'",
        [at.into(), now.into(), rel.id.clone().into()],
    )
    .await?;
    outbox::write(
        conn,
        vec![NewEvent::new(&rel.organization_id, "deprovision.scheduled", "relationship", &rel.id, actor, json!({
            "gracePeriodSeconds": grace_seconds, "scheduledAt": rfc3339(at), "type": rel.rel_type,
        }))],
        now,
    )
    .await
}

fn finalized_event(rel: &RelationshipRow, method: &str, actor: &str) -> NewEvent {
    NewEvent::new(
        &rel.organization_id,
        "deprovision.finalized",
        "relationship",
        &rel.id,
        actor,
        json!({
            "finalState": "removed", "method": method, "type": rel.rel_type,
            "from_entity_id": rel.from_entity_id, "to_entity_id": rel.to_entity_id,
        }),
    )
}

/// Finalizes relationships whose grace period elapsed (rule 6). The conditional UPDATE moves
/// each row once: a concurrent sweep finds it no longer `removing`.
pub async fn finalize_elapsed(
    conn: &impl ConnectionTrait,
    limit: u64,
    now: EpochMs,
) -> Result<u32> {
    let set =
        "SET state = 'removed', finalized_at = $1, finalize_method = 'sweep', updated_at = $1";
    let sql = match conn.get_database_backend() {
        // A materialized pick is evaluated once (a semi-join could re-run the LIMIT and take
        // more rows than asked), and SKIP LOCKED gives concurrent sweeps disjoint rows.
        DatabaseBackend::Postgres => format!(
            "WITH picked (pid) AS MATERIALIZED (SELECT id FROM relationships WHERE state = 'removing' \
             AND deletion_scheduled_at <= $1 ORDER BY deletion_scheduled_at LIMIT {limit} FOR UPDATE SKIP LOCKED) \
             UPDATE relationships {set} FROM picked WHERE relationships.id = picked.pid AND state = 'removing' \
             RETURNING {RELATIONSHIP_COLUMNS}"
        ),
        _ => format!(
            "UPDATE relationships {set} WHERE id IN (SELECT id FROM relationships WHERE state = 'removing' \
             AND deletion_scheduled_at <= $1 ORDER BY deletion_scheduled_at LIMIT {limit}) AND state = 'removing' \
             RETURNING {RELATIONSHIP_COLUMNS}"
        ),
    };
    let rows: Vec<RelationshipRow> = query_all(conn, &sql, [now.into()]).await?;
    let events = rows
        .iter()
        .map(|r| finalized_event(r, "sweep", "scheduler"))
        .collect();
    outbox::write(conn, events, now).await?;
    Ok(rows.len() as u32)
}

/// Skips the rest of one relationship's grace period (rule 7).
pub async fn force_finalize(
    conn: &impl ConnectionTrait,
    id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<RelationshipRow> {
    let rel = get_relationship(conn, id).await?;
    if rel.state != "removing" || rel.deletion_scheduled_at.is_none() {
        return Err(Error::precondition(format!(
            "relationship {id} has no scheduled grace period (it is {})",
            rel.state
        )));
    }
    let n = exec(
        conn,
        "UPDATE relationships SET state = 'removed', finalized_at = $1, finalize_method = 'force', updated_at = $1 \
         WHERE id = $2 AND state = 'removing'",
        [now.into(), id.into()],
    )
    .await?;
    if n == 0 {
        return Err(Error::Aborted(format!(
            "relationship {id} was finalized concurrently"
        )));
    }
    outbox::write(conn, vec![finalized_event(&rel, "force", actor)], now).await?;
    get_relationship(conn, id).await
}
