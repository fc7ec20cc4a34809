//! The invariants, checked against the database after every step.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ebb_common::time::{EpochMs, rfc3339};
use sea_orm::FromQueryResult;
use serde_json::Value as Json;

use crate::store::{query_all, query_one};
use crate::workspaces::{AutoDestroyStatus, WorkspaceRow, WorkspaceState};

use super::case::{FIRST_ACCOUNT_WORKSPACE, Op, WORKSPACES};
use super::model::inactivity_due;
use super::running::count;
use super::world::{Applied, RunView, World, unexpected};

#[derive(Debug, FromQueryResult)]
struct Count {
    n: i64,
}

/// A tenant that runs on the account a deprovisioning destroy run is for.
#[derive(Debug, FromQueryResult)]
struct UpstreamUser {
    run_id: String,
    account: String,
    tenant: String,
    tenant_state: String,
    edge_state: String,
    /// Whether the tenant's step in the action run of the account's step succeeded.
    torn_down_here: bool,
}

impl World {
    /// Records the due times of protected workspaces that have come (AD-12): any of the
    /// one-shot, inactivity and retry branches, past the start of the protection and not fired.
    fn record_came_due(&mut self, rows: &[WorkspaceRow]) {
        let now = self.model.now;
        let mut came = Vec::new();
        for (i, ws) in rows.iter().enumerate() {
            let Some(since) = self.model.protected_since[i] else {
                continue;
            };
            if ws.state != WorkspaceState::Active
                || ws.auto_destroy_status == AutoDestroyStatus::Failed
            {
                continue;
            }
            for due in [
                ws.auto_destroy_at,
                inactivity_due(ws),
                ws.auto_destroy_retry_at,
                self.model.recurring_due(i, ws),
            ]
            .into_iter()
            .flatten()
            {
                let unfired = ws.last_fired_due_at.is_none_or(|f| due > f);
                if due > since && due <= now && unfired {
                    came.push((i, due));
                }
            }
        }
        self.model.came_due_protected.extend(came);
    }

    /// One step: apply `op`, then check every invariant against the database.
    pub(super) async fn step(&mut self, op: &Op) -> Result<(), String> {
        let before = self.workspaces(&self.core.db.conn).await?;
        self.record_came_due(&before);
        let protected_before = self.model.protection();
        let applied = self.apply(op, &before).await?;
        let after = self.workspaces(&self.core.db.conn).await?;
        let protected_after = self.model.protection();
        let now = self.model.now;
        let kind = format!("{op:?}");
        let kind = kind.split([' ', '{']).next().unwrap_or_default();
        let ended = if applied.refused.is_some() {
            "refused"
        } else {
            "done"
        };
        count(format!("op {kind} {ended}"), 1);

        if let Some(reason) = &applied.refused {
            // A refusal changes nothing.
            if format!("{before:?}") != format!("{after:?}") {
                return Err(format!(
                    "a refused operation changed the database ({reason})"
                ));
            }
        }
        for i in 0..WORKSPACES {
            match (protected_before[i], protected_after[i]) {
                (false, true) => self.model.protected_since[i] = Some(now),
                (_, false) => self.model.protected_since[i] = None,
                (true, true) => {}
            }
            let stored = after[i].protected || after[i].protected_by_policy;
            if stored != protected_after[i] {
                return Err(format!(
                    "w{i}: protection is {stored} in the database, {} by flag and label policy",
                    protected_after[i]
                ));
            }
        }
        for &i in &applied.implicit {
            let (b, a) = (
                before[i].next_auto_destroy_at,
                after[i].next_auto_destroy_at,
            );
            if a.is_some_and(|a| b.is_none_or(|b| a < b)) {
                self.model.implicit_at[i] = Some(now);
            }
        }
        if applied.refused.is_none() {
            // The operator's new schedule is a new decision: what came due while protected
            // under the old one may recur under it.
            for &i in &applied.resettled {
                self.model.came_due_protected.retain(|(w, _)| *w != i);
            }
        }
        for &i in &applied.explicit {
            if let Some(at) = after[i].auto_destroy_at {
                self.model.explicit_at[i].insert(at);
            }
            // An extension of the current recurring occurrence.
            if let (Op::Extend { .. }, Some(at)) = (op, after[i].recurring_due_at)
                && before[i].recurring_due_at != Some(at)
            {
                self.model.recurring_extended[i].insert(at);
            }
        }
        for i in 0..WORKSPACES {
            // A failed auto-destroy that schedules its retry (AD-8) changes the schedule last,
            // and not by policy; so does an applied state version (AD-12).
            let retry = after[i].auto_destroy_retry_at;
            if applied.activity.contains(&i)
                || (retry.is_some() && retry != before[i].auto_destroy_retry_at)
            {
                self.model.implicit_at[i] = None;
            }
        }
        // AD-12: a held schedule that came is consumed — `workspace.auto_destroy.skipped` —
        // by the tick that finds it, or by the change that lifts the protection.
        for i in 0..WORKSPACES {
            let Some(held) = before[i].held_due_at.filter(|h| *h <= now) else {
                continue;
            };
            let lifted = protected_before[i] && !protected_after[i];
            let ticked = applied.tick && protected_before[i];
            if (lifted || ticked) && !self.skipped(i, held).await? {
                return Err(format!(
                    "w{i}: the schedule held by protection due at {} came, but no \
                     workspace.auto_destroy.skipped was recorded",
                    rfc3339(held)
                ));
            }
        }
        if matches!(op, Op::Advance { .. }) {
            self.record_came_due(&after);
        }
        self.check_recurring(&before, &after, &applied, &protected_before)
            .await?;
        self.check_runs(&after).await
    }

