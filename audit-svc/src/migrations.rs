//! audit-svc's schema. Timestamps are epoch milliseconds (BIGINT) on both backends.
//!
//! The invariants are the database's to enforce:
//! * append-only: triggers refuse UPDATE and DELETE of `audit_events` (and TRUNCATE on
//!   PostgreSQL, where they are `ENABLE ALWAYS` so that `session_replication_role = replica`
//!   does not bypass them);
//! * one position per event: `(organization_id, sequence)` is the primary key;
//! * gapless: every event after the first names its predecessor through a foreign key, so an
//!   event can only be inserted right after an existing one.

use sea_orm::{ConnectionTrait, DatabaseBackend};
use sea_orm_migration::prelude::*;

/// Applies audit-svc's migrations in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migration_table_name() -> DynIden {
        "audit_migrations".into_iden()
    }

    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(M0001Chain)]
    }
}

/// The events table with its chain heads and append-only triggers.
pub struct M0001Chain;

impl MigrationName for M0001Chain {
    fn name(&self) -> &str {
        "m0001_chain"
    }
}

const TABLES: &str = r#"
-- One row per organization: the head of its chain. Appends lock it (FOR UPDATE on PostgreSQL)
-- so that one organization's appends are serialized while other organizations proceed.
CREATE TABLE audit_chains (
    organization_id TEXT PRIMARY KEY,
    head_sequence BIGINT NOT NULL CHECK (head_sequence >= 0),
    head_hash TEXT NOT NULL CHECK (length(head_hash) = 64)
);

CREATE TABLE audit_events (
    organization_id TEXT NOT NULL,
    sequence BIGINT NOT NULL CHECK (sequence >= 1),
    -- NULL for the first event, else sequence - 1: with the foreign key below, an event can
    -- only follow an existing one, so the sequence has no gaps.
    prev_sequence BIGINT CHECK (
        (sequence = 1 AND prev_sequence IS NULL) OR prev_sequence = sequence - 1
    ),
    id TEXT NOT NULL UNIQUE,
    action TEXT NOT NULL,
    subject_type TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    -- RFC 8785 canonical JSON text, exactly as hashed.
    data TEXT NOT NULL,
    occur_time BIGINT NOT NULL,
    record_time BIGINT NOT NULL,
    prev_hash TEXT NOT NULL CHECK (length(prev_hash) = 64),
    hash TEXT NOT NULL CHECK (length(hash) = 64),
    PRIMARY KEY (organization_id, sequence),
    FOREIGN KEY (organization_id, prev_sequence) REFERENCES audit_events (organization_id, sequence)
);
CREATE INDEX audit_events_action ON audit_events (organization_id, action, sequence);
CREATE INDEX audit_events_subject ON audit_events (organization_id, subject_type, subject_id, sequence);
CREATE INDEX audit_events_actor ON audit_events (organization_id, actor, sequence);
CREATE INDEX audit_events_occur ON audit_events (organization_id, occur_time, sequence);
"#;

const SQLITE_TRIGGERS: &str = r#"
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused');
END;
"#;

const POSTGRES_TRIGGERS: &str = r#"
CREATE FUNCTION audit_events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();
-- ALWAYS: also in replication-replica sessions, which skip ordinary triggers.
ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_no_update;
ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_no_delete;
ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_no_truncate;
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0001Chain {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let triggers = match db.get_database_backend() {
            DatabaseBackend::Sqlite => SQLITE_TRIGGERS,
            _ => POSTGRES_TRIGGERS,
        };
        db.execute_unprepared(TABLES).await?;
        db.execute_unprepared(triggers).await?;
        Ok(())
    }
}
