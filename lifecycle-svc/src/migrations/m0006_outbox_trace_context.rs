use sea_orm_migration::prelude::*;

/// The W3C trace context of the change that wrote each outbox row, so that the sinks' work
/// joins the trace of that change.
pub struct M0006OutboxTraceContext;

impl MigrationName for M0006OutboxTraceContext {
    fn name(&self) -> &str {
        "m0006_outbox_trace_context"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0006OutboxTraceContext {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE outbox ADD COLUMN trace_context TEXT NOT NULL DEFAULT '' \
                 CHECK (length(trace_context) <= 256)",
            )
            .await?;
        Ok(())
    }
}
