//! lifecycle's gauges, read from its database at scrape time: what is due and how late
//! (the scheduler's lag), the outbox backlog per sink, overdue grace periods, active runs.
//! Every query is served by an index (or, for the outbox, by one row per organization).

use ebb_common::db::Db;
use ebb_common::metrics::{MetricsSource, age_seconds};
use ebb_common::time::now_ms;
use sea_orm::{DatabaseBackend, FromQueryResult};

/// Kinds of due items, with the query counting them and finding the oldest.
const DUE: &[(&str, &str)] = &[
    (
        "auto_destroy",
        "SELECT COUNT(*) AS n, MIN(next_auto_destroy_at) AS oldest FROM workspaces \
         WHERE next_auto_destroy_at <= $1",
    ),
    (
        "auto_destroy_reminder",
        "SELECT COUNT(*) AS n, MIN(next_reminder_at) AS oldest FROM workspaces \
         WHERE next_reminder_at <= $1",
    ),
    (
        "scheduled_action",
        "SELECT COUNT(*) AS n, MIN(scheduled_at) AS oldest FROM scheduled_actions \
         WHERE status = 'pending' AND scheduled_at <= $1",
    ),
    (
        "scheduled_action_reminder",
        "SELECT COUNT(*) AS n, MIN(next_reminder_at) AS oldest FROM scheduled_actions \
         WHERE status = 'pending' AND next_reminder_at <= $1",
    ),
    (
        "grace_period",
        "SELECT COUNT(*) AS n, MIN(deletion_scheduled_at) AS oldest FROM relationships \
         WHERE state = 'removing' AND deletion_scheduled_at <= $1",
    ),
];

#[derive(FromQueryResult)]
struct Due {
    n: i64,
    oldest: Option<i64>,
}

#[derive(FromQueryResult)]
struct Backlog {
    backlog: Option<i64>,
    oldest: Option<i64>,
}

#[derive(FromQueryResult)]
struct Count {
    n: i64,
}

/// lifecycle's [`MetricsSource`].
pub struct LifecycleMetrics {
    db: Db,
    /// The sinks the relay sends to; the outbox backlog of others is not reported.
    sinks: Vec<&'static str>,
}

impl LifecycleMetrics {
    /// Reads `db`, reporting the outbox backlog of the sinks `config` relays to; describes
    /// the gauges.
    pub fn new(db: Db, config: &crate::Config) -> Self {
        metrics::describe_gauge!(
            "ebb_due_backlog",
            "Items due now and not yet handled, by kind (auto_destroy, auto_destroy_reminder, \
             scheduled_action, scheduled_action_reminder, grace_period: overdue grace edges). \
             Deferred auto-destroys stay due until they fire."
        );
        metrics::describe_gauge!(
            "ebb_scheduler_lag_seconds",
            metrics::Unit::Seconds,
            "Age of the oldest due item not yet handled, by kind; 0 when nothing is due."
        );
        metrics::describe_gauge!(
            "ebb_deprovision_overdue_grace_edges",
            "Relationships whose grace period has elapsed and that are not finalized yet."
        );
        metrics::describe_gauge!(
            "ebb_outbox_backlog",
            "Domain events not yet acknowledged by a sink (audit, notifier)."
        );
        metrics::describe_gauge!(
            "ebb_outbox_lag_seconds",
            metrics::Unit::Seconds,
            "Age of the oldest domain event a sink has not acknowledged; 0 when none waits."
        );
        metrics::describe_gauge!("ebb_runs", "Runs queued or running, by status.");
        let mut sinks = Vec::new();
        if !config.audit_url.is_empty() {
            sinks.push("audit");
        }
        if !config.notifier_url.is_empty() {
            sinks.push("notifier");
        }
        Self { db, sinks }
    }

    async fn due(&self, now: i64) -> anyhow::Result<()> {
        for (kind, sql) in DUE {
            let row = Due::find_by_statement(self.db.stmt(sql, [now.into()]))
                .one(&self.db.conn)
                .await?;
            let (n, oldest) = row.map_or((0, None), |r| (r.n, r.oldest));
            metrics::gauge!("ebb_due_backlog", "kind" => *kind).set(n as f64);
            metrics::gauge!("ebb_scheduler_lag_seconds", "kind" => *kind)
                .set(age_seconds(oldest, now));
            if *kind == "grace_period" {
                metrics::gauge!("ebb_deprovision_overdue_grace_edges").set(n as f64);
            }
        }
        Ok(())
    }

    /// The backlog of each sink is the sum over organizations of their event counter minus
    /// the sink's cursor; the oldest waiting event is the one right after each cursor. One
    /// query per sink keeps the plan small (a cross join with the lease table was estimated
    /// expensive enough for PostgreSQL to JIT-compile it, which took longer than the query).
    /// On PostgreSQL, committed events not numbered yet (`events::outbox::number`) wait for
    /// every sink too: counted once for each, by their partial index.
    async fn outbox(&self, now: i64) -> anyhow::Result<()> {
        let unnumbered = if self.db.conn.get_database_backend() == DatabaseBackend::Postgres {
            Backlog::find_by_statement(self.db.stmt(
                "SELECT COUNT(*) AS backlog, MIN(created_at) AS oldest FROM outbox \
                 WHERE org_seq IS NULL",
                [],
            ))
            .one(&self.db.conn)
            .await?
        } else {
            None
        };
        let (waiting, waiting_since) =
            unnumbered.map_or((0, None), |u| (u.backlog.unwrap_or(0), u.oldest));
        for &sink in &self.sinks {
            let row = Backlog::find_by_statement(self.db.stmt(
                "SELECT CAST(SUM(o.event_seq - COALESCE(c.last_org_seq, 0)) AS BIGINT) AS backlog, \
                        MIN((SELECT e.created_at FROM outbox e WHERE e.organization_id = o.id \
                             AND e.org_seq = COALESCE(c.last_org_seq, 0) + 1)) AS oldest \
                 FROM organizations o LEFT JOIN outbox_relay_cursors c \
                     ON c.sink = $1 AND c.organization_id = o.id \
                 WHERE o.event_seq > COALESCE(c.last_org_seq, 0)",
                [sink.into()],
            ))
            .one(&self.db.conn)
            .await?;
            let backlog = row.as_ref().and_then(|r| r.backlog).unwrap_or(0) + waiting;
            let oldest = row
                .and_then(|r| r.oldest)
                .into_iter()
                .chain(waiting_since)
                .min();
            metrics::gauge!("ebb_outbox_backlog", "sink" => sink).set(backlog as f64);
            metrics::gauge!("ebb_outbox_lag_seconds", "sink" => sink).set(age_seconds(oldest, now));
        }
        Ok(())
    }

    /// One count per status, each served by that status's partial index.
    async fn runs(&self) -> anyhow::Result<()> {
        for status in ["queued", "running"] {
            let row = Count::find_by_statement(self.db.stmt(
                &format!("SELECT COUNT(*) AS n FROM runs WHERE status = '{status}'"),
                [],
            ))
            .one(&self.db.conn)
            .await?;
            metrics::gauge!("ebb_runs", "status" => status).set(row.map_or(0, |r| r.n) as f64);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl MetricsSource for LifecycleMetrics {
    fn name(&self) -> &'static str {
        "lifecycle"
    }

    async fn refresh(&self) -> anyhow::Result<()> {
        let now = now_ms();
        self.due(now).await?;
        self.outbox(now).await?;
        self.runs().await
    }
}
