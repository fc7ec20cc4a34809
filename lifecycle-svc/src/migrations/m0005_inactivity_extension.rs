use sea_orm_migration::prelude::*;

/// Extensions of an inactivity deadline kept apart from the time of the last applied state.
pub struct M0005InactivityExtension;

impl MigrationName for M0005InactivityExtension {
    fn name(&self) -> &str {
        "m0005_inactivity_extension"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0005InactivityExtension {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE workspaces ADD COLUMN inactivity_extension_ms BIGINT NOT NULL DEFAULT 0 \
                 CHECK (inactivity_extension_ms >= 0)",
            )
            .await?;
        Ok(())
    }
}
