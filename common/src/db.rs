//! Database connections shared by every service: SQLite (embedded default) and PostgreSQL.
//!
//! Services write most queries as SQL through SeaORM's `ConnectionTrait`, with `$1`-style
//! placeholders; [`Db::stmt`] rewrites them to SQLite's `?1` form, which has the same meaning
//! (see [`crate::sql`]).

use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, DbErr,
    Statement, Value,
};
use sea_orm_migration::MigratorTrait;

// Statement helpers live in `sql`; services have always found these two here.
pub use crate::reads::ReadPool;
pub use crate::sql::{now_ms_sql, stmt};

/// How long a call waits for a pooled PostgreSQL connection, by default, before it fails with
/// UNAVAILABLE: long enough for a busy pool to free one, short enough that a call during an
/// outage answers at once instead of hanging.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The shortest wait for SQLite's connection. A process has one SQLite connection and it is
/// the queue of writers: waiting for it is the normal way writes take turns, not an outage,
/// and a local file does not go away the way a server does.
const SQLITE_MIN_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a pooled connection may sit idle before it is pinged on its next use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(30);

/// How a service's connection pool is sized and how long calls wait for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    /// Most connections open at once (SQLite always uses one).
    pub max_connections: u32,
    /// How long a call waits for a connection (opening one included) before it fails with
    /// UNAVAILABLE. SQLite waits at least 30 seconds, its writers' turn.
    pub acquire_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
        }
    }
}

/// Refuses URLs of backends Ebb does not run on.
pub fn validate_url(url: &str) -> Result<(), String> {
    if url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
    {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not supported; use sqlite://FILE?mode=rwc or postgres://USER@HOST/DB",
            redact(url)
        ))
    }
}

/// Hides a password in a URL for logs and errors.
///
/// Works on the raw text, not on what a URL parser makes of it: a password with an unencoded
/// `/`, `?`, `#` or `@` does not parse, and is exactly what must not be shown. The user
/// information ends at the last `@`, so everything from the first `:` after the scheme up to
/// it is hidden, as is the value of a `password=` query parameter. When in doubt it hides too
/// much rather than too little.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|s| s + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let mut out = match rest.rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    };
    for key in ["password=", "passwd=", "pass="] {
        let mut from = 0;
        while let Some(i) = out[from..].to_ascii_lowercase().find(key) {
            let start = from + i + key.len();
            let preceded = out[..from + i].ends_with(['?', '&']);
            let end = out[start..].find('&').map_or(out.len(), |e| start + e);
            if preceded {
                out.replace_range(start..end, "***");
                from = start + 3;
            } else {
                from = start;
            }
        }
    }
    out
}

/// The password of `url` as written (between the first `:` after the scheme and the last `@`,
/// or a `password=` parameter), for scrubbing it from messages that quote it.
fn raw_passwords(url: &str) -> Vec<&str> {
    let mut found = Vec::new();
    if let Some(scheme_end) = url.find("://").map(|s| s + 3) {
        let rest = &url[scheme_end..];
        if let Some(at) = rest.rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            found.push(&rest[colon + 1..at]);
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=')
                && matches!(
                    k.to_ascii_lowercase().as_str(),
                    "password" | "passwd" | "pass"
                )
            {
                found.push(v);
            }
        }
    }
    found.retain(|p| !p.is_empty());
    found
}

/// `text` (an error message about connecting to `url`) with the URL's password hidden,
/// wherever and however the message quotes it.
pub fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact(url));
    for password in raw_passwords(url) {
        out = out.replace(password, "***");
        // Parsers quote the part after a `/` as a path or the part before as a port.
        for part in password.split(['/', '?', '#', '@']) {
            if part.len() >= 4 {
                out = out.replace(part, "***");
            }
        }
    }
    out
}

/// A service's connection pool and the dialect it speaks.
#[derive(Clone, Debug)]
pub struct Db {
    /// The pool: every write and every transaction.
    pub conn: DatabaseConnection,
    /// Reads outside a transaction. On a SQLite file, a pool of read-only connections beside
    /// the one writer: in WAL mode they read the last commit while the writer writes, so reads
    /// scale with cores and never queue behind writes. On PostgreSQL the same pool as `conn`,
    /// with up to half of its connections kept between reads (see [`ReadPool`]).
    pub read: ReadPool,
    url: String,
}