    async fn skipped(&self, ws: usize, due: EpochMs) -> Result<bool, String> {
        Ok(self.skip_reason(ws, due).await?.is_some())
    }

    /// The reason of the `workspace.auto_destroy.skipped` event recorded for `due`, if any.
    async fn skip_reason(&self, ws: usize, due: EpochMs) -> Result<Option<String>, String> {
        let due = rfc3339(due);
        Ok(self
            .events("workspace.auto_destroy.skipped", &self.ws[ws])
            .await?
            .iter()
            .filter_map(|e| serde_json::from_str::<Json>(&e.data).ok())
            .find(|d| d["due_at"] == due.as_str())
            .map(|d| d["reason"].as_str().unwrap_or_default().to_owned()))
    }

    /// Whether `due` on the workspace as it was (`ws`) is its recurring occurrence and no
    /// other schedule's due time.
    fn recurring_only(&self, i: usize, ws: &WorkspaceRow, due: EpochMs) -> bool {
        self.model.recurring_due(i, ws) == Some(due)
            && ws.auto_destroy_at != Some(due)
            && ws.auto_destroy_retry_at != Some(due)
            && inactivity_due(ws) != Some(due)
    }

    /// Recurring schedules: the stored schedule is the one last set, its occurrence a time
    /// the cron names (or an extension of one); an occurrence fires only when the workspace
    /// has had an applied state version since its last destroy, and one that comes with
    /// nothing to destroy is recorded as skipped (`nothing_to_destroy`) by the tick that
    /// finds it.
    async fn check_recurring(
        &self,
        before: &[WorkspaceRow],
        after: &[WorkspaceRow],
        applied: &Applied,
        protected_before: &[bool; WORKSPACES],
    ) -> Result<(), String> {
        let now = self.model.now;
        for (i, ws) in after.iter().enumerate() {
            let stored = ws
                .recurring_cron
                .as_deref()
                .zip(ws.recurring_time_zone.as_deref());
            let set = self.model.recurring[i]
                .as_ref()
                .map(|r| (r.cron(), r.time_zone()));
            if stored != set {
                return Err(format!(
                    "w{i}: the recurring schedule stored is {stored:?}, the one last set {set:?}"
                ));
            }
            if let Some(due) = ws.recurring_due_at
                && !self.model.is_occurrence(i, due)
            {
                return Err(format!(
                    "w{i}: the recurring occurrence stored, {}, is no time its cron names",
                    rfc3339(due)
                ));
            }
        }
        for r in self.runs().await? {
            let (Some(due), true) = (r.fire_due_at, r.source == "auto_destroy") else {
                continue;
            };
            let i = self.index[&r.workspace_id];
            if self.model.runs.contains(&r.id) || !self.recurring_only(i, &before[i], due) {
                continue;
            }
            if !before[i].applied_since_destroy {
                return Err(format!(
                    "w{i}: the recurring occurrence due at {} fired with nothing to destroy",
                    rfc3339(due)
                ));
            }
        }
        if !applied.tick {
            return Ok(());
        }
        for (i, ws) in before.iter().enumerate() {
            let Some(due) = ws.next_auto_destroy_at.filter(|d| *d <= now) else {
                continue;
            };
            if protected_before[i]
                || ws.applied_since_destroy
                || ws.state != WorkspaceState::Active
                || ws.auto_destroy_status == AutoDestroyStatus::Failed
                || !self.recurring_only(i, ws, due)
            {
                continue;
            }
            let reason = self.skip_reason(i, due).await?;
            if reason.as_deref() != Some("nothing_to_destroy") {
                return Err(format!(
                    "w{i}: the recurring occurrence due at {} came with nothing to destroy; \
                     skipped event: {reason:?}",
                    rfc3339(due)
                ));
            }
        }
        Ok(())
    }

