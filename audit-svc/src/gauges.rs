//! audit's metrics: the head of each organization's chain (read at scrape time) and the
//! events this replica appended.

use ebb_common::db::Db;
use ebb_common::metrics::MetricsSource;
use sea_orm::FromQueryResult;

#[derive(FromQueryResult)]
struct Head {
    organization_id: String,
    head_sequence: i64,
}

/// audit's [`MetricsSource`].
pub struct AuditMetrics {
    db: Db,
}

impl AuditMetrics {
    /// Reads `db`; describes the metrics.
    pub fn new(db: Db) -> Self {
        metrics::describe_gauge!(
            "ebb_audit_chain_head_sequence",
            "Sequence number of the newest event of each organization's chain."
        );
        metrics::describe_gauge!("ebb_audit_chains", "Organizations with an audit chain.");
        metrics::describe_counter!(
            "ebb_audit_events_appended_total",
            "Events this replica recorded (events already recorded with the same content are \
             counted under outcome=\"duplicate\")."
        );
        for outcome in ["recorded", "duplicate"] {
            metrics::counter!("ebb_audit_events_appended_total", "outcome" => outcome).increment(0);
        }
        Self { db }
    }
}

#[async_trait::async_trait]
impl MetricsSource for AuditMetrics {
    fn name(&self) -> &'static str {
        "audit"
    }

    async fn refresh(&self) -> anyhow::Result<()> {
        let heads = Head::find_by_statement(self.db.stmt(
            "SELECT organization_id, head_sequence FROM audit_chains",
            [],
        ))
        .all(&self.db.conn)
        .await?;
        metrics::gauge!("ebb_audit_chains").set(heads.len() as f64);
        for head in heads {
            metrics::gauge!("ebb_audit_chain_head_sequence", "organization_id" => head.organization_id)
                .set(head.head_sequence as f64);
        }
        Ok(())
    }
}
