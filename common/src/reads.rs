//! Reads outside a transaction ([`crate::db::Db::read`]).
//!
//! sqlx checks every PostgreSQL connection that goes back to its pool with a round trip of its
//! own (a `Sync` answered by `ReadyForQuery`), so a point select through the pool costs two
//! round trips, and the server as much work for the check as for the select. On PostgreSQL a
//! [`ReadPool`] therefore keeps its connections out of the pool between statements: a
//! statement that completed leaves its connection ready for the next one, which uses it as it
//! is. Only such a connection is kept; one whose statement failed or was cancelled goes back to
//! sqlx's pool, which checks it (and closes it if broken), as does one idle long enough for a
//! server, proxy or firewall to have dropped it. A read that fails because the connection broke
//! is retried once on a fresh one. Reads use at most `max` connections at once and wait for
//! one another beyond that, so they never take the connections writes need. Elsewhere
//! (SQLite's read-only connections) it is the plain pool.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{self, Postgres};
use sea_orm::{
    ConnAcquireErr, ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, ExecResult,
    QueryResult, RuntimeErr, Statement,
};
use sea_query_sqlx::SqlxValues;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A kept connection idle this long goes back to the pool, which pings it before its next use.
const KEEP_IF_IDLE_FOR_LESS_THAN: Duration = Duration::from_secs(30);

/// The pool of reads outside a transaction; cheap to clone.
#[derive(Clone, Debug)]
pub struct ReadPool {
    conn: DatabaseConnection,
    kept: Option<Arc<Kept>>,
}

#[derive(Debug)]
struct Kept {
    idle: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
    /// One permit per connection reads may use at once: reads wait for one another beyond
    /// that rather than take the connections that writes need.
    permits: Arc<Semaphore>,
    /// How long a read waits for a permit, as long as for a connection of the pool.
    wait: Duration,
}

impl Kept {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(PoolConnection<Postgres>, Instant)>> {
        // A panic while holding the lock cannot leave the list half-changed.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection in use and its permit. Dropped without [`Lease::finish`] (an error or a
/// cancelled call), the connection goes back to the pool, which checks it.
struct Lease<'a> {
    conn: PoolConnection<Postgres>,
    kept: &'a Kept,
    _permit: OwnedSemaphorePermit,
}

impl Lease<'_> {
    /// The statement completed: a kept connection is ready for the next one, unless the pool
    /// is closing (it waits for every connection to come back).
    fn finish(self, closing: bool) {
        if !closing {
            self.kept.idle().push((self.conn, Instant::now()));
        }
    }
}

impl ReadPool {
    /// Reads through `conn` as it is.
    pub fn plain(conn: DatabaseConnection) -> Self {
        Self { conn, kept: None }
    }

    /// Reads through the PostgreSQL pool `conn` on at most `max` of its connections at once,
    /// kept out of it between statements (the plain pool with a `max` of 0). Keep fewer than
    /// the pool has, so that writes always find the rest.
    pub fn keeping(conn: DatabaseConnection, max: usize) -> Self {
        let wait = conn
            .get_database_backend()
            .eq(&DatabaseBackend::Postgres)
            .then(|| {
                conn.get_postgres_connection_pool()
                    .options()
                    .get_acquire_timeout()
            });
        let kept = wait.filter(|_| max > 0).map(|wait| {
            Arc::new(Kept {
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(max)),
                wait,
            })
        });
        Self { conn, kept }
    }

    /// Gives every idle kept connection back to the pool: before closing it, which waits for
    /// all of its connections.
    pub fn release_kept(&self) {
        if let Some(kept) = &self.kept {
            kept.idle().clear();
        }
    }

    /// A connection for one statement: an idle kept one, else a fresh one from the pool, once
    /// fewer than `max` reads are running.
    async fn lease<'a>(&self, kept: &'a Kept) -> Result<Lease<'a>, DbErr> {
        let permit = tokio::time::timeout(kept.wait, kept.permits.clone().acquire_owned())
            .await
            .map_err(|_| DbErr::ConnectionAcquire(ConnAcquireErr::Timeout))?
            .map_err(|_| DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed))?;
        loop {
            let popped = kept.idle().pop();
            match popped {
                Some((conn, since)) if since.elapsed() < KEEP_IF_IDLE_FOR_LESS_THAN => {
                    return Ok(Lease {
                        conn,
                        kept,
                        _permit: permit,
                    });
                }
                // Back to the pool, which pings it before handing it out again.
                Some(_) => {}
                None => break,
            }
        }
        let conn = self
            .conn
            .get_postgres_connection_pool()
            .acquire()
            .await
            .map_err(acquire_err)?;
        Ok(Lease {
            conn,
            kept,
            _permit: permit,
        })
    }

    async fn fetch(&self, kept: &Kept, stmt: &Statement, all: bool) -> Result<Fetched, DbErr> {
        let mut retried = false;
        loop {
            let mut lease = self.lease(kept).await?;
            let query = sqlx::query_with(
                sqlx::AssertSqlSafe(stmt.sql.as_str()),
                SqlxValues(
                    stmt.values
                        .clone()
                        .unwrap_or_else(|| sea_orm::sea_query::Values(Vec::new())),
                ),
            );
            let result = if all {
                query.fetch_all(&mut *lease.conn).await.map(Fetched::All)
            } else {
                query
                    .fetch_optional(&mut *lease.conn)
                    .await
                    .map(Fetched::One)
            };
            match result {
                Ok(fetched) => {
                    lease.finish(self.conn.get_postgres_connection_pool().is_closed());
                    return Ok(fetched);
                }
                // A kept connection the server or the network dropped while it sat idle: the
                // read is retried once on another.
                Err(e) if !retried && is_broken(&e) => {
                    drop(lease);
                    retried = true;
                }
                Err(e) => return Err(DbErr::Query(RuntimeErr::SqlxError(Arc::new(e)))),
            }
        }
    }
}

/// Whether `e` says the connection itself is gone, rather than the statement failed.
fn is_broken(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_)
    )
}

fn acquire_err(e: sqlx::Error) -> DbErr {
    match e {
        sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
        sqlx::Error::PoolClosed => DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
        other => DbErr::Conn(RuntimeErr::SqlxError(Arc::new(other))),
    }
}

enum Fetched {
    One(Option<sqlx::postgres::PgRow>),
    All(Vec<sqlx::postgres::PgRow>),
}

#[async_trait::async_trait]
impl ConnectionTrait for ReadPool {
    fn get_database_backend(&self) -> DatabaseBackend {
        self.conn.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.conn.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.conn.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let Some(kept) = &self.kept else {
            return self.conn.query_one_raw(stmt).await;
        };
        match self.fetch(kept, &stmt, false).await? {
            Fetched::One(row) => Ok(row.map(QueryResult::from)),
            Fetched::All(rows) => Ok(rows.into_iter().next().map(QueryResult::from)),
        }
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let Some(kept) = &self.kept else {
            return self.conn.query_all_raw(stmt).await;
        };
        match self.fetch(kept, &stmt, true).await? {
            Fetched::One(row) => Ok(row.into_iter().map(QueryResult::from).collect()),
            Fetched::All(rows) => Ok(rows.into_iter().map(QueryResult::from).collect()),
        }
    }
}