    /// The invariants on runs: for every new run, and over all runs.
    async fn check_runs(&mut self, rows: &[WorkspaceRow]) -> Result<(), String> {
        let runs = self.runs().await?;
        let mut active_destroys: BTreeMap<&str, usize> = BTreeMap::new();
        let mut fire_keys: BTreeSet<(&str, i64)> = BTreeSet::new();
        for r in &runs {
            // Approval: a run that needs it is never taken by a runner before an approval;
            // rejected or expired, it ends canceled (never run, never approved by itself).
            match (r.approval.as_deref(), r.status.as_str()) {
                (None | Some("approved"), _) | (Some("pending"), "queued" | "canceled") => {}
                (Some("rejected" | "expired"), "canceled") => {}
                (Some(approval), status) => {
                    return Err(format!(
                        "w{}: run {} is {status} with its approval {approval}",
                        self.index[&r.workspace_id], r.id
                    ));
                }
            }
            if r.is_destroy && matches!(r.status.as_str(), "queued" | "running") {
                let n = active_destroys.entry(&r.workspace_id).or_default();
                *n += 1;
                if *n > 1 {
                    return Err(format!(
                        "w{}: two active destroy runs",
                        self.index[&r.workspace_id]
                    ));
                }
            }
            if let Some(due) = r.fire_due_at
                && !fire_keys.insert((&r.workspace_id, due))
            {
                return Err(format!(
                    "w{}: two runs for the fire key due at {}",
                    self.index[&r.workspace_id],
                    rfc3339(due)
                ));
            }
        }
        for r in runs.iter().filter(|r| !self.model.runs.contains(&r.id)) {
            let i = self.index[&r.workspace_id];
            if r.source == "auto_destroy" {
                self.check_auto_destroy_run(i, &rows[i], r)?;
            }
            if r.is_destroy {
                self.check_cause(i, r).await?;
            }
        }
        self.check_shared_upstreams(&runs).await?;
        self.model.runs.extend(runs.into_iter().map(|r| r.id));
        Ok(())
    }

    /// DP-10: an account's deprovisioning destroy run is queued only once every tenant that
    /// runs on it is torn down — already (decommissioned) or by a step of the same action run
    /// that succeeded — and while it is active no tenant has an `active` edge to the account;
    /// once one succeeded, no other is queued. (The account's workspace may still be destroyed
    /// by its own schedule or by hand: that is no cascade.)
    async fn check_shared_upstreams(&self, runs: &[RunView]) -> Result<(), String> {
        let users: Vec<UpstreamUser> = query_all(
            &self.core.db.conn,
            "SELECT r.id AS run_id, a.name AS account, t.name AS tenant, \
             t.state AS tenant_state, rel.state AS edge_state, \
             EXISTS (SELECT 1 FROM action_steps mine JOIN action_steps theirs \
                     ON theirs.action_run_id = mine.action_run_id \
                     WHERE mine.run_id = r.id AND theirs.entity_id = t.id \
                     AND theirs.status = 'succeeded') AS torn_down_here \
             FROM runs r \
             JOIN entities a ON a.workspace_id = r.workspace_id AND a.kind = 'account' \
             JOIN relationships rel ON rel.to_entity_id = a.id AND rel.type = 'runs_on' \
             AND rel.state <> 'removed' \
             JOIN entities t ON t.id = rel.from_entity_id \
             WHERE r.organization_id = $1 AND r.source = 'deprovision'",
            [self.org.clone().into()],
        )
        .await
        .map_err(|e| unexpected("reading the users of accounts", e))?;
        let status: HashMap<&str, &str> = runs
            .iter()
            .map(|r| (r.id.as_str(), r.status.as_str()))
            .collect();
        // Two cascades over two users of one account destroy it once (DP-10).
        let mut destroyed = BTreeSet::new();
        for r in runs.iter().filter(|r| r.source == "deprovision") {
            let i = self.index[&r.workspace_id];
            if i < FIRST_ACCOUNT_WORKSPACE {
                continue;
            }
            if destroyed.contains(&i) && !self.model.runs.contains(&r.id) {
                return Err(format!(
                    "a second cascade destroy run was queued on the account of w{i}, whose \
                     destroy already succeeded"
                ));
            }
            if r.status == "succeeded" {
                destroyed.insert(i);
            }
        }
        for u in &users {
            let active = matches!(status.get(u.run_id.as_str()), Some(&("queued" | "running")));
            if active && u.edge_state == "active" {
                return Err(format!(
                    "account {} has an active destroy run while tenant {} still runs on it",
                    u.account, u.tenant
                ));
            }
            let new = !self.model.runs.contains(&u.run_id);
            if new && u.tenant_state != "decommissioned" && !u.torn_down_here {
                return Err(format!(
                    "a destroy run was queued on account {} while tenant {} ({}, edge {}) is \
                     not torn down",
                    u.account, u.tenant, u.tenant_state, u.edge_state
                ));
            }
        }
        Ok(())
    }

