//! Organizations and their settings: reminder lead times, retry limit, the longest inactivity
//! allowed and the label policy that protects workspaces.

use std::collections::BTreeMap;

use ebb_common::time::EpochMs;
use ebb_common::{Error, Result};
use sea_orm::sea_query::{Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, FromQueryResult};
use serde_json::json;

use crate::events::{NewEvent, outbox};
use crate::store::decode_json;
use crate::store::for_update;
use crate::store::{exec, keyset, query_one, select_all};
use crate::timing::windows::{DestroyWindows, InForce};

/// Columns of [`OrgRow`], in order.
pub const ORG_COLUMNS: &str = "id, name, reminder_lead_times_ms, destroy_retry_limit, \
    max_inactivity_ms, protected_labels, minimum_notice_ms, confirm_threshold, snooze_step_ms, \
    require_approval, approval_window_ms, destroy_windows, approval_labels, \
    approval_cascade_threshold, version, created_at, updated_at";

/// An organization.
#[derive(Debug, Clone, FromQueryResult)]
pub struct OrgRow {
    pub id: String,
    pub name: String,
    pub reminder_lead_times_ms: String,
    pub destroy_retry_limit: i32,
    pub max_inactivity_ms: i64,
    pub protected_labels: String,
    pub minimum_notice_ms: Option<i64>,
    pub confirm_threshold: i32,
    pub snooze_step_ms: Option<i64>,
    pub require_approval: bool,
    pub approval_window_ms: i64,
    pub destroy_windows: Option<String>,
    pub approval_labels: String,
    pub approval_cascade_threshold: Option<i32>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl OrgRow {
    /// Reminder lead times in milliseconds.
    pub fn lead_times(&self) -> Result<Vec<i64>> {
        decode_json(
            "organizations",
            "reminder_lead_times_ms",
            &self.id,
            &self.reminder_lead_times_ms,
        )
    }

    /// Labels that protect a workspace.
    pub fn protected_labels(&self) -> Result<BTreeMap<String, String>> {
        decode_json(
            "organizations",
            "protected_labels",
            &self.id,
            &self.protected_labels,
        )
    }

    /// Whether the organization's policy protects a workspace with `labels`.
    /// The minimum notice before an implicit destroy (AD-12): the configured one, or the
    /// longest reminder lead time, so that every reminder still goes out.
    pub fn minimum_notice_ms(&self) -> Result<i64> {
        match self.minimum_notice_ms {
            Some(ms) => Ok(ms),
            None => Ok(self.lead_times()?.into_iter().max().unwrap_or(0)),
        }
    }

    /// How much later a snooze link in a reminder pushes the destroy: the configured step, or
    /// one day; zero means reminders carry no snooze link.
    pub fn snooze_step_ms(&self) -> i64 {
        self.snooze_step_ms.unwrap_or(DEFAULT_SNOOZE_STEP_MS)
    }

    /// Its destroy windows: any time when unset; none at all when the stored setting no
    /// longer parses (fails closed).
    pub fn windows(&self) -> InForce {
        InForce::stored(self.destroy_windows.as_deref())
    }

    /// With `require_approval`, the labels one of which a workspace must carry to need it;
    /// empty for every workspace.
    pub fn approval_labels(&self) -> Result<BTreeMap<String, String>> {
        decode_json(
            "organizations",
            "approval_labels",
            &self.id,
            &self.approval_labels,
        )
    }

    /// Whether an auto-destroy of a workspace with `labels` waits for approval. Fails closed:
    /// a scope that does not decode asks for approval.
    pub fn requires_approval(&self, labels: &BTreeMap<String, String>) -> bool {
        if !self.require_approval {
            return false;
        }
        match self.approval_labels() {
            Ok(scope) => scope.is_empty() || scope.iter().any(|(k, v)| labels.get(k) == Some(v)),
            Err(_) => true,
        }
    }

    /// How long each destroy run of a cascade tearing down `entities` waits for approval, when
    /// it has to: the organization requires approval for cascades of that size.
    pub fn cascade_approval_window(&self, entities: usize) -> Option<i64> {
        let threshold = usize::try_from(self.approval_cascade_threshold?).unwrap_or(0);
        (self.require_approval && entities > threshold).then_some(self.approval_window_ms)
    }

    /// Its settings as validated values.
    pub fn settings(&self) -> Result<OrgSettings> {
        Ok(OrgSettings {
            reminder_lead_times_ms: self.lead_times()?,
            destroy_retry_limit: self.destroy_retry_limit,
            max_inactivity_ms: self.max_inactivity_ms,
            protected_labels: self.protected_labels()?,
            minimum_notice_ms: self.minimum_notice_ms,
            confirm_threshold: self.confirm_threshold,
            snooze_step_ms: self.snooze_step_ms,
            require_approval: self.require_approval,
            approval_window_ms: self.approval_window_ms,
            approval_labels: self.approval_labels()?,
            approval_cascade_threshold: self.approval_cascade_threshold,
            destroy_windows: match DestroyWindows::stored(self.destroy_windows.as_deref()) {
                None => None,
                Some(Ok(w)) => Some(w),
                Some(Err(refusals)) => {
                    let why: Vec<String> = refusals
                        .iter()
                        .map(|r| format!("{}: {}", r.field, r.reason))
                        .collect();
                    return Err(Error::Internal(format!(
                        "organization {}: {}",
                        self.id,
                        why.join("; ")
                    )));
                }
            },
        })
    }

    /// The settings' entity tag (AIP-154): changes with every update.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }

    /// Fails closed (AD-4): a policy that does not decode protects every workspace.
    pub fn protects(&self, labels: &BTreeMap<String, String>) -> bool {
        match self.protected_labels() {
            Ok(policy) => policy.iter().any(|(k, v)| labels.get(k) == Some(v)),
            Err(_) => true,
        }
    }
}

/// Organization settings as validated values.
#[derive(Debug, Clone, PartialEq)]
pub struct OrgSettings {
    pub reminder_lead_times_ms: Vec<i64>,
    pub destroy_retry_limit: i32,
    pub max_inactivity_ms: i64,
    pub protected_labels: BTreeMap<String, String>,
    /// `None`: the longest reminder lead time.
    pub minimum_notice_ms: Option<i64>,
    pub confirm_threshold: i32,
    /// `None`: one day.
    pub snooze_step_ms: Option<i64>,
    /// Auto-destroy runs wait for approval, at most `approval_window_ms`.
    pub require_approval: bool,
    pub approval_window_ms: i64,
    /// Only workspaces with one of these labels need approval; empty: every workspace.
    pub approval_labels: BTreeMap<String, String>,
    /// With `require_approval`: the destroy runs of cascades tearing down more entities than
    /// this wait for approval; `None`: cascades need none.
    pub approval_cascade_threshold: Option<i32>,
    /// Automated destroys start only inside these; `None`: any time.
    pub destroy_windows: Option<DestroyWindows>,
}

/// The snooze step of an organization that does not set one.
pub const DEFAULT_SNOOZE_STEP_MS: i64 = 86_400_000;

impl Default for OrgSettings {
    fn default() -> Self {
        Self {
            reminder_lead_times_ms: vec![24 * 3_600_000, 12 * 3_600_000],
            destroy_retry_limit: 2,
            max_inactivity_ms: 9999 * 86_400_000,
            protected_labels: BTreeMap::new(),
            minimum_notice_ms: None,
            confirm_threshold: 25,
            snooze_step_ms: None,
            require_approval: false,
            approval_window_ms: 86_400_000,
            approval_labels: BTreeMap::new(),
            approval_cascade_threshold: None,
            destroy_windows: None,
        }
    }
}

// --- organizations -------------------------------------------------------------------------

/// Creates an organization.
pub async fn create_org(
    conn: &impl ConnectionTrait,
    name: &str,
    settings: &OrgSettings,
    actor: &str,
    now: EpochMs,
) -> Result<OrgRow> {
    let id = uuid::Uuid::now_v7().to_string();
    let inserted = exec(
        conn,
        "INSERT INTO organizations (id, name, reminder_lead_times_ms, destroy_retry_limit, \
         max_inactivity_ms, protected_labels, created_at, updated_at, minimum_notice_ms, \
         confirm_threshold, snooze_step_ms, require_approval, approval_window_ms, \
         destroy_windows, approval_labels, approval_cascade_threshold) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT (name) DO NOTHING",
        [
            id.clone().into(),
            name.into(),
            json!(settings.reminder_lead_times_ms).to_string().into(),
            settings.destroy_retry_limit.into(),
            settings.max_inactivity_ms.into(),
            json!(settings.protected_labels).to_string().into(),
            now.into(),
            settings.minimum_notice_ms.into(),
            settings.confirm_threshold.into(),
            settings.snooze_step_ms.into(),
            settings.require_approval.into(),
            settings.approval_window_ms.into(),
            settings
                .destroy_windows
                .as_ref()
                .map(DestroyWindows::to_json)
                .into(),
            json!(settings.approval_labels).to_string().into(),
            settings.approval_cascade_threshold.into(),
        ],
    )
    .await?;
    if inserted == 0 {
        return Err(Error::AlreadyExists(format!(
            "an organization named {name:?} already exists"
        )));
    }
    outbox::write(
        conn,
        vec![NewEvent::new(
            &id,
            "organization.created",
            "organization",
            &id,
            actor,
            json!({"name": name}),
        )],
        now,
    )
    .await?;
    get_org(conn, &id).await
}

/// An organization by id.
pub async fn get_org(conn: &impl ConnectionTrait, id: &str) -> Result<OrgRow> {
    query_one(
        conn,
        &format!("SELECT {ORG_COLUMNS} FROM organizations WHERE id = $1"),
        [id.into()],
    )
    .await?
    .ok_or_else(|| Error::not_found("organization", id))
}

/// One page of organizations, oldest first, after `after` (created_at, id): only `only` when
/// given (the caller's own), only those named `name` when given.
pub async fn list_orgs(
    conn: &impl ConnectionTrait,
    only: Option<&str>,
    name: Option<&str>,
    after: Option<(i64, String)>,
    limit: u64,
) -> Result<Vec<OrgRow>> {
    let mut q = Query::select();
    q.expr(Expr::cust(format!("{ORG_COLUMNS} FROM organizations")));
    if let Some(id) = only {
        q.and_where(Expr::col("id").eq(id));
    }
    if let Some(name) = name {
        q.and_where(Expr::col("name").eq(name));
    }
    if let Some(position) = after {
        q.cond_where(keyset("created_at", "id", position, Order::Asc));
    }
    q.order_by("created_at", Order::Asc)
        .order_by("id", Order::Asc)
        .limit(limit);
    select_all(conn, &q).await
}

/// An organization by id, its row locked for the rest of the transaction (PostgreSQL; SQLite
/// serializes writers), so a read-modify-write of its settings loses nothing.
pub async fn lock_org(conn: &impl ConnectionTrait, id: &str) -> Result<OrgRow> {
    query_one(
        conn,
        &format!(
            "SELECT {ORG_COLUMNS} FROM organizations o WHERE id = $1{}",
            for_update(conn, "o")
        ),
        [id.into()],
    )
    .await?
    .ok_or_else(|| Error::not_found("organization", id))
}

/// Replaces an organization's settings; see `auto_destroy::policy` for what follows for its
/// workspaces.
pub async fn update_org_settings(
    conn: &impl ConnectionTrait,
    id: &str,
    settings: &OrgSettings,
    actor: &str,
    now: EpochMs,
) -> Result<OrgRow> {
    let n = exec(
        conn,
        "UPDATE organizations SET reminder_lead_times_ms = $1, destroy_retry_limit = $2, \
         max_inactivity_ms = $3, protected_labels = $4, updated_at = $5, minimum_notice_ms = $7, \
         confirm_threshold = $8, snooze_step_ms = $9, require_approval = $10, \
         approval_window_ms = $11, destroy_windows = $12, approval_labels = $13, \
         approval_cascade_threshold = $14, version = version + 1 WHERE id = $6",
        [
            json!(settings.reminder_lead_times_ms).to_string().into(),
            settings.destroy_retry_limit.into(),
            settings.max_inactivity_ms.into(),
            json!(settings.protected_labels).to_string().into(),
            now.into(),
            id.into(),
            settings.minimum_notice_ms.into(),
            settings.confirm_threshold.into(),
            settings.snooze_step_ms.into(),
            settings.require_approval.into(),
            settings.approval_window_ms.into(),
            settings
                .destroy_windows
                .as_ref()
                .map(DestroyWindows::to_json)
                .into(),
            json!(settings.approval_labels).to_string().into(),
            settings.approval_cascade_threshold.into(),
        ],
    )
    .await?;
    if n == 0 {
        return Err(Error::not_found("organization", id));
    }
    outbox::write(
        conn,
        vec![NewEvent::new(
            id,
            "organization.settings_updated",
            "organization",
            id,
            actor,
            json!({}),
        )],
        now,
    )
    .await?;
    get_org(conn, id).await
}

// --- auto-destroy settings -----------------------------------------------------------------

pub fn check_inactivity_max(field: &str, inactivity_ms: Option<i64>, org: &OrgRow) -> Result<()> {
    match inactivity_ms {
        Some(ms) if ms > org.max_inactivity_ms => Err(Error::invalid(
            field,
            format!(
                "exceeds the organization's maximum inactivity of {}",
                ebb_common::time::human(org.max_inactivity_ms)
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(protected_labels: &str, lead_times: &str) -> OrgRow {
        OrgRow {
            id: "org-1".into(),
            name: "acme".into(),
            reminder_lead_times_ms: lead_times.into(),
            destroy_retry_limit: 2,
            max_inactivity_ms: 86_400_000,
            protected_labels: protected_labels.into(),
            minimum_notice_ms: None,
            confirm_threshold: 25,
            snooze_step_ms: None,
            require_approval: false,
            approval_window_ms: 86_400_000,
            destroy_windows: None,
            approval_labels: "{}".into(),
            approval_cascade_threshold: None,
            version: 0,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn the_label_policy_protects_matching_workspaces_only() {
        let o = org(r#"{"env":"prod"}"#, "[]");
        let prod = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
        let dev = BTreeMap::from([("env".to_owned(), "dev".to_owned())]);
        assert!(o.protects(&prod));
        assert!(!o.protects(&dev));
    }

    #[test]
    fn an_unreadable_policy_protects_every_workspace() {
        let o = org("{not json", "[]");
        assert!(o.protects(&BTreeMap::new()));
        let err = o
            .protected_labels()
            .expect_err("corrupt policy must not decode");
        let text = err.to_string();
        assert!(text.contains("organizations.protected_labels"), "{text}");
        assert!(text.contains("org-1"), "{text}");
    }

    #[test]
    fn the_minimum_notice_defaults_to_the_longest_lead_time() {
        let mut o = org("{}", "[86400000, 43200000]");
        assert_eq!(o.minimum_notice_ms().ok(), Some(86_400_000));
        o.minimum_notice_ms = Some(0);
        assert_eq!(o.minimum_notice_ms().ok(), Some(0), "zero turns it off");
    }

    #[test]
    fn unreadable_lead_times_are_an_error_naming_the_row() {
        let err = org("{}", "[1, \"x\"]")
            .lead_times()
            .expect_err("corrupt lead times must not decode");
        assert!(
            err.to_string()
                .contains("reminder_lead_times_ms of row org-1")
        );
    }
}
