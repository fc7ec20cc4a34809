//! Entities: the fleet's tenants, accounts and clusters, each of a catalog kind with a state.

use std::collections::BTreeMap;

use ebb_common::time::EpochMs;
use ebb_common::{Error, Result};
use sea_orm::sea_query::{Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::json;

use crate::deprovision::catalog;
use crate::events::{NewEvent, outbox};
use crate::store::{CHUNK, by_ids, decode_json, exec, keyset, placeholders, query_one, select_all};
use crate::tenancy::orgs;
use crate::workspaces;

/// Columns of [`EntityRow`].
pub const ENTITY_COLUMNS: &str = "id, organization_id, kind, name, state, attributes, workspace_id, \
    created_at, updated_at, owner_email, owner_slack_user_id";

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
    pub owner_email: String,
    pub owner_slack_user_id: String,
}

impl EntityRow {
    /// Its owner as event payloads carry it (reminders and results reach the owner too), or
    /// null when it names none.
    pub fn owner(&self) -> serde_json::Value {
        workspaces::owner_json(&self.owner_email, &self.owner_slack_user_id)
    }

    /// Attributes as a map.
    pub fn attributes(&self) -> Result<BTreeMap<String, String>> {
        decode_json("entities", "attributes", &self.id, &self.attributes)
    }
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
    owner: (&str, &str),
    actor: &str,
    now: EpochMs,
) -> Result<EntityRow> {
    orgs::get_org(conn, org_id).await?;
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
        "INSERT INTO entities (id, organization_id, kind, name, state, attributes, workspace_id, created_at, updated_at, \
         owner_email, owner_slack_user_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10) ON CONFLICT (organization_id, kind, name) DO NOTHING",
        [
            id.clone().into(),
            org_id.into(),
            kind.into(),
            name.into(),
            kind_def.initial().into(),
            json!(attributes).to_string().into(),
            workspace_id.map(str::to_owned).into(),
            now.into(),
            owner.0.into(),
            owner.1.into(),
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
            json!({"kind": kind, "name": name, "owner": workspaces::owner_json(owner.0, owner.1)}),
        )],
        now,
    )
    .await?;
    get_entity(conn, &id).await
}

/// What an entity update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct EntityChanges {
    pub name: Option<String>,
    pub attributes: Option<BTreeMap<String, String>>,
    /// `Some(None)` unlinks its workspace.
    pub workspace_id: Option<Option<String>>,
    /// Email and Slack member id (empty for none).
    pub owner: Option<(String, String)>,
}

/// Changes an entity's plain attributes.
pub async fn update_entity(
    conn: &impl ConnectionTrait,
    id: &str,
    changes: EntityChanges,
    actor: &str,
    now: EpochMs,
) -> Result<EntityRow> {
    let EntityChanges {
        name,
        attributes,
        workspace_id,
        owner,
    } = changes;
    let mut e = get_entity(conn, id).await?;
    if let Some((email, slack)) = owner {
        e.owner_email = email;
        e.owner_slack_user_id = slack;
    }
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
        "UPDATE entities SET name = $1, attributes = $2, workspace_id = $3, updated_at = $4, \
         owner_email = $6, owner_slack_user_id = $7 WHERE id = $5",
        [
            e.name.clone().into(),
            e.attributes.clone().into(),
            e.workspace_id.clone().into(),
            now.into(),
            id.into(),
            e.owner_email.clone().into(),
            e.owner_slack_user_id.clone().into(),
        ],
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
            json!({"name": e.name, "owner": e.owner()}),
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
    transition_entities(
        conn,
        std::slice::from_ref(entity),
        state,
        action_run_id,
        actor,
        now,
    )
    .await
}

/// Moves entities to `state`, one statement per batch, with an `entity.transitioned` event each;
/// those already there are left alone.
pub async fn transition_entities(
    conn: &impl ConnectionTrait,
    entities: &[EntityRow],
    state: &str,
    action_run_id: &str,
    actor: &str,
    now: EpochMs,
) -> Result<()> {
    let moving: Vec<&EntityRow> = entities.iter().filter(|e| e.state != state).collect();
    for chunk in moving.chunks(CHUNK) {
        let mut values: Vec<Value> = vec![state.into(), now.into()];
        values.extend(chunk.iter().map(|e| Value::from(e.id.clone())));
        exec(
            conn,
            &format!(
                "UPDATE entities SET state = $1, updated_at = $2 WHERE id IN ({})",
                placeholders(3, chunk.len())
            ),
            values,
        )
        .await?;
    }
    let events = moving
        .iter()
        .map(|e| {
            NewEvent::new(&e.organization_id, "entity.transitioned", "entity", &e.id, actor, json!({
                "kind": e.kind, "name": e.name, "from": e.state, "to": state, "action_run_id": action_run_id,
            }))
        })
        .collect();
    outbox::write(conn, events, now).await
}

/// Entities by id, in chunks.
pub async fn get_entities(conn: &impl ConnectionTrait, ids: &[String]) -> Result<Vec<EntityRow>> {
    by_ids(
        conn,
        &format!("SELECT {ENTITY_COLUMNS} FROM entities"),
        "id",
        ids,
    )
    .await
}

/// Filters of an entity list; `None` is no filter.
#[derive(Debug, Clone, Copy, Default)]
pub struct EntityFilter<'a> {
    /// Only this kind.
    pub kind: Option<&'a str>,
    /// Only this state.
    pub state: Option<&'a str>,
    /// Only this exact name (unique per kind within an organization).
    pub name: Option<&'a str>,
    /// Only entities whose owner has this email address or Slack user id.
    pub owner: Option<&'a str>,
}

/// Entities of an organization, by creation.
pub async fn list_entities(
    conn: &impl ConnectionTrait,
    org: &str,
    filter: EntityFilter<'_>,
    after: Option<(i64, String)>,
    limit: u64,
) -> Result<Vec<EntityRow>> {
    let mut q = Query::select();
    q.expr(Expr::cust(ENTITY_COLUMNS))
        .from("entities")
        .and_where(Expr::col("organization_id").eq(org));
    if let Some(k) = filter.kind {
        q.and_where(Expr::col("kind").eq(k));
    }
    if let Some(s) = filter.state {
        q.and_where(Expr::col("state").eq(s));
    }
    if let Some(n) = filter.name {
        q.and_where(Expr::col("name").eq(n));
    }
    if let Some(o) = filter.owner {
        q.and_where(
            Expr::col("owner_email")
                .eq(o)
                .or(Expr::col("owner_slack_user_id").eq(o)),
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
