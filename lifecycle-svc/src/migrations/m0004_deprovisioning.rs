use sea_orm::{ConnectionTrait, DatabaseBackend};
use sea_orm_migration::prelude::*;

/// Entity kinds, entities, relationships, action runs and their steps, scheduled actions.
pub struct M0004Deprovisioning;

impl MigrationName for M0004Deprovisioning {
    fn name(&self) -> &str {
        "m0004_deprovisioning"
    }
}

const DEPROVISIONING_COMMON: &str = r#"
CREATE TABLE entity_kinds (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('file', 'api')),
    updated_at BIGINT NOT NULL
);

CREATE TABLE entities (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    kind TEXT NOT NULL REFERENCES entity_kinds (name),
    name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    state TEXT NOT NULL,
    attributes TEXT NOT NULL,
    workspace_id TEXT REFERENCES workspaces (id),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (organization_id, kind, name)
);
CREATE INDEX entities_org ON entities (organization_id, created_at, id);

-- Edges are never deleted (a trigger refuses it); `removed` rows are the permanent record.
CREATE TABLE relationships (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    type TEXT NOT NULL CHECK (length(type) BETWEEN 1 AND 100),
    from_entity_id TEXT NOT NULL REFERENCES entities (id),
    to_entity_id TEXT NOT NULL REFERENCES entities (id),
    state TEXT NOT NULL CHECK (state IN ('active', 'removing', 'removed')),
    deletion_scheduled_at BIGINT,
    finalized_at BIGINT,
    finalize_method TEXT CHECK (finalize_method IN ('immediate', 'sweep', 'force')),
    action_run_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CHECK (from_entity_id <> to_entity_id),
    CHECK ((state = 'removed') = (finalized_at IS NOT NULL)),
    CHECK ((state = 'removed') = (finalize_method IS NOT NULL))
);
CREATE UNIQUE INDEX relationships_live ON relationships (type, from_entity_id, to_entity_id)
    WHERE state <> 'removed';
CREATE INDEX relationships_from ON relationships (from_entity_id);
CREATE INDEX relationships_to ON relationships (to_entity_id);
CREATE INDEX relationships_grace ON relationships (deletion_scheduled_at)
    WHERE state = 'removing' AND deletion_scheduled_at IS NOT NULL;
CREATE INDEX relationships_org ON relationships (organization_id, created_at, id);

CREATE TABLE scheduled_actions (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    entity_id TEXT NOT NULL REFERENCES entities (id),
    action TEXT NOT NULL,
    parameters TEXT NOT NULL,
    scheduled_at BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'fired', 'failed', 'canceled')),
    action_run_id TEXT,
    error TEXT NOT NULL DEFAULT '',
    next_reminder_at BIGINT,
    shard_key INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    CHECK (status <> 'fired' OR action_run_id IS NOT NULL)
);
CREATE INDEX scheduled_actions_due ON scheduled_actions (scheduled_at) WHERE status = 'pending';
CREATE INDEX scheduled_actions_reminder ON scheduled_actions (next_reminder_at)
    WHERE next_reminder_at IS NOT NULL;

CREATE TABLE scheduled_action_reminders (
    scheduled_action_id TEXT NOT NULL REFERENCES scheduled_actions (id),
    lead_ms BIGINT NOT NULL,
    sent_at BIGINT NOT NULL,
    PRIMARY KEY (scheduled_action_id, lead_ms)
);

CREATE TABLE action_runs (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    entity_id TEXT NOT NULL REFERENCES entities (id),
    action TEXT NOT NULL,
    parameters TEXT NOT NULL,
    plan TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'canceled')),
    actor TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    scheduled_action_id TEXT REFERENCES scheduled_actions (id),
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
-- One running action per entity; one action run per scheduled action (its fire key).
CREATE UNIQUE INDEX action_runs_one_running ON action_runs (entity_id) WHERE status = 'running';
CREATE UNIQUE INDEX action_runs_scheduled ON action_runs (scheduled_action_id)
    WHERE scheduled_action_id IS NOT NULL;
CREATE INDEX action_runs_org ON action_runs (organization_id, created_at, id);

CREATE TABLE action_steps (
    id TEXT PRIMARY KEY,
    action_run_id TEXT NOT NULL REFERENCES action_runs (id),
    step_order INTEGER NOT NULL,
    entity_id TEXT NOT NULL REFERENCES entities (id),
    waits_for TEXT NOT NULL,
    trigger_type TEXT NOT NULL CHECK (trigger_type IN ('destroy_run', 'webhook', 'noop')),
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'canceled')),
    run_id TEXT REFERENCES runs (id),
    attempt INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    started_at BIGINT,
    finished_at BIGINT,
    deadline_at BIGINT,
    -- Webhook steps: when the request went out (NULL while it is still to be sent).
    dispatched_at BIGINT,
    UNIQUE (action_run_id, entity_id)
);
CREATE INDEX action_steps_dispatch ON action_steps (started_at)
    WHERE status = 'running' AND trigger_type = 'webhook' AND dispatched_at IS NULL;

CREATE TABLE lifecycle_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE INDEX action_steps_run ON action_steps (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX action_steps_deadline ON action_steps (deadline_at) WHERE status = 'running';
"#;

const DEPROVISIONING_SQLITE: &str = r#"
CREATE TRIGGER relationships_never_deleted BEFORE DELETE ON relationships
BEGIN
    SELECT RAISE(ABORT, 'relationships are never deleted: finalize them to removed instead');
END;
"#;

const DEPROVISIONING_POSTGRES: &str = r#"
CREATE FUNCTION relationships_never_deleted() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    RAISE EXCEPTION 'relationships are never deleted: finalize them to removed instead';
END;
$body$;
CREATE TRIGGER relationships_never_deleted BEFORE DELETE ON relationships
    FOR EACH ROW EXECUTE FUNCTION relationships_never_deleted();
CREATE TRIGGER relationships_never_truncated BEFORE TRUNCATE ON relationships
    FOR EACH STATEMENT EXECUTE FUNCTION relationships_never_deleted();
ALTER TABLE relationships ENABLE ALWAYS TRIGGER relationships_never_deleted;
ALTER TABLE relationships ENABLE ALWAYS TRIGGER relationships_never_truncated;
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0004Deprovisioning {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(DEPROVISIONING_COMMON).await?;
        let specific = match db.get_database_backend() {
            DatabaseBackend::Sqlite => DEPROVISIONING_SQLITE,
            _ => DEPROVISIONING_POSTGRES,
        };
        db.execute_unprepared(specific).await?;
        // Which deprovisioning step a destroy run carries out.
        db.execute_unprepared("ALTER TABLE runs ADD COLUMN action_step_id TEXT")
            .await?;
        Ok(())
    }
}
