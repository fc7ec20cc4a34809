use sea_orm::DatabaseBackend;
use sea_orm_migration::prelude::*;

/// Writes that touch many rows at once (a wave of due workspaces, a cascade's runs) pay for
/// every index and row trigger on the way; two of them did no work of their own.
///
/// - `workspaces_project` indexed `project_id`, which the `(project_id, name)` unique index
///   already leads with: every workspace update that moved an indexed column updated both.
/// - On PostgreSQL every insert and update of a run called a PL/pgSQL function to refuse a
///   run running without approval. That rule looks at the new row alone, so it is a CHECK
///   constraint now; the one that compares old and new (a decision is final) fires only when
///   `approval` changes, and only when the change breaks it. Both refuse what they refused.
pub struct M0019LighterWrites;

impl MigrationName for M0019LighterWrites {
    fn name(&self) -> &str {
        "m0019_lighter_writes"
    }
}

const COMMON: &str = r#"
DROP INDEX workspaces_project;
"#;

const POSTGRES: &str = r#"
DROP TRIGGER runs_check_approval ON runs;
DROP FUNCTION runs_check_approval();
ALTER TABLE runs ADD CONSTRAINT runs_never_running_while_awaiting_approval
    CHECK (status <> 'running' OR approval IS NULL OR approval = 'approved');
CREATE FUNCTION runs_refuse_changed_decision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'an approval decision is final' USING ERRCODE = 'check_violation';
END;
$$;
CREATE TRIGGER runs_approval_decided_once BEFORE UPDATE OF approval ON runs
FOR EACH ROW WHEN (OLD.approval IS NOT NULL AND OLD.approval <> 'pending'
    AND NEW.approval IS DISTINCT FROM OLD.approval)
EXECUTE FUNCTION runs_refuse_changed_decision();
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0019LighterWrites {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(COMMON).await?;
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            db.execute_unprepared(POSTGRES).await?;
        }
        Ok(())
    }
}
