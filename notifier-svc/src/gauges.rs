//! notifier's metrics: deliveries waiting and failed for good, and how late the oldest due
//! one is (read at scrape time); attempts and failed attempts of this replica by destination.

use ebb_common::db::Db;
use ebb_common::metrics::{MetricsSource, age_seconds};
use ebb_common::time::now_ms;
use sea_orm::FromQueryResult;

#[derive(FromQueryResult)]
struct Due {
    n: i64,
    oldest: Option<i64>,
}

#[derive(FromQueryResult)]
struct Count {
    n: i64,
}

/// notifier's [`MetricsSource`].
pub struct NotifierMetrics {
    db: Db,
}

impl NotifierMetrics {
    /// Reads `db`; describes the metrics.
    pub fn new(db: Db) -> Self {
        metrics::describe_gauge!(
            "ebb_notifier_deliveries",
            "Deliveries by status: pending (waiting for an attempt or a retry) and failed \
             (retries exhausted or the endpoint gone; redeliver them)."
        );
        metrics::describe_gauge!(
            "ebb_notifier_due_deliveries",
            "Pending deliveries whose next attempt is due now."
        );
        metrics::describe_gauge!(
            "ebb_notifier_delivery_lag_seconds",
            metrics::Unit::Seconds,
            "How long the oldest due delivery has been waiting for an attempt."
        );
        metrics::describe_counter!(
            "ebb_notifier_delivery_attempts_total",
            "Delivery attempts of this replica, by destination and outcome (succeeded, \
             rejected, timed_out, unreachable)."
        );
        metrics::describe_counter!(
            "ebb_notifier_delivery_failures_total",
            "Delivery attempts of this replica that did not succeed, by destination."
        );
        for destination in ["webhook", "slack", "email", "teams"] {
            metrics::counter!("ebb_notifier_delivery_failures_total", "destination" => destination)
                .increment(0);
            for outcome in ["succeeded", "rejected", "timed_out", "unreachable"] {
                metrics::counter!("ebb_notifier_delivery_attempts_total", "destination" => destination, "outcome" => outcome)
                    .increment(0);
            }
        }
        Self { db }
    }
}

#[async_trait::async_trait]
impl MetricsSource for NotifierMetrics {
    fn name(&self) -> &'static str {
        "notifier"
    }

    async fn refresh(&self) -> anyhow::Result<()> {
        let now = now_ms();
        let due = Due::find_by_statement(self.db.stmt(
            "SELECT COUNT(*) AS n, MIN(next_attempt_ms) AS oldest FROM deliveries \
             WHERE status = 'pending' AND next_attempt_ms <= $1",
            [now.into()],
        ))
        .one(&self.db.conn)
        .await?;
        let (n, oldest) = due.map_or((0, None), |d| (d.n, d.oldest));
        metrics::gauge!("ebb_notifier_due_deliveries").set(n as f64);
        metrics::gauge!("ebb_notifier_delivery_lag_seconds").set(age_seconds(oldest, now));
        // The status is written into the statement, not bound, so that PostgreSQL can use the
        // partial index of that status even with a generic plan.
        for status in ["pending", "failed"] {
            let count = Count::find_by_statement(self.db.stmt(
                &format!("SELECT COUNT(*) AS n FROM deliveries WHERE status = '{status}'"),
                [],
            ))
            .one(&self.db.conn)
            .await?;
            metrics::gauge!("ebb_notifier_deliveries", "status" => status)
                .set(count.map_or(0, |c| c.n) as f64);
        }
        Ok(())
    }
}