impl Db {
    /// Connects with `max_connections` and the default acquire timeout, creating the SQLite
    /// file and its directory when needed.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbErr> {
        Self::connect_with(
            url,
            &PoolOptions {
                max_connections,
                ..PoolOptions::default()
            },
        )
        .await
    }

    /// Connects with `pool`, creating the SQLite file and its directory when needed.
    pub async fn connect_with(url: &str, pool: &PoolOptions) -> Result<Self, DbErr> {
        Self::open(url, pool, false).await
    }

    /// A pool that connects on first use, so that it exists while the database does not
    /// answer (readiness and error tests).
    pub async fn connect_lazy(url: &str, pool: &PoolOptions) -> Result<Self, DbErr> {
        Self::open(url, pool, true).await
    }

    async fn open(url: &str, pool: &PoolOptions, lazy: bool) -> Result<Self, DbErr> {
        validate_url(url).map_err(DbErr::Custom)?;
        Self::open_checked(url, pool, lazy).await.map_err(|e| {
            let text = e.to_string();
            let scrubbed = scrub(&text, url);
            if scrubbed == text {
                e
            } else {
                DbErr::Custom(scrubbed)
            }
        })
    }

    async fn open_checked(url: &str, pool: &PoolOptions, lazy: bool) -> Result<Self, DbErr> {
        if let Some(path) = sqlite_path(url) {
            let path = std::path::Path::new(&path);
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                crate::private_files::private_dir(dir, false)
                    .map_err(|e| DbErr::Custom(format!("cannot create {}: {e}", dir.display())))?;
            }
            crate::private_files::private_sqlite_files(path).map_err(|e| {
                DbErr::Custom(format!("cannot make {} private: {e}", path.display()))
            })?;
        }
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .max_connections(pool.max_connections.max(1))
            .min_connections(if lazy { 0 } else { 1 })
            .connect_lazy(lazy)
            // SeaORM gives sqlx one timeout for connecting and acquiring: the acquire timeout
            // bounds both, so an unreachable server fails a call within it.
            .acquire_timeout(pool.acquire_timeout)
            // A connection that was busy a moment ago is used as it is: pinging on every
            // acquire (sqlx's default) is a second round trip for every statement. One idle
            // long enough for a server, proxy or firewall to have dropped it is pinged first.
            .test_before_acquire_if_idle_for(PING_IF_IDLE_FOR)
            .sqlx_logging(false);
        if url.starts_with("sqlite:") {
            // SQLite has one writer at a time, and a deferred transaction that upgrades to a
            // write lock fails at once instead of waiting when another connection wrote in
            // between. One connection per process serializes writes without such failures.
            options
                .max_connections(1)
                .acquire_timeout(pool.acquire_timeout.max(SQLITE_MIN_ACQUIRE_TIMEOUT));
        }
        let conn = Database::connect(options).await?;
        let mut db = Self {
            read: ReadPool::keeping(conn.clone(), (pool.max_connections / 2) as usize),
            conn,
            url: url.to_owned(),
        };
        if db.backend() == DatabaseBackend::Sqlite {
            for pragma in [
                "PRAGMA journal_mode = WAL",
                "PRAGMA busy_timeout = 10000",
                "PRAGMA synchronous = NORMAL",
                "PRAGMA foreign_keys = ON",
            ] {
                db.conn.execute_unprepared(pragma).await?;
            }
            if let Some(read_url) = sqlite_read_only_url(url) {
                // Opened on first use and closed when idle, so an idle service holds only its
                // writer. The file is in WAL mode already (above), which read-only connections
                // need to read beside the writer.
                let readers = std::thread::available_parallelism()
                    .map_or(2, |n| n.get())
                    .clamp(2, SQLITE_MAX_READERS) as u32;
                let mut options = ConnectOptions::new(read_url);
                options
                    .max_connections(readers)
                    .min_connections(0)
                    .connect_lazy(true)
                    .idle_timeout(Duration::from_secs(60))
                    .test_before_acquire_if_idle_for(PING_IF_IDLE_FOR)
                    .acquire_timeout(pool.acquire_timeout.max(SQLITE_MIN_ACQUIRE_TIMEOUT))
                    .sqlx_logging(false);
                db.read = ReadPool::plain(Database::connect(options).await?);
            }
        }
        Ok(db)
    }

    /// Runs the service's migrations.
    ///
    /// On PostgreSQL, replicas starting together on an empty database would race to create the
    /// same tables; a session advisory lock, keyed by the migration table's name, lets one
    /// migrate while the others wait and then find nothing left to do.
    pub async fn migrate<M: MigratorTrait>(&self) -> Result<(), DbErr> {
        if self.backend() != DatabaseBackend::Postgres {
            return M::up(&self.conn, None).await;
        }
        let mut options = ConnectOptions::new(self.url.clone());
        options
            .max_connections(1)
            .min_connections(1)
            .sqlx_logging(false);
        let session = Database::connect(options).await?;
        let key = M::migration_table_name().to_string();
        let lock = |sql: &str| {
            Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                sql,
                [Value::from(key.clone())],
            )
        };
        session
            .execute_raw(lock("SELECT pg_advisory_lock(hashtext($1))"))
            .await?;
        let result = M::up(&session, None).await;
        let unlocked = session
            .execute_raw(lock("SELECT pg_advisory_unlock(hashtext($1))"))
            .await;
        let _ = session.close().await;
        result?;
        unlocked.map(|_| ())
    }

    /// Closes the pool, once every connection has come back to it (kept readers included).
    pub async fn close(&self) -> Result<(), DbErr> {
        self.read.release_kept();
        self.conn.close_by_ref().await
    }

    /// The dialect.
    pub fn backend(&self) -> DatabaseBackend {
        self.conn.get_database_backend()
    }

    /// A statement in this dialect from `$n`-placeholder SQL.
    pub fn stmt(&self, sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
        stmt(self.backend(), sql, values)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        self.conn.ping().await.is_ok()
    }

    /// Whether the database answers within `timeout` (waiting for a pooled connection
    /// included).
    pub async fn ping_within(&self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.conn.ping()).await,
            Ok(Ok(()))
        )
    }

    /// The URL this pool connects to, password hidden.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// Whether `other` connects to the same database.
    pub fn same_database(&self, other: &Db) -> bool {
        self.url == other.url
    }
}

