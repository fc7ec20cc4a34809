//! lifecycle-svc's schema. Timestamps are epoch milliseconds (BIGINT) on both backends so that
//! comparisons and indexes behave the same on SQLite and PostgreSQL.
//!
//! The invariants that matter are the database's to enforce: one active destroy run per
//! workspace, one run per fire key, one running teardown step per entity, no schedule on a
//! protected or archived workspace, gapless per-organization event sequences, and relationship
//! rows that cannot be deleted.

use sea_orm_migration::prelude::*;

mod m0001_initial;
mod m0002_relay;
mod m0003_tokens;
mod m0004_deprovisioning;
mod m0005_inactivity_extension;
mod m0006_outbox_trace_context;
mod m0007_shared_upstreams;
mod m0008_destruction_safety;
mod m0009_request_log;
mod m0010_snooze_links;
mod m0011_recurring_and_owners;
mod m0012_approval;
mod m0013_destroy_windows;
mod m0014_schedule_scopes;
mod m0015_step_counters;
mod m0016_claim_order;
mod m0017_outbox_numbered_after_commit;
mod m0018_queued_settling;
mod m0019_lighter_writes;

/// Applies lifecycle-svc's migrations in order. One file per migration; an applied migration
/// is never edited — a change is a new file.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migration_table_name() -> DynIden {
        "lifecycle_migrations".into_iden()
    }

    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_initial::M0001Initial),
            Box::new(m0002_relay::M0002Relay),
            Box::new(m0003_tokens::M0003Tokens),
            Box::new(m0004_deprovisioning::M0004Deprovisioning),
            Box::new(m0005_inactivity_extension::M0005InactivityExtension),
            Box::new(m0006_outbox_trace_context::M0006OutboxTraceContext),
            Box::new(m0007_shared_upstreams::M0007SharedUpstreams),
            Box::new(m0008_destruction_safety::M0008DestructionSafety),
            Box::new(m0009_request_log::M0009RequestLog),
            Box::new(m0010_snooze_links::M0010SnoozeLinks),
            Box::new(m0011_recurring_and_owners::M0011RecurringAndOwners),
            Box::new(m0012_approval::M0012Approval),
            Box::new(m0013_destroy_windows::M0013DestroyWindows),
            Box::new(m0014_schedule_scopes::M0014ScheduleScopes),
            Box::new(m0015_step_counters::M0015StepCounters),
            Box::new(m0016_claim_order::M0016ClaimOrder),
            Box::new(m0017_outbox_numbered_after_commit::M0017OutboxNumberedAfterCommit),
            Box::new(m0018_queued_settling::M0018QueuedSettling),
            Box::new(m0019_lighter_writes::M0019LighterWrites),
        ]
    }
}
