//! SQL that runs on both backends: statements written once with PostgreSQL's `$n`
//! placeholders, lists of placeholders, row locks, and the database's clock.
//!
//! Services write their statements as text with `$1`-style placeholders; [`stmt`] rewrites them
//! to SQLite's `?1` form, which binds the same values in the same places.

use std::borrow::Cow;

use sea_orm::{DatabaseBackend, Statement, Value};

/// A statement in `backend`'s dialect from `$n`-placeholder SQL.
pub fn stmt(
    backend: DatabaseBackend,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Statement {
    let sql = match backend {
        DatabaseBackend::Sqlite => sqlite_placeholders(sql).into_owned(),
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// Rewrites each `$<digits>` placeholder to SQLite's `?<digits>`, leaving alone any `$` inside a
/// string literal (`'$.path'`), a quoted identifier or a comment, and any `$` not followed by a
/// digit.
pub fn sqlite_placeholders(sql: &str) -> Cow<'_, str> {
    if !sql.contains('$') {
        return Cow::Borrowed(sql);
    }
    #[derive(Clone, Copy, PartialEq)]
    enum In {
        Code,
        /// Inside `'…'`; `''` closes and reopens, which reads the same.
        Literal,
        /// Inside `"…"`.
        Identifier,
        /// After `--`, to the end of the line.
        LineComment,
        /// Inside `/* … */`.
        BlockComment,
    }
    let mut out = String::with_capacity(sql.len());
    let mut state = In::Code;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        let next = chars.peek().copied();
        match state {
            In::Code => match c {
                '\'' => state = In::Literal,
                '"' => state = In::Identifier,
                '-' if next == Some('-') => state = In::LineComment,
                '/' if next == Some('*') => state = In::BlockComment,
                '$' if next.is_some_and(|n| n.is_ascii_digit()) => {
                    out.push('?');
                    continue;
                }
                _ => {}
            },
            In::Literal if c == '\'' => state = In::Code,
            In::Identifier if c == '"' => state = In::Code,
            In::LineComment if c == '\n' => state = In::Code,
            In::BlockComment if c == '*' && next == Some('/') => {
                out.push(c);
                out.push('/');
                chars.next();
                state = In::Code;
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// `$first, $first+1, …` placeholders for `n` values, e.g. for `IN (…)`.
pub fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A row lock taken by a `SELECT` inside a write transaction: `FOR UPDATE` on PostgreSQL, and
/// nothing on SQLite, where a write transaction already holds the database's only write lock
/// (one connection per process, `BEGIN IMMEDIATE`).
///
/// ```
/// use ebb_common::sql::for_update;
/// use sea_orm::DatabaseBackend::{Postgres, Sqlite};
///
/// assert_eq!(for_update().sql(Postgres), " FOR UPDATE");
/// assert_eq!(for_update().of("w").skip_locked().sql(Postgres), " FOR UPDATE OF w SKIP LOCKED");
/// assert_eq!(for_update().of("w").sql(Sqlite), "");
/// ```
pub fn for_update() -> RowLock {
    RowLock::default()
}

/// The options of a [`for_update`] lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowLock {
    of: Option<String>,
    skip_locked: bool,
}

impl RowLock {
    /// Locks only the rows of the table aliased `alias` in a join (`FOR UPDATE OF alias`).
    pub fn of(mut self, alias: &str) -> Self {
        self.of = Some(alias.to_owned());
        self
    }

    /// Skips rows another transaction holds (`SKIP LOCKED`), for claiming work from a queue.
    pub fn skip_locked(mut self) -> Self {
        self.skip_locked = true;
        self
    }

    /// The suffix to append to the `SELECT` in `backend`'s dialect, with a leading space.
    pub fn sql(&self, backend: DatabaseBackend) -> String {
        if backend != DatabaseBackend::Postgres {
            return String::new();
        }
        let mut out = String::from(" FOR UPDATE");
        if let Some(alias) = &self.of {
            out.push_str(" OF ");
            out.push_str(alias);
        }
        if self.skip_locked {
            out.push_str(" SKIP LOCKED");
        }
        out
    }
}

/// SQL for the current time in milliseconds since the epoch, in database time.
pub fn now_ms_sql(backend: DatabaseBackend) -> &'static str {
    match backend {
        DatabaseBackend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        _ => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_dialect() {
        let s = stmt(DatabaseBackend::Sqlite, "SELECT $1, $2, $1", []);
        assert_eq!(s.sql, "SELECT ?1, ?2, ?1");
        let p = stmt(DatabaseBackend::Postgres, "SELECT $1", []);
        assert_eq!(p.sql, "SELECT $1");
    }

    #[test]
    fn only_placeholders_outside_quotes_are_rewritten() {
        let cases = [
            ("SELECT $1", "SELECT ?1"),
            ("SELECT $12 + $3", "SELECT ?12 + ?3"),
            (
                "SELECT json_extract(data, '$.a') FROM t WHERE id = $1",
                "SELECT json_extract(data, '$.a') FROM t WHERE id = ?1",
            ),
            ("SELECT 'it''s $1' || $2", "SELECT 'it''s $1' || ?2"),
            (
                "SELECT \"col$1\" FROM t WHERE a = $1",
                "SELECT \"col$1\" FROM t WHERE a = ?1",
            ),
            ("SELECT $1 -- not $2\n, $3", "SELECT ?1 -- not $2\n, ?3"),
            ("SELECT /* $1 */ $2", "SELECT /* $1 */ ?2"),
            ("SELECT '$' || $ || $x", "SELECT '$' || $ || $x"),
            ("SELECT 'é$1' , $1", "SELECT 'é$1' , ?1"),
            ("SELECT 1", "SELECT 1"),
        ];
        for (input, want) in cases {
            assert_eq!(sqlite_placeholders(input), want, "{input}");
        }
    }

    #[test]
    fn placeholder_lists_count_from_their_first() {
        assert_eq!(placeholders(1, 3), "$1, $2, $3");
        assert_eq!(placeholders(4, 1), "$4");
        assert_eq!(placeholders(2, 0), "");
    }

    #[test]
    fn row_locks_are_postgres_only() {
        use DatabaseBackend::{Postgres, Sqlite};
        assert_eq!(for_update().sql(Postgres), " FOR UPDATE");
        assert_eq!(for_update().of("d").sql(Postgres), " FOR UPDATE OF d");
        assert_eq!(
            for_update().skip_locked().sql(Postgres),
            " FOR UPDATE SKIP LOCKED"
        );
        assert_eq!(for_update().of("w").skip_locked().sql(Sqlite), "");
    }
}
