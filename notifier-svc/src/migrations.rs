//! notifier-svc's schema. Plain SQL that SQLite and PostgreSQL both accept; times are epoch
//! milliseconds, flags are 0/1 integers.

use sea_orm_migration::prelude::*;

/// Applies notifier-svc's migrations in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migration_table_name() -> DynIden {
        "notifier_migrations".into_iden()
    }

    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(Initial),
            Box::new(FailedIndex),
            Box::new(RequestLog),
        ]
    }
}

struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m0001_configurations_events_deliveries"
    }
}

const INITIAL: &[&str] = &[
    "CREATE TABLE notification_configurations (
        id TEXT PRIMARY KEY,
        organization_id TEXT NOT NULL,
        name TEXT NOT NULL,
        scope_type TEXT NOT NULL CHECK (scope_type IN ('organization', 'project', 'workspace', 'entity')),
        scope_id TEXT NOT NULL,
        destination_type TEXT NOT NULL CHECK (destination_type IN ('webhook', 'slack', 'email', 'teams')),
        url TEXT NOT NULL,
        email_addresses TEXT NOT NULL,
        event_types TEXT NOT NULL,
        enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)),
        disabled_reason TEXT NOT NULL,
        verify_ms BIGINT,
        last_verification_error TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        CHECK ((scope_type = 'organization') = (scope_id = ''))
    )",
    "CREATE INDEX notification_configurations_by_org
        ON notification_configurations (organization_id, created_ms, id)",
    "CREATE TABLE signing_secrets (
        id TEXT PRIMARY KEY,
        configuration_id TEXT NOT NULL REFERENCES notification_configurations (id) ON DELETE CASCADE,
        secret TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT
    )",
    "CREATE INDEX signing_secrets_by_configuration ON signing_secrets (configuration_id)",
    "CREATE TABLE events (
        id TEXT PRIMARY KEY,
        organization_id TEXT NOT NULL,
        type TEXT NOT NULL,
        subject_type TEXT NOT NULL,
        subject_id TEXT NOT NULL,
        subject_name TEXT NOT NULL,
        actor TEXT NOT NULL,
        project_id TEXT NOT NULL,
        workspace_id TEXT NOT NULL,
        entity_id TEXT NOT NULL,
        data TEXT NOT NULL,
        occur_ms BIGINT NOT NULL,
        received_ms BIGINT NOT NULL
    )",
    "CREATE TABLE deliveries (
        id TEXT PRIMARY KEY,
        message_id TEXT NOT NULL UNIQUE,
        event_id TEXT NOT NULL REFERENCES events (id),
        event_type TEXT NOT NULL,
        configuration_id TEXT NOT NULL,
        organization_id TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'cancelled')),
        attempt_count INTEGER NOT NULL,
        cycle_attempts INTEGER NOT NULL,
        redelivery INTEGER NOT NULL,
        next_attempt_ms BIGINT NOT NULL,
        lease_owner TEXT,
        lease_token TEXT,
        lease_expires_ms BIGINT,
        last_response_status INTEGER NOT NULL,
        last_error TEXT NOT NULL,
        exhausted_event_id TEXT,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        completed_ms BIGINT,
        UNIQUE (event_id, configuration_id)
    )",
    "CREATE INDEX deliveries_due ON deliveries (next_attempt_ms) WHERE status = 'pending'",
    "CREATE INDEX deliveries_by_org ON deliveries (organization_id, created_ms, id)",
    "CREATE INDEX deliveries_by_configuration ON deliveries (configuration_id, status)",
    // One row per attempt; the key makes two attempts with one number impossible.
    "CREATE TABLE delivery_attempts (
        delivery_id TEXT NOT NULL REFERENCES deliveries (id),
        number INTEGER NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('succeeded', 'rejected', 'timed_out', 'unreachable')),
        response_status INTEGER NOT NULL,
        response_headers TEXT NOT NULL,
        response_body TEXT NOT NULL,
        response_body_truncated INTEGER NOT NULL,
        error TEXT NOT NULL,
        started_ms BIGINT NOT NULL,
        duration_ms BIGINT NOT NULL,
        redelivery INTEGER NOT NULL,
        replica TEXT NOT NULL,
        PRIMARY KEY (delivery_id, number)
    )",
    "CREATE TABLE request_ids (
        request_id TEXT PRIMARY KEY,
        method TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        response TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    )",
];

#[async_trait::async_trait]
impl MigrationTrait for Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        for sql in INITIAL {
            conn.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        for table in [
            "request_ids",
            "delivery_attempts",
            "deliveries",
            "events",
            "signing_secrets",
            "notification_configurations",
        ] {
            conn.execute_unprepared(&format!("DROP TABLE {table}"))
                .await?;
        }
        Ok(())
    }
}

/// Failed deliveries by when they failed, so that the metrics count them at every scrape
/// without reading the whole table.
struct FailedIndex;

impl MigrationName for FailedIndex {
    fn name(&self) -> &str {
        "m0002_failed_deliveries_index"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for FailedIndex {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX deliveries_failed ON deliveries (completed_ms) WHERE status = 'failed'",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX deliveries_failed")
            .await?;
        Ok(())
    }
}

/// Request ids keyed by the caller's organization as well, in the layout every service shares
/// (`ebb_common::idempotency`), with an index for sweeping expired ones.
///
/// The old table kept request ids forever under the method's short name, keyed by the id
/// alone. Its entries of the last day move over under the method's full path and the empty
/// organization of cross-organization callers (it did not record the caller); a retry by an
/// organization's token of a call made before the upgrade is therefore taken as new.
struct RequestLog;

