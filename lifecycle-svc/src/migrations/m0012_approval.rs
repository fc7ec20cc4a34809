use sea_orm::{ConnectionTrait, DatabaseBackend};
use sea_orm_migration::prelude::*;

/// Approval before destroy (the schedules issue, item 3): an organization may require that
/// its auto-destroy runs be approved; such a run carries its approval, and the database refuses
/// to let a runner take it before it is approved, or to reopen a decision.
pub struct M0012Approval;

impl MigrationName for M0012Approval {
    fn name(&self) -> &str {
        "m0012_approval"
    }
}

const COMMON: &str = r#"
ALTER TABLE organizations ADD COLUMN require_approval BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE organizations ADD COLUMN approval_window_ms BIGINT NOT NULL DEFAULT 86400000
    CHECK (approval_window_ms > 0);
-- NULL: no approval needed.
ALTER TABLE runs ADD COLUMN approval TEXT
    CHECK (approval IN ('pending', 'approved', 'rejected', 'expired'));
-- A run awaiting approval always has a deadline: it is canceled then, never left waiting.
ALTER TABLE runs ADD COLUMN approval_deadline BIGINT
    CHECK (approval IS NULL OR approval_deadline IS NOT NULL);
ALTER TABLE runs ADD COLUMN approval_by TEXT;
ALTER TABLE runs ADD COLUMN approval_reason TEXT;
ALTER TABLE runs ADD COLUMN approval_at BIGINT;
CREATE INDEX runs_awaiting_approval ON runs (approval_deadline) WHERE approval = 'pending';
"#;

const SQLITE: &str = r#"
CREATE TRIGGER runs_unapproved_never_run BEFORE UPDATE OF status ON runs
WHEN NEW.status = 'running' AND NEW.approval IS NOT NULL AND NEW.approval <> 'approved'
BEGIN
    SELECT RAISE(ABORT, 'a run awaiting approval (or rejected) cannot be claimed');
END;
CREATE TRIGGER runs_unapproved_never_inserted_running BEFORE INSERT ON runs
WHEN NEW.status = 'running' AND NEW.approval IS NOT NULL AND NEW.approval <> 'approved'
BEGIN
    SELECT RAISE(ABORT, 'a run awaiting approval (or rejected) cannot be claimed');
END;
CREATE TRIGGER runs_approval_decided_once BEFORE UPDATE OF approval ON runs
WHEN OLD.approval IS NOT NULL AND OLD.approval <> 'pending'
    AND NEW.approval IS NOT OLD.approval
BEGIN
    SELECT RAISE(ABORT, 'an approval decision is final');
END;
"#;

const POSTGRES: &str = r#"
CREATE FUNCTION runs_check_approval() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'running' AND NEW.approval IS NOT NULL AND NEW.approval <> 'approved' THEN
        RAISE EXCEPTION 'a run awaiting approval (or rejected) cannot be claimed'
            USING ERRCODE = 'check_violation';
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.approval IS NOT NULL AND OLD.approval <> 'pending'
        AND NEW.approval IS DISTINCT FROM OLD.approval THEN
        RAISE EXCEPTION 'an approval decision is final' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER runs_check_approval BEFORE INSERT OR UPDATE ON runs
FOR EACH ROW EXECUTE FUNCTION runs_check_approval();
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0012Approval {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(COMMON).await?;
        db.execute_unprepared(match db.get_database_backend() {
            DatabaseBackend::Sqlite => SQLITE,
            _ => POSTGRES,
        })
        .await?;
        Ok(())
    }
}
