use sea_orm_migration::prelude::*;

/// The `api_tokens` table.
pub struct M0003Tokens;

impl MigrationName for M0003Tokens {
    fn name(&self) -> &str {
        "m0003_tokens"
    }
}

const TOKENS_SQL: &str = r#"
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    -- NULL only for service tokens, which act across organizations.
    organization_id TEXT REFERENCES organizations (id),
    role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'runner', 'service', 'reader')),
    -- SHA-256 of a 256-bit random secret; the secret itself is never stored.
    secret_sha256 TEXT NOT NULL UNIQUE CHECK (length(secret_sha256) = 64),
    description TEXT NOT NULL CHECK (length(description) <= 800),
    request_id TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    CHECK ((role = 'service') = (organization_id IS NULL)),
    CHECK (expires_at IS NULL OR expires_at > created_at)
);
CREATE UNIQUE INDEX api_tokens_request ON api_tokens (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX api_tokens_org ON api_tokens (organization_id, created_at, id);
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0003Tokens {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(TOKENS_SQL)
            .await?;
        Ok(())
    }
}
