//! Where cases run: a fresh in-memory SQLite database each, or a fresh PostgreSQL
//! database cloned from one migrated template; every one dropped at the end.

use ebb_common::db::Db;
use sea_orm::{ConnectionTrait, Database};

use super::world::unexpected;

/// Where cases run.
pub(super) enum Backend {
    Sqlite,
    /// A PostgreSQL server and the migrated template each case's database is cloned from.
    Postgres {
        server: String,
        template: String,
    },
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres { .. } => "PostgreSQL",
        })
    }
}

/// The PostgreSQL server of `EBB_TEST_DATABASE_URL`, if it names one.
pub(super) fn postgres_server() -> Option<String> {
    std::env::var("EBB_TEST_DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[host_start..]
        .find('/')
        .map_or(base.len(), |i| host_start + i);
    match query {
        Some(q) => format!("{}/{name}?{q}", &base[..host_end]),
        None => format!("{}/{name}", &base[..host_end]),
    }
}

async fn admin_sql(server: &str, sql: &str) -> Result<(), String> {
    let admin = Database::connect(server)
        .await
        .map_err(|e| unexpected("connecting to EBB_TEST_DATABASE_URL", e))?;
    let done = admin.execute_unprepared(sql).await.map(|_| ());
    let _ = admin.close().await;
    done.map_err(|e| unexpected(sql, e))
}

/// A PostgreSQL database of the test, dropped when this goes out of scope — on a thread of its
/// own, so that it works inside and outside a runtime and after a panic.
pub(super) struct ScratchDatabase {
    server: String,
    name: String,
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let (server, sql) = (
            self.server.clone(),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            if let Err(e) = rt.block_on(admin_sql(&server, &sql)) {
                eprintln!("safety model: {e}");
            }
        })
        .join();
    }
}

/// A migrated database for one case, and what drops it.
pub(super) async fn case_database(
    backend: &Backend,
) -> Result<(Db, Option<ScratchDatabase>), String> {
    match backend {
        Backend::Sqlite => {
            let db = Db::connect("sqlite::memory:", 1)
                .await
                .map_err(|e| unexpected("opening SQLite", e))?;
            db.migrate::<crate::migrations::Migrator>()
                .await
                .map_err(|e| unexpected("migrating", e))?;
            Ok((db, None))
        }
        Backend::Postgres { server, template } => {
            let name = format!("ebb_safety_{}", uuid::Uuid::new_v4().simple());
            admin_sql(
                server,
                &format!("CREATE DATABASE {name} TEMPLATE {template}"),
            )
            .await?;
            let dropped = ScratchDatabase {
                server: server.clone(),
                name: name.clone(),
            };
            let db = Db::connect(&with_database(server, &name), 2)
                .await
                .map_err(|e| unexpected("connecting to the case database", e))?;
            Ok((db, Some(dropped)))
        }
    }
}

/// The migrated database every PostgreSQL case is cloned from.
pub(super) struct PostgresTemplate {
    database: ScratchDatabase,
}

impl PostgresTemplate {
    /// The template's database name.
    pub(super) fn name(&self) -> &str {
        &self.database.name
    }

    pub(super) async fn create(server: &str) -> Result<Self, String> {
        let name = format!("ebb_safety_template_{}", uuid::Uuid::new_v4().simple());
        admin_sql(server, &format!("CREATE DATABASE {name}")).await?;
        let database = ScratchDatabase {
            server: server.to_owned(),
            name: name.clone(),
        };
        let db = Db::connect(&with_database(server, &name), 1)
            .await
            .map_err(|e| unexpected("connecting to the template", e))?;
        let migrated = db.migrate::<crate::migrations::Migrator>().await;
        // A template must have no connection left when it is cloned.
        let _ = db.conn.close().await;
        migrated.map_err(|e| unexpected("migrating the template", e))?;
        Ok(Self { database })
    }
}
