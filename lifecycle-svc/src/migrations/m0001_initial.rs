use sea_orm::{ConnectionTrait, DatabaseBackend};
use sea_orm_migration::prelude::*;

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
