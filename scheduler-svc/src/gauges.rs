//! scheduler's metrics: per task, how late its most overdue shard is, how often a lease was
//! taken over from a replica that stopped renewing it, and whether it is paused (all read
//! from the lease table at scrape time); runs and their durations are counted by the worker.

use ebb_common::db::{Db, now_ms_sql};
use ebb_common::metrics::MetricsSource;
use sea_orm::FromQueryResult;

#[derive(FromQueryResult)]
struct TaskRow {
    task: String,
    takeovers: i64,
    paused: i64,
    overdue_ms: Option<i64>,
}

/// scheduler's [`MetricsSource`].
pub struct SchedulerMetrics {
    db: Db,
}

impl SchedulerMetrics {
    /// Reads `db`; describes the metrics.
    pub fn new(db: Db) -> Self {
        metrics::describe_counter!(
            "ebb_scheduler_lease_takeovers_total",
            "Leases claimed after their holder stopped renewing them, by task (all replicas)."
        );
        metrics::describe_gauge!(
            "ebb_scheduler_task_overdue_seconds",
            metrics::Unit::Seconds,
            "How long the most overdue unpaused shard of a task has been waiting for a replica."
        );
        metrics::describe_gauge!(
            "ebb_scheduler_task_paused",
            "1 when a task is paused, else 0."
        );
        metrics::describe_counter!(
            "ebb_scheduler_task_runs_total",
            "Task runs of this replica, by task and outcome (ok, error, lease_lost)."
        );
        metrics::describe_histogram!(
            "ebb_scheduler_task_run_seconds",
            metrics::Unit::Seconds,
            "Duration of this replica's task runs, by task."
        );
        Self { db }
    }
}

#[async_trait::async_trait]
impl MetricsSource for SchedulerMetrics {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    async fn refresh(&self) -> anyhow::Result<()> {
        let now = now_ms_sql(self.db.backend());
        let rows = TaskRow::find_by_statement(self.db.stmt(
            &format!(
                "SELECT task, CAST(SUM(takeovers) AS BIGINT) AS takeovers, \
                 CAST(MAX(CASE WHEN paused THEN 1 ELSE 0 END) AS BIGINT) AS paused, \
                 CAST(MAX(CASE WHEN paused = FALSE AND next_run_at <= {now} \
                     THEN {now} - next_run_at END) AS BIGINT) AS overdue_ms \
                 FROM task_leases GROUP BY task"
            ),
            [],
        ))
        .all(&self.db.conn)
        .await?;
        for row in rows {
            let task = row.task;
            metrics::counter!("ebb_scheduler_lease_takeovers_total", "task" => task.clone())
                .absolute(u64::try_from(row.takeovers).unwrap_or(0));
            metrics::gauge!("ebb_scheduler_task_paused", "task" => task.clone())
                .set(row.paused as f64);
            metrics::gauge!("ebb_scheduler_task_overdue_seconds", "task" => task)
                .set(row.overdue_ms.unwrap_or(0).max(0) as f64 / 1000.0);
        }
        Ok(())
    }
}