impl MigrationName for RequestLog {
    fn name(&self) -> &str {
        "m0003_request_log"
    }
}

const REQUEST_LOG_SQLITE: &[&str] = &[
    "CREATE TABLE request_log (
        organization_id TEXT NOT NULL,
        method TEXT NOT NULL,
        request_id TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        response BLOB NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (organization_id, method, request_id)
    )",
    "CREATE INDEX request_log_by_age ON request_log (created_ms)",
];

const REQUEST_LOG_POSTGRES: &[&str] = &[
    "CREATE TABLE request_log (
        organization_id TEXT NOT NULL,
        method TEXT NOT NULL,
        request_id TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        response BYTEA NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (organization_id, method, request_id)
    )",
    "CREATE INDEX request_log_by_age ON request_log (created_ms)",
];

/// How far back the old table's entries are kept: the request log's default retention.
const CARRIED_OVER_MS: i64 = 24 * 3600 * 1000;

#[async_trait::async_trait]
impl MigrationTrait for RequestLog {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use base64::Engine;
        let conn = manager.get_connection();
        let backend = manager.get_database_backend();
        let statements = match backend {
            sea_orm::DatabaseBackend::Postgres => REQUEST_LOG_POSTGRES,
            _ => REQUEST_LOG_SQLITE,
        };
        for sql in statements {
            conn.execute_unprepared(sql).await?;
        }
        // The old fingerprints hashed the request without its id, the new ones hash it as
        // received; a carried-over entry keeps its old fingerprint, so a retry of it is refused
        // as a different request rather than acted on twice.
        let since = ebb_common::time::now_ms() - CARRIED_OVER_MS;
        let rows = conn
            .query_all_raw(ebb_common::sql::stmt(
                backend,
                "SELECT request_id, method, fingerprint, response, created_ms FROM request_ids \
                 WHERE created_ms >= $1",
                [since.into()],
            ))
            .await?;
        for row in rows {
            let request_id: String = row.try_get("", "request_id")?;
            let method: String = row.try_get("", "method")?;
            let fingerprint: String = row.try_get("", "fingerprint")?;
            let response: String = row.try_get("", "response")?;
            let created_ms: i64 = row.try_get("", "created_ms")?;
            let Ok(response) = base64::engine::general_purpose::STANDARD.decode(response) else {
                continue;
            };
            conn.execute_raw(ebb_common::sql::stmt(
                backend,
                "INSERT INTO request_log \
                 (organization_id, method, request_id, request_hash, response, created_ms) \
                 VALUES ('', $1, $2, $3, $4, $5)",
                [
                    format!("/ebb.notifier.v1.NotifierService/{method}").into(),
                    request_id.into(),
                    fingerprint.into(),
                    response.into(),
                    created_ms.into(),
                ],
            ))
            .await?;
        }
        conn.execute_unprepared("DROP TABLE request_ids").await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        conn.execute_unprepared(
            "CREATE TABLE request_ids (
                request_id TEXT PRIMARY KEY,
                method TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                response TEXT NOT NULL,
                created_ms BIGINT NOT NULL
            )",
        )
        .await?;
        conn.execute_unprepared("DROP TABLE request_log").await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebb_common::db::Db;
    use ebb_common::idempotency::{self, RequestKey};
    use ebb_proto::notifier::v1 as pb;

    /// The migrated table is the one the shared request log reads and writes, and entries of
    /// the old one move over.
    #[tokio::test]
    async fn the_request_log_is_the_shared_one() {
        let db = Db::connect("sqlite::memory:", 1).await.expect("sqlite");
        let conn = &db.conn;
        // The schema before this migration, with one recent entry.
        Migrator::up(conn, Some(2))
            .await
            .expect("first two migrations");
        use base64::Engine;
        let old = pb::DeleteNotificationConfigurationResponse {
            deliveries_cancelled: 3,
        };
        conn.execute_raw(db.stmt(
            "INSERT INTO request_ids VALUES ('r-old', 'DeleteNotificationConfiguration', 'f', $1, $2)",
            [
                base64::engine::general_purpose::STANDARD
                    .encode(prost::Message::encode_to_vec(&old))
                    .into(),
                ebb_common::time::now_ms().into(),
            ],
        ))
        .await
        .expect("old entry");
        Migrator::up(conn, None).await.expect("migrate");

        let carried: Option<String> = conn
            .query_one_raw(db.stmt(
                "SELECT method FROM request_log WHERE organization_id = '' AND request_id = 'r-old'",
                [],
            ))
            .await
            .expect("query")
            .map(|r| r.try_get("", "method").expect("method"));
        assert_eq!(
            carried.as_deref(),
            Some("/ebb.notifier.v1.NotifierService/DeleteNotificationConfiguration")
        );

        let request = pb::DeleteNotificationConfigurationRequest {
            request_id: "r1".into(),
            id: "nc_1".into(),
        };
        let key = RequestKey::new(
            "org_a",
            "/ebb.notifier.v1.NotifierService/DeleteNotificationConfiguration",
            "r1",
            &request,
        )
        .expect("key");
        let response = pb::DeleteNotificationConfigurationResponse {
            deliveries_cancelled: 2,
        };
        idempotency::remember(conn, key.as_ref(), &response, 1_000)
            .await
            .expect("remember");
        let replayed: Option<pb::DeleteNotificationConfigurationResponse> =
            idempotency::replay(conn, key.as_ref())
                .await
                .expect("replay");
        assert_eq!(replayed, Some(response));
        assert_eq!(idempotency::sweep(conn, 2_000).await.expect("sweep"), 1);
    }
}
