//! The SQL dialect shared by every room: running `$n`-placeholder statements through SeaORM,
//! reading typed rows, and the few clauses that differ between SQLite and PostgreSQL.

/// Declares a state kept in a TEXT column: an enum whose variants map one to one to the
/// strings the column's CHECK constraint allows, bound as a SeaORM value and read as one
/// (`TryGetable`). A stored string that is not a variant does not decode: the read fails
/// naming the type and the value.
macro_rules! db_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// The stored string.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// The state a stored string names.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl From<$name> for sea_orm::Value {
            fn from(state: $name) -> Self {
                state.as_str().into()
            }
        }

        impl sea_orm::TryGetable for $name {
            fn try_get_by<I: sea_orm::ColIdx>(
                res: &sea_orm::QueryResult,
                index: I,
            ) -> Result<Self, sea_orm::TryGetError> {
                let text = String::try_get_by(res, index)?;
                Self::parse(&text).ok_or_else(|| {
                    sea_orm::TryGetError::DbErr(sea_orm::DbErr::Type(format!(
                        "`{text}` in column {index:?} is not a {}",
                        stringify!($name)
                    )))
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use db_enum;

use ebb_common::db::stmt;
use ebb_common::sql;
pub use ebb_common::sql::placeholders;
use ebb_common::{Error, Result};
use sea_orm::sea_query::{Cond, Expr, ExprTrait, IntoColumnRef, Order, SelectStatement};
use sea_orm::{ConnectionTrait, DatabaseBackend, FromQueryResult, Value};

/// Ids or rows per set-based statement: a list may be bound twice and still stay well below
/// SQLite's parameter limit, and a statement's messages stay small.
pub const CHUNK: usize = 500;

/// ` FOR UPDATE OF alias` on PostgreSQL; nothing on SQLite, whose writers are serialized.
pub fn for_update(conn: &impl ConnectionTrait, table_alias: &str) -> String {
    sql::for_update()
        .of(table_alias)
        .sql(conn.get_database_backend())
}

/// ` FOR UPDATE OF alias SKIP LOCKED` on PostgreSQL, so replicas working on the same table
/// take different rows; nothing on SQLite.
pub fn skip_locked(conn: &impl ConnectionTrait, table_alias: &str) -> String {
    sql::for_update()
        .of(table_alias)
        .skip_locked()
        .sql(conn.get_database_backend())
}

/// Decodes a JSON column strictly: a value that does not decode is an error naming the table,
/// the column and the row (and is logged), never a default.
pub fn decode_json<T: serde::de::DeserializeOwned>(
    table: &str,
    column: &str,
    row_id: &str,
    text: &str,
) -> Result<T> {
    serde_json::from_str(text).map_err(|e| {
        tracing::error!(table, column, row_id, error = %e, "stored value does not decode");
        Error::Internal(format!(
            "{table}.{column} of row {row_id} does not decode: {e}"
        ))
    })
}

/// Every row of a statement assembled with sea-query — the lists built from optional filters
/// and keyset pages — bound the way the connection's backend binds.
pub async fn select_all<T: FromQueryResult>(
    conn: &impl ConnectionTrait,
    query: &SelectStatement,
) -> Result<Vec<T>> {
    let rows = conn
        .query_all_raw(conn.get_database_backend().build(query))
        .await?;
    rows.iter()
        .map(|r| T::from_query_result(r, "").map_err(Error::from))
        .collect()
}

/// A keyset page condition on `(column, id_column)`: rows after `position` in ascending
/// order, or before it in descending order.
pub fn keyset<C: IntoColumnRef + Clone>(
    column: C,
    id_column: C,
    position: (i64, String),
    order: Order,
) -> Cond {
    let (at, id) = position;
    let (past, past_id) = match order {
        Order::Desc => (
            Expr::col(column.clone()).lt(at),
            Expr::col(id_column).lt(id),
        ),
        _ => (
            Expr::col(column.clone()).gt(at),
            Expr::col(id_column).gt(id),
        ),
    };
    Cond::any()
        .add(past)
        .add(Cond::all().add(Expr::col(column).eq(at)).add(past_id))
}

/// The relation `v` of the rows bound as one JSON array in parameter `$param`, each row an
/// object with the `columns` (name, SQL type) as keys; a key that is missing or null reads
/// as NULL. A statement that reads its rows from it has the same text whatever their number,
/// so the server parses and plans it once per connection, where a list of placeholders made
/// each batch size a statement of its own with thousands of parameters to bind and plan.
///
/// On SQLite, an `INSERT … SELECT … FROM` it followed by `ON CONFLICT` needs a `WHERE` between
/// the two (SQLite would read `ON` as a join's).
pub fn json_rows(backend: DatabaseBackend, param: usize, columns: &[(&str, &str)]) -> String {
    if backend == DatabaseBackend::Postgres {
        let typed: Vec<String> = columns.iter().map(|(c, t)| format!("{c} {t}")).collect();
        format!(
            "json_to_recordset(${param}::json) AS v ({})",
            typed.join(", ")
        )
    } else {
        let read: Vec<String> = columns
            .iter()
            .map(|(c, _)| format!("j.value ->> '{c}' AS {c}"))
            .collect();
        format!(
            "(SELECT {} FROM json_each(${param}) AS j) AS v",
            read.join(", ")
        )
    }
}

/// `rows` as the JSON array [`json_rows`] reads.
pub fn json_param<T: serde::Serialize>(rows: &[T]) -> Result<Value> {
    serde_json::to_string(rows)
        .map(Value::from)
        .map_err(|e| Error::Internal(format!("encoding rows: {e}")))
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

/// The rows of `select` (a `SELECT … FROM …` without a `WHERE`) whose `key` column is among
/// `ids`, one statement per [`CHUNK`] of them.
pub async fn by_ids<T: FromQueryResult>(
    conn: &impl ConnectionTrait,
    select: &str,
    key: &str,
    ids: &[String],
) -> Result<Vec<T>> {
    let mut found = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let sql = format!("{select} WHERE {key} IN ({})", placeholders(1, chunk.len()));
        found.extend(
            query_all::<T>(conn, &sql, chunk.iter().map(|id| Value::from(id.clone()))).await?,
        );
    }
    Ok(found)
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

/// A row of which only existence matters.
#[derive(Debug, FromQueryResult)]
pub struct IdRow {
    #[allow(
        dead_code,
        reason = "selected so the row decodes; only its presence is read"
    )]
    pub id: String,
}
