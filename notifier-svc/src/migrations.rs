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
        vec![Box::new(Initial), Box::new(FailedIndex)]
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
