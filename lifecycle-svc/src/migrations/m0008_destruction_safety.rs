use sea_orm::{ConnectionTrait, DatabaseBackend};
use sea_orm_migration::prelude::*;

/// What destruction safety keeps (AD-12, AD-13): each organization's minimum notice, its
/// blast-radius threshold and a version for optimistic concurrency (the settings' etag); on
/// each workspace the due time of a schedule held back by protection (consumed when it comes,
/// never fired) and the earliest time a policy change may make its inactivity branch due.
pub struct M0008DestructionSafety;

impl MigrationName for M0008DestructionSafety {
    fn name(&self) -> &str {
        "m0008_destruction_safety"
    }
}

const COMMON: &str = r#"
-- NULL: the organization's longest reminder lead time.
ALTER TABLE organizations ADD COLUMN minimum_notice_ms BIGINT CHECK (minimum_notice_ms >= 0);
ALTER TABLE organizations ADD COLUMN confirm_threshold INTEGER NOT NULL DEFAULT 25
    CHECK (confirm_threshold >= 0);
ALTER TABLE organizations ADD COLUMN version BIGINT NOT NULL DEFAULT 0;

-- A schedule that comes due while the workspace is protected is consumed at this time.
ALTER TABLE workspaces ADD COLUMN held_due_at BIGINT;
-- The inactivity branch is never due before this (set by policy changes, cleared by an
-- applied state version).
ALTER TABLE workspaces ADD COLUMN inactivity_not_before BIGINT;

-- Rule: a held schedule exists only on a protected, active workspace; it never coexists with
-- a pending auto-destroy.
CREATE INDEX workspaces_held_due ON workspaces (held_due_at) WHERE held_due_at IS NOT NULL;
"#;

const SQLITE: &str = r#"
CREATE TRIGGER workspaces_held_only_when_protected_insert BEFORE INSERT ON workspaces
WHEN NEW.held_due_at IS NOT NULL
    AND (NEW.next_auto_destroy_at IS NOT NULL
         OR (NEW.protected = 0 AND NEW.protected_by_policy = 0))
BEGIN
    SELECT RAISE(ABORT, 'a held schedule needs a protected workspace without a pending auto-destroy');
END;
CREATE TRIGGER workspaces_held_only_when_protected_update BEFORE UPDATE ON workspaces
WHEN NEW.held_due_at IS NOT NULL
    AND (NEW.next_auto_destroy_at IS NOT NULL
         OR (NEW.protected = 0 AND NEW.protected_by_policy = 0))
BEGIN
    SELECT RAISE(ABORT, 'a held schedule needs a protected workspace without a pending auto-destroy');
END;
"#;

const POSTGRES: &str = r#"
ALTER TABLE workspaces ADD CONSTRAINT workspaces_held_only_when_protected CHECK (
    held_due_at IS NULL
    OR (next_auto_destroy_at IS NULL AND (protected OR protected_by_policy))
);
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0008DestructionSafety {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(COMMON).await?;
        let specific = match db.get_database_backend() {
            DatabaseBackend::Sqlite => SQLITE,
            _ => POSTGRES,
        };
        db.execute_unprepared(specific).await?;
        Ok(())
    }
}
