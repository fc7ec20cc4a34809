//! lifecycle-svc's schema. Timestamps are epoch milliseconds (BIGINT) on both backends so that
//! comparisons and indexes behave the same on SQLite and PostgreSQL.
//!
//! The invariants that matter are the database's to enforce: one active destroy run per
//! workspace, one run per fire key, no schedule on a protected or archived workspace,
//! gapless per-organization event sequences, and relationship rows that cannot be deleted.

use sea_orm::{ConnectionTrait, DatabaseBackend};
use sea_orm_migration::prelude::*;

/// Applies lifecycle-svc's migrations in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migration_table_name() -> DynIden {
        "lifecycle_migrations".into_iden()
    }

    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(M0001Initial),
            Box::new(crate::relay::M0002Relay),
            Box::new(crate::tokens::M0003Tokens),
            Box::new(M0004Deprovisioning),
            Box::new(M0005InactivityExtension),
            Box::new(M0006OutboxTraceContext),
        ]
    }
}

/// Organizations, projects, workspaces, state versions, runs, reminders, outbox, request log.
pub struct M0001Initial;

impl MigrationName for M0001Initial {
    fn name(&self) -> &str {
        "m0001_initial"
    }
}

const INITIAL_COMMON: &str = r#"
CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    reminder_lead_times_ms TEXT NOT NULL,
    destroy_retry_limit INTEGER NOT NULL CHECK (destroy_retry_limit BETWEEN 0 AND 20),
    max_inactivity_ms BIGINT NOT NULL CHECK (max_inactivity_ms > 0),
    protected_labels TEXT NOT NULL,
    -- Last sequence number handed to this organization's events; bumped in the writing
    -- transaction, so sequences are gapless and in commit order per organization.
    event_seq BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    default_inactivity_ms BIGINT CHECK (default_inactivity_ms > 0),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (organization_id, name)
);

CREATE TABLE workspaces (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    labels TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'archived')),
    protected BOOLEAN NOT NULL,
    protected_by_policy BOOLEAN NOT NULL,
    locked BOOLEAN NOT NULL,
    lock_reason TEXT NOT NULL,
    working_directory TEXT NOT NULL,
    auto_destroy_at BIGINT,
    auto_destroy_inactivity_ms BIGINT CHECK (auto_destroy_inactivity_ms > 0),
    inherits_project_auto_destroy BOOLEAN NOT NULL,
    auto_destroy_status TEXT NOT NULL CHECK (auto_destroy_status IN
        ('idle', 'deferred', 'queued', 'retrying', 'succeeded', 'failed')),
    last_state_change_at BIGINT,
    latest_serial BIGINT NOT NULL DEFAULT 0,
    applied_since_destroy BOOLEAN NOT NULL,
    -- The latest due time that produced a run: a due time fires at most once.
    last_fired_due_at BIGINT,
    auto_destroy_failures INTEGER NOT NULL DEFAULT 0,
    auto_destroy_retry_at BIGINT,
    next_auto_destroy_at BIGINT,
    next_reminder_at BIGINT,
    shard_key INTEGER NOT NULL CHECK (shard_key >= 0),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (project_id, name),
    -- Rule: a protected or archived workspace never has a pending auto-destroy.
    CONSTRAINT workspaces_no_schedule_when_protected CHECK (
        next_auto_destroy_at IS NULL
        OR (protected = FALSE AND protected_by_policy = FALSE AND state = 'active')
    )
);
CREATE INDEX workspaces_next_auto_destroy ON workspaces (next_auto_destroy_at)
    WHERE next_auto_destroy_at IS NOT NULL;
CREATE INDEX workspaces_next_reminder ON workspaces (next_reminder_at)
    WHERE next_reminder_at IS NOT NULL;
CREATE INDEX workspaces_org ON workspaces (organization_id, created_at, id);
CREATE INDEX workspaces_project ON workspaces (project_id);

CREATE TABLE state_versions (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    serial BIGINT NOT NULL CHECK (serial > 0),
    run_id TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (workspace_id, serial)
);

CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    is_destroy BOOLEAN NOT NULL,
    auto_apply BOOLEAN NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('manual', 'auto_destroy', 'deprovision')),
    status TEXT NOT NULL CHECK (status IN
        ('queued', 'running', 'succeeded', 'failed', 'errored', 'canceled')),
    fire_due_at BIGINT,
    attempt INTEGER NOT NULL DEFAULT 0,
    runner_id TEXT NOT NULL DEFAULT '',
    lease_token TEXT,
    lease_expires_at BIGINT,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    exit_code INTEGER NOT NULL DEFAULT 0,
    output_tail TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    working_directory TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    claimed_at BIGINT,
    finished_at BIGINT,
    CHECK (fire_due_at IS NULL OR source <> 'manual'),
    CHECK (status <> 'running' OR lease_token IS NOT NULL)
);
-- Rule: at most one active destroy run per workspace.
CREATE UNIQUE INDEX runs_one_active_destroy ON runs (workspace_id)
    WHERE is_destroy = TRUE AND status IN ('queued', 'running');
-- Rule: one run per fire key (workspace, due time), across cycles and replicas.
CREATE UNIQUE INDEX runs_fire_key ON runs (workspace_id, fire_due_at)
    WHERE fire_due_at IS NOT NULL;
CREATE INDEX runs_queue ON runs (organization_id, created_at) WHERE status = 'queued';
CREATE INDEX runs_leases ON runs (lease_expires_at) WHERE status = 'running';
CREATE INDEX runs_workspace ON runs (workspace_id, created_at);
CREATE INDEX runs_org ON runs (organization_id, created_at, id);

-- One row per reminder sent: each (schedule, lead time) at most once.
CREATE TABLE auto_destroy_reminders (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    due_at BIGINT NOT NULL,
    lead_ms BIGINT NOT NULL,
    sent_at BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, due_at, lead_ms)
);
"#;

const INITIAL_SQLITE: &str = r#"
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    organization_id TEXT NOT NULL,
    org_seq BIGINT NOT NULL,
    type TEXT NOT NULL,
    subject_type TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (organization_id, org_seq)
);
CREATE INDEX outbox_type ON outbox (type, seq);

CREATE TABLE request_log (
    method TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (method, request_id)
);
"#;

const INITIAL_POSTGRES: &str = r#"
CREATE TABLE outbox (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    organization_id TEXT NOT NULL,
    org_seq BIGINT NOT NULL,
    type TEXT NOT NULL,
    subject_type TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (organization_id, org_seq)
);
CREATE INDEX outbox_type ON outbox (type, seq);

CREATE TABLE request_log (
    method TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (method, request_id)
);
"#;

#[async_trait::async_trait]
impl MigrationTrait for M0001Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let specific = match db.get_database_backend() {
            DatabaseBackend::Sqlite => INITIAL_SQLITE,
            _ => INITIAL_POSTGRES,
        };
        db.execute_unprepared(INITIAL_COMMON).await?;
        db.execute_unprepared(specific).await?;
        Ok(())
    }
}

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
