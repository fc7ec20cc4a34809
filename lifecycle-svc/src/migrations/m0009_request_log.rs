use sea_orm::{ConnectionTrait, DatabaseBackend};
use sea_orm_migration::prelude::*;

/// The request log in the layout every service shares (`ebb_common::idempotency`): keyed by
/// the caller's organization, the method and the request id, with a fingerprint and an age
/// that the sweep expires. The old table's entries are not carried over: their fingerprints
/// were computed another way and could not match a retry; a call retried across the upgrade
/// acts again, as one retried after the retention does.
pub struct M0009RequestLog;

impl MigrationName for M0009RequestLog {
    fn name(&self) -> &str {
        "m0009_request_log"
    }
}

const SQLITE: &str = r#"
DROP TABLE request_log;
CREATE TABLE request_log (
    organization_id TEXT NOT NULL,
    method TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response BLOB NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (organization_id, method, request_id)
);
CREATE INDEX request_log_by_age ON request_log (created_ms);
"#;

const POSTGRES: &str = r#"
DROP TABLE request_log;
CREATE TABLE request_log (
    organization_id TEXT NOT NULL,
    method TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response BYTEA NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (organization_id, method, request_id)
);
CREATE INDEX request_log_by_age ON request_log (created_ms);
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0009RequestLog {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(match db.get_database_backend() {
            DatabaseBackend::Sqlite => SQLITE,
            _ => POSTGRES,
        })
        .await?;
        Ok(())
    }
}
