//! The SQL dialect shared by every room: running `$n`-placeholder statements through SeaORM,
//! reading typed rows, and the few clauses that differ between SQLite and PostgreSQL.

pub(crate) mod idempotency;

use ebb_common::db::stmt;
use ebb_common::{Error, Result};
use sea_orm::{ConnectionTrait, DatabaseBackend, FromQueryResult, Value};

/// ` FOR UPDATE OF alias` on PostgreSQL; nothing on SQLite, whose writers are serialized.
pub fn for_update(conn: &impl ConnectionTrait, table_alias: &str) -> String {
    match conn.get_database_backend() {
        DatabaseBackend::Postgres => format!(" FOR UPDATE OF {table_alias}"),
        _ => String::new(),
    }
}

/// One row, or none.
pub async fn query_one<T: FromQueryResult>(
    conn: &impl ConnectionTrait,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Result<Option<T>> {
    let row = conn
        .query_one_raw(stmt(conn.get_database_backend(), sql, values))
        .await?;
    Ok(match row {
        Some(r) => Some(T::from_query_result(&r, "")?),
        None => None,
    })
}

/// Every row.
pub async fn query_all<T: FromQueryResult>(
    conn: &impl ConnectionTrait,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Result<Vec<T>> {
    let rows = conn
        .query_all_raw(stmt(conn.get_database_backend(), sql, values))
        .await?;
    rows.iter()
        .map(|r| T::from_query_result(r, "").map_err(Error::from))
        .collect()
}

/// Executes a statement; the number of rows it touched.
pub async fn exec(
    conn: &impl ConnectionTrait,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Result<u64> {
    Ok(conn
        .execute_raw(stmt(conn.get_database_backend(), sql, values))
        .await?
        .rows_affected())
}

pub fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A row of which only existence matters.
#[derive(Debug, FromQueryResult)]
pub struct IdRow {
    #[allow(
        dead_code,
        reason = "selected so the row decodes; only its presence is read"
    )]
    pub id: String,
}
