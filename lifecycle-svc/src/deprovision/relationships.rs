//! Relationships: typed, directed edges that are never deleted, with grace periods finalized
//! by the sweep or forced by an operator (DP-4, DP-6, DP-7, DP-8).

use std::collections::HashSet;

use ebb_common::time::{EpochMs, rfc3339};
use ebb_common::{Error, Result};
use sea_orm::sea_query::{Cond, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, DatabaseBackend, FromQueryResult, Value};
use serde_json::json;

use crate::deprovision::entities::get_entity;
use crate::events::{NewEvent, outbox};
use crate::store::{
    CHUNK, IdRow, by_ids, db_enum, exec, keyset, placeholders, query_all, query_one, select_all,
};

db_enum! {
    /// Where an edge stands: edges are never deleted, they end `removed`.
    pub enum EdgeState {
        Active = "active",
        Removing = "removing",
        Removed = "removed",
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
    pub state: EdgeState,
    pub deletion_scheduled_at: Option<i64>,
    pub finalized_at: Option<i64>,
    pub finalize_method: Option<String>,
    pub action_run_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
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
    pub state: Option<EdgeState>,
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
    let mut q = Query::select();
    q.expr(Expr::cust(RELATIONSHIP_COLUMNS))
        .from("relationships")
        .and_where(Expr::col("organization_id").eq(f.organization_id.as_str()));
    if let Some(s) = f.state {
        q.and_where(Expr::col("state").eq(s.as_str()));
    }
    if f.overdue {
        q.and_where(Expr::col("state").eq(EdgeState::Removing.as_str()))
            .and_where(Expr::col("deletion_scheduled_at").lt(now));
    }
    if let Some(e) = &f.entity_id {
        q.cond_where(
            Cond::any()
                .add(Expr::col("from_entity_id").eq(e.as_str()))
                .add(Expr::col("to_entity_id").eq(e.as_str())),
        );
    }
    if let Some(position) = after {
        q.cond_where(keyset("created_at", "id", position, Order::Asc));
    }
    q.order_by("created_at", Order::Asc)
        .order_by("id", Order::Asc)
        .limit(limit);
    select_all(conn, &q).await
}

/// Moves relationships to `state` on behalf of action run `action_run_id`, one statement per
/// batch, with a `relationship.transitioned` event each; those already there are left alone.
pub async fn transition_relationships(
    conn: &impl ConnectionTrait,
    rels: &[RelationshipRow],
    state: EdgeState,
    action_run_id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<()> {
    let moving: Vec<&RelationshipRow> = rels.iter().filter(|r| r.state != state).collect();
    let (finalized, method): (Option<i64>, Option<&str>) = if state == EdgeState::Removed {
        (Some(now), Some("immediate"))
    } else {
        (None, None)
    };
    for chunk in moving.chunks(CHUNK) {
        let mut values: Vec<Value> = vec![
            state.into(),
            finalized.into(),
            method.map(str::to_owned).into(),
            action_run_id.into(),
            now.into(),
        ];
        values.extend(chunk.iter().map(|r| Value::from(r.id.clone())));
        exec(
            conn,
            &format!(
                "UPDATE relationships SET state = $1, finalized_at = $2, finalize_method = $3, action_run_id = $4, \
                 deletion_scheduled_at = NULL, updated_at = $5 WHERE id IN ({})",
                placeholders(6, chunk.len())
            ),
            values,
        )
        .await?;
    }
    let events = moving
        .iter()
        .map(|rel| {
            NewEvent::new(&rel.organization_id, "relationship.transitioned", "relationship", &rel.id, actor, json!({
                "type": rel.rel_type, "from": rel.state.as_str(), "to": state.as_str(), "action_run_id": action_run_id,
            }))
        })
        .collect();
    outbox::write(conn, events, now).await
}

/// Holds `removing` relationships until `now + grace` (DP-4) and records
/// `deprovision.scheduled` for each.
pub async fn schedule_deletions(
    conn: &impl ConnectionTrait,
    rels: &[RelationshipRow],
    grace_seconds: i64,
    actor: &str,
    now: EpochMs,
) -> Result<()> {
    let at = now.saturating_add(grace_seconds.saturating_mul(1000));
    let mut scheduled = Vec::new();
    for chunk in rels.chunks(CHUNK) {
        let mut values: Vec<Value> = vec![at.into(), now.into()];
        values.extend(chunk.iter().map(|r| Value::from(r.id.clone())));
        let ids: Vec<IdRow> = query_all(
            conn,
            &format!(
                "UPDATE relationships SET deletion_scheduled_at = $1, updated_at = $2 \
                 WHERE id IN ({}) AND state = 'removing' RETURNING id",
                placeholders(3, chunk.len())
            ),
            values,
        )
        .await?;
        scheduled.extend(ids.into_iter().map(|r| r.id));
    }
    let scheduled: HashSet<String> = scheduled.into_iter().collect();
    let events = rels
        .iter()
        .filter(|r| scheduled.contains(&r.id))
        .map(|rel| {
            NewEvent::new(&rel.organization_id, "deprovision.scheduled", "relationship", &rel.id, actor, json!({
                "gracePeriodSeconds": grace_seconds, "scheduledAt": rfc3339(at), "type": rel.rel_type,
            }))
        })
        .collect();
    outbox::write(conn, events, now).await
}

/// Relationships by id, in chunks.
pub async fn get_relationships(
    conn: &impl ConnectionTrait,
    ids: &[String],
) -> Result<Vec<RelationshipRow>> {
    let select = format!("SELECT {RELATIONSHIP_COLUMNS} FROM relationships");
    by_ids(conn, &select, "id", ids).await
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

/// Finalizes relationships whose grace period elapsed (DP-6). The conditional UPDATE moves
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

/// Skips the rest of one relationship's grace period (DP-7).
pub async fn force_finalize(
    conn: &impl ConnectionTrait,
    id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<RelationshipRow> {
    let rel = get_relationship(conn, id).await?;
    if rel.state != EdgeState::Removing || rel.deletion_scheduled_at.is_none() {
        return Err(Error::precondition_reason(
            "NO_GRACE_PERIOD",
            format!(
                "relationship {id} has no scheduled grace period (it is {})",
                rel.state
            ),
            [("relationship_id", id)],
        ));
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
