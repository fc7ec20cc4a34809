//! Reading columns out of raw query results with errors that name the column.

use ebb_common::Error;
use sea_orm::{QueryResult, TryGetable};

/// Column `col` of `row`.
pub fn get<T: TryGetable>(row: &QueryResult, col: &str) -> Result<T, Error> {
    row.try_get::<T>("", col)
        .map_err(|e| Error::Internal(format!("column {col}: {e}")))
}

/// A JSON text column, decoded strictly: a value that does not decode is an error naming the
/// column, never a default.
pub fn json<T: serde::de::DeserializeOwned>(row: &QueryResult, col: &str) -> Result<T, Error> {
    let text: String = get(row, col)?;
    serde_json::from_str(&text).map_err(|e| Error::Internal(format!("column {col}: {e}")))
}

/// A 0/1 integer column as a flag.
pub fn flag(row: &QueryResult, col: &str) -> Result<bool, Error> {
    Ok(get::<i32>(row, col)? != 0)
}
