//! Configuration rows: inserted, read, listed, updated, disabled and deleted.

use ebb_common::db::Db;
use ebb_common::time::EpochMs;
use ebb_common::{Error, Result};
use sea_orm::{ConnectionTrait, QueryResult, Value};

use super::model::{Configuration, Destination, Scope, Spec};
use super::secrets::secrets_of;
use crate::rows;

const COLUMNS: &str = "id, organization_id, name, scope_type, scope_id, destination_type, url, \
    email_addresses, event_types, enabled, disabled_reason, verify_ms, last_verification_error, \
    created_ms, updated_ms";

fn from_row(row: &QueryResult) -> Result<Configuration> {
    let list = |col: &str| -> Result<Vec<String>> {
        let text: String = rows::get(row, col)?;
        serde_json::from_str(&text).map_err(|e| Error::Internal(format!("column {col}: {e}")))
    };
    Ok(Configuration {
        id: rows::get(row, "id")?,
        organization_id: rows::get(row, "organization_id")?,
        spec: Spec {
            name: rows::get(row, "name")?,
            scope: Scope::from_columns(
                &rows::get::<String>(row, "scope_type")?,
                rows::get(row, "scope_id")?,
            )?,
            destination: Destination::parse(&rows::get::<String>(row, "destination_type")?)?,
            url: rows::get(row, "url")?,
            email_addresses: list("email_addresses")?,
            event_types: list("event_types")?,
        },
        enabled: rows::flag(row, "enabled")?,
        disabled_reason: rows::get(row, "disabled_reason")?,
        verify_ms: rows::get(row, "verify_ms")?,
        last_verification_error: rows::get(row, "last_verification_error")?,
        created_ms: rows::get(row, "created_ms")?,
        updated_ms: rows::get(row, "updated_ms")?,
        secrets: Vec::new(),
    })
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

/// Inserts a configuration; its first secret follows with [`super::insert_secret`].
pub async fn insert<C: ConnectionTrait>(
    conn: &C,
    id: &str,
    org: &str,
    spec: &Spec,
    enabled: bool,
    now: EpochMs,
) -> Result<()> {
    let (scope_type, scope_id) = spec.scope.columns();
    let b = conn.get_database_backend();
    conn.execute_raw(ebb_common::db::stmt(
        b,
        &format!(
            "INSERT INTO notification_configurations ({COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, '', $11, '', $12, $12)"
        ),
        [
            Value::from(id),
            Value::from(org),
            Value::from(spec.name.clone()),
            Value::from(scope_type),
            Value::from(scope_id),
            Value::from(spec.destination.as_str()),
            Value::from(spec.url.clone()),
            Value::from(json_list(&spec.email_addresses)),
            Value::from(json_list(&spec.event_types)),
            Value::from(i32::from(enabled)),
            Value::from(enabled.then_some(now)),
            Value::from(now),
        ],
    ))
    .await?;
    Ok(())
}

/// The configuration `id` with its secrets' metadata.
pub async fn get<C: ConnectionTrait>(conn: &C, id: &str) -> Result<Configuration> {
    let b = conn.get_database_backend();
    let row = conn
        .query_one_raw(ebb_common::db::stmt(
            b,
            &format!("SELECT {COLUMNS} FROM notification_configurations WHERE id = $1"),
            [Value::from(id)],
        ))
        .await?
        .ok_or_else(|| Error::not_found("notification configuration", id))?;
    let mut c = from_row(&row)?;
    c.secrets = secrets_of(conn, &[c.id.clone()])
        .await?
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    Ok(c)
}

/// A page of an organization's configurations, oldest first.
pub async fn list(
    db: &Db,
    org: &str,
    scope: Option<&Scope>,
    after: Option<&(i64, String)>,
    limit: u64,
) -> Result<Vec<Configuration>> {
    let mut sql =
        format!("SELECT {COLUMNS} FROM notification_configurations WHERE organization_id = $1");
    let mut values = vec![Value::from(org)];
    if let Some(scope) = scope {
        let (t, id) = scope.columns();
        values.push(Value::from(t));
        sql.push_str(&format!(" AND scope_type = ${}", values.len()));
        if !id.is_empty() {
            values.push(Value::from(id));
            sql.push_str(&format!(" AND scope_id = ${}", values.len()));
        }
    }
    if let Some((key, id)) = after {
        values.push(Value::from(*key));
        values.push(Value::from(id.clone()));
        sql.push_str(&format!(
            " AND (created_ms > ${a} OR (created_ms = ${a} AND id > ${b}))",
            a = values.len() - 1,
            b = values.len()
        ));
    }
    sql.push_str(&format!(" ORDER BY created_ms, id LIMIT {limit}"));
    let rows = db.conn.query_all_raw(db.stmt(&sql, values)).await?;
    let mut configs = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
    let ids: Vec<String> = configs.iter().map(|c| c.id.clone()).collect();
    for (cid, s) in secrets_of(&db.conn, &ids).await? {
        if let Some(c) = configs.iter_mut().find(|c| c.id == cid) {
            c.secrets.push(s);
        }
    }
    Ok(configs)
}

/// Enabled configurations of an organization: the candidates for an event.
pub async fn enabled_in<C: ConnectionTrait>(conn: &C, org: &str) -> Result<Vec<Configuration>> {
    let rows = conn
        .query_all_raw(ebb_common::db::stmt(
            conn.get_database_backend(),
            &format!(
                "SELECT {COLUMNS} FROM notification_configurations
                 WHERE organization_id = $1 AND enabled = 1"
            ),
            [Value::from(org)],
        ))
        .await?;
    rows.iter().map(from_row).collect()
}

/// Writes the client-settable fields and the enabled state.
pub async fn update<C: ConnectionTrait>(
    conn: &C,
    id: &str,
    spec: &Spec,
    enabled: bool,
    verified_now: bool,
    now: EpochMs,
) -> Result<()> {
    let (scope_type, scope_id) = spec.scope.columns();
    conn.execute_raw(ebb_common::db::stmt(
        conn.get_database_backend(),
        "UPDATE notification_configurations SET name = $2, scope_type = $3, scope_id = $4,
            url = $5, email_addresses = $6, event_types = $7, enabled = $8,
            disabled_reason = CASE WHEN $8 = 1 THEN '' ELSE disabled_reason END,
            verify_ms = CASE WHEN $9 = 1 THEN $10 ELSE verify_ms END,
            last_verification_error = CASE WHEN $9 = 1 THEN '' ELSE last_verification_error END,
            updated_ms = $10
         WHERE id = $1",
        [
            Value::from(id),
            Value::from(spec.name.clone()),
            Value::from(scope_type),
            Value::from(scope_id),
            Value::from(spec.url.clone()),
            Value::from(json_list(&spec.email_addresses)),
            Value::from(json_list(&spec.event_types)),
            Value::from(i32::from(enabled)),
            Value::from(i32::from(verified_now)),
            Value::from(now),
        ],
    ))
    .await?;
    Ok(())
}

/// Records a failed verification (the configuration stays as it was otherwise).
pub async fn record_verification_failure(db: &Db, id: &str, what: &str) -> Result<()> {
    db.conn
        .execute_raw(db.stmt(
            "UPDATE notification_configurations SET last_verification_error = $2 WHERE id = $1",
            [Value::from(id), Value::from(what)],
        ))
        .await?;
    Ok(())
}

/// Disables a configuration because its endpoint asked to stop (410 Gone).
pub async fn disable<C: ConnectionTrait>(conn: &C, id: &str, reason: &str) -> Result<()> {
    let b = conn.get_database_backend();
    conn.execute_raw(ebb_common::db::stmt(
        b,
        &format!(
            "UPDATE notification_configurations SET enabled = 0, disabled_reason = $2,
             updated_ms = {} WHERE id = $1",
            ebb_common::db::now_ms_sql(b)
        ),
        [Value::from(id), Value::from(reason)],
    ))
    .await?;
    Ok(())
}

/// Deletes a configuration and cancels its pending deliveries; returns how many.
pub async fn delete<C: ConnectionTrait>(conn: &C, id: &str, now: EpochMs) -> Result<u64> {
    let b = conn.get_database_backend();
    let cancelled = conn
        .execute_raw(ebb_common::db::stmt(
            b,
            "UPDATE deliveries SET status = 'cancelled', completed_ms = $2, updated_ms = $2,
                last_error = 'configuration deleted'
             WHERE configuration_id = $1 AND status = 'pending'",
            [Value::from(id), Value::from(now)],
        ))
        .await?
        .rows_affected();
    let deleted = conn
        .execute_raw(ebb_common::db::stmt(
            b,
            "DELETE FROM notification_configurations WHERE id = $1",
            [Value::from(id)],
        ))
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(Error::not_found("notification configuration", id));
    }
    Ok(cancelled)
}
