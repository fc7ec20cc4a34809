//! scheduler-svc's schema: one lease row per (task, shard).

use sea_orm::ConnectionTrait;
use sea_orm_migration::prelude::*;

/// Applies scheduler-svc's migrations in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migration_table_name() -> DynIden {
        "scheduler_migrations".into_iden()
    }

    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(M0001TaskLeases)]
    }
}

/// The lease table.
pub struct M0001TaskLeases;

impl MigrationName for M0001TaskLeases {
    fn name(&self) -> &str {
        "m0001_task_leases"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0001TaskLeases {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                r#"
CREATE TABLE task_leases (
    task TEXT NOT NULL,
    shard INTEGER NOT NULL CHECK (shard >= 0),
    -- The replica holding the lease, and until when (database time, epoch ms).
    owner TEXT,
    lease_expires_at BIGINT,
    -- Bumped by every claim: a replica's renewals and release are fenced by it.
    epoch BIGINT NOT NULL DEFAULT 0,
    paused BOOLEAN NOT NULL DEFAULT FALSE,
    interval_ms BIGINT NOT NULL CHECK (interval_ms > 0),
    next_run_at BIGINT NOT NULL,
    last_run_at BIGINT,
    last_outcome TEXT NOT NULL DEFAULT '',
    last_duration_ms BIGINT,
    -- Claims of a lease another replica let expire.
    takeovers BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (task, shard),
    CHECK ((owner IS NULL) = (lease_expires_at IS NULL))
);
CREATE INDEX task_leases_due ON task_leases (next_run_at);
"#,
            )
            .await?;
        Ok(())
    }
}
