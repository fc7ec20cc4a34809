use sea_orm_migration::prelude::*;

/// The relay's tables: one lease per sink and one cursor per (sink, organization).
pub struct M0002Relay;

impl MigrationName for M0002Relay {
    fn name(&self) -> &str {
        "m0002_relay"
    }
}

const RELAY_TABLES: &str = r#"
CREATE TABLE outbox_relay_leases (
    sink TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT '',
    -- Bumped whenever another replica takes the lease: a holder's writes are fenced by it.
    epoch BIGINT NOT NULL DEFAULT 0,
    expires_at BIGINT NOT NULL DEFAULT 0
);
INSERT INTO outbox_relay_leases (sink) VALUES ('audit'), ('notifier');

CREATE TABLE outbox_relay_cursors (
    sink TEXT NOT NULL REFERENCES outbox_relay_leases (sink),
    organization_id TEXT NOT NULL,
    -- Every event of the organization up to this org_seq was acknowledged by the sink.
    last_org_seq BIGINT NOT NULL CHECK (last_org_seq >= 0),
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (sink, organization_id)
);
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0002Relay {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(RELAY_TABLES)
            .await?;
        Ok(())
    }
}
