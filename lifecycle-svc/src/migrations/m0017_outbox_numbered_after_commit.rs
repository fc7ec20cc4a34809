use sea_orm::DatabaseBackend;
use sea_orm_migration::prelude::*;

/// On PostgreSQL a change inserts its events without their organization's number; the relay
/// numbers committed events in one short transaction of its own (`outbox::number`). Numbering
/// inside the change locked the organization's counter until the change committed, so one
/// organization's changes committed one at a time, each waiting for the previous one's flush.
///
/// The database keeps what numbering must not break: a number once given never changes, and
/// numbers are positive. On SQLite, where one writer commits at a time anyway, events are
/// still numbered as they are written and nothing changes.
pub struct M0017OutboxNumberedAfterCommit;

impl MigrationName for M0017OutboxNumberedAfterCommit {
    fn name(&self) -> &str {
        "m0017_outbox_numbered_after_commit"
    }
}

const POSTGRES: &str = r#"
ALTER TABLE outbox ALTER COLUMN org_seq DROP NOT NULL;
ALTER TABLE outbox ADD CONSTRAINT outbox_org_seq_positive CHECK (org_seq > 0);
-- The committed events waiting for their number, oldest first.
CREATE INDEX outbox_unnumbered ON outbox (seq) WHERE org_seq IS NULL;
CREATE FUNCTION outbox_numbered_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.org_seq IS NOT NULL AND NEW.org_seq IS DISTINCT FROM OLD.org_seq THEN
        RAISE EXCEPTION 'outbox event % is number % of its organization; a number never changes',
            OLD.id, OLD.org_seq
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER outbox_numbered_once BEFORE UPDATE OF org_seq ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_numbered_once();
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0017OutboxNumberedAfterCommit {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(POSTGRES)
                .await?;
        }
        Ok(())
    }
}
