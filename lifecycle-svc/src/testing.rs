//! What unit tests over a real (in-memory SQLite) database share.

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Statement};
use sea_orm_migration::MigratorTrait;

use crate::migrations::Migrator;

/// A fresh in-memory database with foreign keys enforced, migrated up to migration `up_to`
/// (all of them with `None`).
pub async fn database(up_to: Option<u32>) -> DatabaseConnection {
    let mut options = ConnectOptions::new("sqlite::memory:");
    options
        .max_connections(1)
        .min_connections(1)
        .sqlx_logging(false);
    let db = Database::connect(options).await.expect("connect");
    db.execute_unprepared("PRAGMA foreign_keys = ON")
        .await
        .expect("pragma");
    Migrator::up(&db, up_to).await.expect("migrate");
    db
}

/// Organization `org`, entity kind `tenant` and a `tenant` entity for each of `entities`
/// (its id and name): the rows an action run needs.
pub fn org_and_entities(entities: &[&str]) -> String {
    let rows: Vec<String> = entities
        .iter()
        .map(|e| format!("('{e}', 'org', 'tenant', '{e}', 'active', '{{}}', 0, 0)"))
        .collect();
    format!(
        "INSERT INTO organizations (id, name, reminder_lead_times_ms, destroy_retry_limit, max_inactivity_ms, \
         protected_labels, created_at, updated_at) VALUES ('org', 'org', '[]', 2, 1000, '[]', 0, 0); \
         INSERT INTO entity_kinds (name, definition, source, updated_at) VALUES ('tenant', '{{}}', 'api', 0); \
         INSERT INTO entities (id, organization_id, kind, name, state, attributes, created_at, updated_at) VALUES {};",
        rows.join(", ")
    )
}

/// The number a query answers.
pub async fn number(db: &DatabaseConnection, query: &str) -> i64 {
    db.query_one_raw(Statement::from_string(db.get_database_backend(), query))
        .await
        .expect("query")
        .expect("a row")
        .try_get_by_index::<i64>(0)
        .expect("a number")
}
