use sea_orm_migration::prelude::*;

/// A claim takes the oldest queued run, by `(created_at, id)`. A wave queued by one statement
/// shares one `created_at`, so an index without `id` made every claim read and sort the whole
/// wave; with it, a claim reads one index entry.
pub struct M0016ClaimOrder;

impl MigrationName for M0016ClaimOrder {
    fn name(&self) -> &str {
        "m0016_claim_order"
    }
}

const SQL: &str = r#"
DROP INDEX runs_queue;
CREATE INDEX runs_queue ON runs (organization_id, created_at, id) WHERE status = 'queued';
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0016ClaimOrder {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(SQL).await?;
        Ok(())
    }
}