    fn check_auto_destroy_run(
        &self,
        i: usize,
        ws: &WorkspaceRow,
        r: &RunView,
    ) -> Result<(), String> {
        let Some(due) = r.fire_due_at else {
            return Err(format!("w{i}: auto-destroy run {} has no fire key", r.id));
        };
        // Which schedule fired, for the reader of a failure.
        let branch = if ws.auto_destroy_retry_at == Some(due) {
            "retry"
        } else if ws.auto_destroy_at == Some(due) || self.model.explicit_at[i].contains(&due) {
            "one-shot"
        } else if self.model.is_occurrence(i, due) {
            "recurring"
        } else {
            "inactivity"
        };
        // AD-4: never queued on a protected workspace.
        if self.model.protected(i) {
            return Err(format!(
                "w{i}: auto-destroy run ({branch} due {}) queued while the workspace is protected",
                rfc3339(due)
            ));
        }
        // Approval: exactly the runs its scope names wait for it.
        let needs = match self.model.approval {
            None => false,
            Some(prod_only) => !prod_only || self.model.prod[i],
        };
        if needs != r.approval.is_some() {
            return Err(format!(
                "w{i}: auto-destroy run ({branch} due {}) queued with approval {:?}, but the \
                 organization's scope says it {} approval",
                rfc3339(due),
                r.approval,
                if needs { "needs" } else { "needs no" }
            ));
        }
        // Destroy windows: an automated destroy starts only inside one.
        if !self.model.in_window(r.created_at) {
            return Err(format!(
                "w{i}: auto-destroy run ({branch} due {}) queued at {}, outside every destroy \
                 window",
                rfc3339(due),
                rfc3339(r.created_at)
            ));
        }
        // AD-12: what came due while protected is consumed, never fired.
        if self.model.came_due_protected.contains(&(i, due)) {
            return Err(format!(
                "w{i}: auto-destroy run for the {branch} due at {}, which came due while the \
                 workspace was protected",
                rfc3339(due)
            ));
        }
        // AD-12: after a policy change brought the destroy forward, no implicit destroy
        // sooner than the minimum notice; the operator's explicit one-shot is honoured as
        // given.
        if let Some(changed) = self.model.implicit_at[i]
            && !self.model.explicit_at[i].contains(&due)
            && r.created_at < changed + self.model.notice_ms
        {
            return Err(format!(
                "w{i}: auto-destroy run ({branch} due {}) queued at {}, sooner than the minimum \
                 notice of {} after the change at {} that brought it forward",
                rfc3339(due),
                rfc3339(r.created_at),
                ebb_common::time::human(self.model.notice_ms),
                rfc3339(changed)
            ));
        }
        Ok(())
    }

    /// Every destroy run links to its cause: a `run.queued` event with an actor that names
    /// the fire key, the action run or the person who asked.
    async fn check_cause(&self, i: usize, r: &RunView) -> Result<(), String> {
        let events = self.events("run.queued", &r.id).await?;
        let mut seen = Vec::new();
        for e in &events {
            let Ok(data) = serde_json::from_str::<Json>(&e.data) else {
                continue;
            };
            let named = !e.actor.is_empty()
                && data["actor"]["id"]
                    .as_str()
                    .is_some_and(|id| !id.is_empty());
            let cause = match r.source.as_str() {
                "auto_destroy" => {
                    data["source"] == "auto_destroy"
                        && r.fire_due_at
                            .is_some_and(|d| data["fire_due_at"] == rfc3339(d).as_str())
                }
                "deprovision" => match data["action_run_id"].as_str() {
                    Some(action_run) => self.step_of(&r.id, action_run).await?,
                    None => false,
                },
                _ => data["source"] == "manual",
            };
            if named && cause {
                return Ok(());
            }
            seen.push(format!("{} {}", e.actor, e.data));
        }
        Err(format!(
            "w{i}: {} destroy run {} has no run.queued event naming its actor and cause \
             (events: {seen:?})",
            r.source, r.id
        ))
    }

    async fn step_of(&self, run_id: &str, action_run_id: &str) -> Result<bool, String> {
        let row: Option<Count> = query_one(
            &self.core.db.conn,
            "SELECT COUNT(*) AS n FROM action_steps WHERE run_id = $1 AND action_run_id = $2",
            [run_id.into(), action_run_id.into()],
        )
        .await
        .map_err(|e| unexpected("reading action steps", e))?;
        Ok(row.is_some_and(|c| c.n == 1))
    }
}