/// Most read-only connections to one SQLite file.
const SQLITE_MAX_READERS: usize = 8;

/// The URL of read-only connections to the SQLite file `url` names; `None` for an in-memory
/// database, whose connections would each see a database of their own.
fn sqlite_read_only_url(url: &str) -> Option<String> {
    sqlite_path(url)?;
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("mode="))
        .collect();
    params.push("mode=ro");
    Some(format!("{base}?{}", params.join("&")))
}

fn sqlite_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        None
    } else {
        Some(path.to_owned())
    }
}

/// Whether an error is a unique-constraint violation.
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// Databases for this crate's tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A fresh PostgreSQL database on the server of `EBB_TEST_DATABASE_URL`, dropped by
    /// [`FreshPostgres::drop`].
    pub(crate) struct FreshPostgres {
        /// A pool on the new database.
        pub db: Db,
        server: String,
        name: String,
    }

    impl FreshPostgres {
        /// `None`, after saying so, when `EBB_TEST_DATABASE_URL` names no PostgreSQL server.
        pub(crate) async fn create(test: &str) -> Option<Self> {
            let Some(server) = std::env::var("EBB_TEST_DATABASE_URL")
                .ok()
                .filter(|u| u.starts_with("postgres"))
            else {
                eprintln!(
                    "skipping the PostgreSQL part of {test}: EBB_TEST_DATABASE_URL is not set"
                );
                return None;
            };
            let name = format!("ebb_common_t_{}", uuid::Uuid::new_v4().simple());
            let admin = Database::connect(server.as_str())
                .await
                .expect("connect to EBB_TEST_DATABASE_URL");
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create the test database");
            let _ = admin.close().await;
            let url = with_database(&server, &name);
            let db = Db::connect(&url, 4)
                .await
                .expect("connect to the test database");
            Some(Self { db, server, name })
        }

        /// Closes the pool and drops the database.
        pub(crate) async fn drop(self) {
            let _ = self.db.close().await;
            if let Ok(admin) = Database::connect(self.server.as_str()).await {
                let _ = admin
                    .execute_unprepared(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        self.name
                    ))
                    .await;
                let _ = admin.close().await;
            }
        }
    }

    /// `url` with its database name replaced by `name`.
    pub(crate) fn with_database(url: &str, name: &str) -> String {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let host_start = base.find("://").map_or(0, |i| i + 3);
        let host_end = base[host_start..]
            .find('/')
            .map_or(base.len(), |i| host_start + i);
        let mut out = format!("{}/{name}", &base[..host_end]);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_redacted() {
        assert!(validate_url("sqlite://x.db?mode=rwc").is_ok());
        assert!(validate_url("postgres://u@h/db").is_ok());
        assert!(validate_url("mysql://u@h/db").is_err());
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    }

    #[test]
    fn passwords_the_parser_cannot_read_are_redacted_too() {
        for (url, shown) in [
            ("postgres://u:pa/ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p@s/s?x@h:5/db", "postgres://u:***@h:5/db"),
            (
                "postgres://u:pa#ss@h/db?sslmode=disable",
                "postgres://u:***@h/db?sslmode=disable",
            ),
            (
                "postgres://h/db?user=u&password=s/e&x=1",
                "postgres://h/db?user=u&password=***&x=1",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("sqlite://x.db?mode=rwc", "sqlite://x.db?mode=rwc"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
        let url = "postgres://u:hunter2/secret@h/db";
        let message = format!("invalid port number in {url}: `hunter2`, path `/secret@h/db`");
        let scrubbed = scrub(&message, url);
        assert!(!scrubbed.contains("hunter2"), "{scrubbed}");
        assert!(!scrubbed.contains("secret"), "{scrubbed}");
    }

    #[test]
    fn sqlite_readers_open_the_same_file_read_only() {
        assert_eq!(
            sqlite_read_only_url("sqlite://data/l.db?mode=rwc").as_deref(),
            Some("sqlite://data/l.db?mode=ro")
        );
        assert_eq!(
            sqlite_read_only_url("sqlite:l.db").as_deref(),
            Some("sqlite:l.db?mode=ro")
        );
        assert_eq!(sqlite_read_only_url("sqlite::memory:"), None);
    }

    #[tokio::test]
    async fn sqlite_reads_see_commits_and_do_not_wait_for_an_open_write() {
        use sea_orm::TransactionTrait;
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = Db::connect(&url, 4).await.expect("connect");
        db.conn
            .execute_unprepared("CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (1)")
            .await
            .expect("write");
        let count = |conn: ReadPool| async move {
            conn.query_one_raw(Statement::from_string(
                DatabaseBackend::Sqlite,
                "SELECT COUNT(*) AS n FROM t",
            ))
            .await
            .expect("read")
            .expect("row")
            .try_get::<i64>("", "n")
            .expect("n")
        };
        assert_eq!(
            count(db.read.clone()).await,
            1,
            "a commit is visible to readers"
        );
        // A write transaction holds the only writer; readers still answer, with the last commit.
        let txn = db.conn.begin().await.expect("begin");
        txn.execute_unprepared("INSERT INTO t VALUES (2)")
            .await
            .expect("write in a transaction");
        let read = tokio::time::timeout(Duration::from_secs(5), count(db.read.clone()))
            .await
            .expect("a read does not wait for the open write");
        assert_eq!(read, 1);
        txn.commit().await.expect("commit");
        assert_eq!(count(db.read.clone()).await, 2);
        let refused = db.read.execute_unprepared("INSERT INTO t VALUES (3)").await;
        assert!(refused.is_err(), "the read connections are read-only");
    }
}
