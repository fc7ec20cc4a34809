//! Snooze links in reminders: a reminder of a workspace's auto-destroy carries a signed,
//! expiring, single-use link that pushes the destroy later by the organization's snooze step,
//! within its maximum. Opened in a browser (`GET` shows what it would do, `POST` does it — a
//! mail scanner that fetches links changes nothing) or pressed as a Slack button (Slack
//! interactivity, verified with Slack's `v0` request signature). Served by every lifecycle
//! replica on its own HTTP port ([`http`]).
//!
//! A link names the workspace and the due time it reminds of, and is signed (HMAC-SHA256) with
//! a key the replicas share, kept sealed under the encryption key ([`crate::secrets`]). It
//! expires when that destroy comes; it changes nothing when the schedule has moved since the
//! reminder; and its id is the primary key of `snooze_links_used`, so the database refuses a
//! second use. Each use is audited with the reminder as actor.

pub mod http;
mod slack;

use ebb_common::Error;
use ebb_common::time::{EpochMs, rfc3339};

use crate::actor::{self, Actor};
use crate::auto_destroy::settings;
use crate::core::Lifecycle;
use crate::store::exec;
use crate::tenancy::orgs;
pub use crate::timing::snooze_links::{Claims, Links, Refused};
use crate::workspaces;

/// What a used link did.
#[derive(Debug, Clone)]
pub struct Snoozed {
    pub workspace_name: String,
    pub previous: EpochMs,
    pub next: Option<EpochMs>,
}

/// Why a genuine link did nothing.
#[derive(Debug)]
pub enum NotDone {
    /// Used before.
    Used,
    /// The schedule moved, or the destroy went, since the reminder.
    Stale,
    /// The organization turned snoozing off.
    Off,
    /// Another refusal (beyond the maximum, for one), in words; or a fault.
    Refused(Error),
}

/// Uses the link of `claims`: records it as used and pushes the destroy by the organization's
/// snooze step, in one transaction, audited with the reminder as actor.
pub async fn snooze(
    core: &Lifecycle,
    claims: &Claims,
    via: &str,
    slack_user: &str,
) -> std::result::Result<Snoozed, NotDone> {
    let actor = Actor::Reminder {
        link_id: claims.link_id.clone(),
        workspace_id: claims.workspace_id.clone(),
        via: via.to_owned(),
        slack_user: slack_user.to_owned(),
    };
    actor::acting(actor, async {
        let txn = core.begin().await.map_err(NotDone::Refused)?;
        let now = core.now();
        // Recorded first, so a used link says so even after its schedule moved; any refusal
        // below rolls the record back with the rest.
        let used = exec(
            &txn,
            "INSERT INTO snooze_links_used (link_id, workspace_id, due_at, via, used_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (link_id) DO NOTHING",
            [
                claims.link_id.clone().into(),
                claims.workspace_id.clone().into(),
                claims.due_at.into(),
                via.into(),
                now.into(),
            ],
        )
        .await
        .map_err(NotDone::Refused)?;
        if used == 0 {
            return Err(NotDone::Used);
        }
        let ws = match workspaces::lock_workspace_row(&txn, &claims.workspace_id).await {
            Ok(ws) => ws,
            Err(Error::NotFound { .. }) => return Err(NotDone::Stale),
            Err(e) => return Err(NotDone::Refused(e)),
        };
        if ws.next_auto_destroy_at != Some(claims.due_at) {
            return Err(NotDone::Stale);
        }
        let org = orgs::get_org(&txn, &ws.organization_id)
            .await
            .map_err(NotDone::Refused)?;
        let step = org.snooze_step_ms();
        if step <= 0 {
            return Err(NotDone::Off);
        }
        let actor_name = actor::name_or("reminder");
        let after = settings::extend_auto_destroy(&txn, &ws.id, step, &actor_name, now)
            .await
            .map_err(NotDone::Refused)?;
        txn.commit().await.map_err(|e| NotDone::Refused(e.into()))?;
        tracing::info!(
            workspace = %ws.id,
            link = %claims.link_id,
            via,
            previous = %rfc3339(claims.due_at),
            "snoozed from a reminder"
        );
        Ok(Snoozed {
            workspace_name: ws.name.clone(),
            previous: claims.due_at,
            next: after.next_auto_destroy_at,
        })
    })
    .await
}
