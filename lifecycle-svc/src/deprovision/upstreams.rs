//! Shared upstreams (DP-10), as Kubernetes garbage collection treats owners: an entity a
//! cascade reaches is torn down only when every entity that runs on it is torn down in the same
//! action run or already; otherwise it is kept.
//!
//! The decision is [`decide`], a pure function of how each user of the upstream stands. It is
//! made twice: when the plan is computed (an upstream is planned, planned after other running
//! action runs, or kept) and again when the upstream's step becomes ready, under a lock on the
//! upstream's entity row, because users may have come, gone or finished meanwhile. Whoever
//! decides holds that lock (`SELECT … FOR UPDATE` on PostgreSQL; SQLite serializes writers),
//! and an action run that ends takes the locks of the upstreams it touched before it looks
//! for runs waiting on them, so two runs over two users of one upstream see each other's
//! outcome and destroy it exactly once.

use std::collections::{BTreeSet, HashMap};

use ebb_common::Result;
use ebb_common::time::EpochMs;
use sea_orm::{ConnectionTrait, DatabaseBackend, FromQueryResult, Value};
use serde_json::json;

use crate::deprovision::action_runs::{
    ActionRunRow, ActionRunStatus, StepRow, StepStatus, pending_steps,
};
use crate::deprovision::catalog::ActionDef;
use crate::deprovision::relationships::{EdgeState, RELATIONSHIP_COLUMNS, RelationshipRow};
use crate::deprovision::{entities, relationships};
use crate::events::{NewEvent, outbox};
use crate::store::{CHUNK, IdRow, exec, placeholders, query_all};

/// How one entity that runs on an upstream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Torn down by this action run: planned in it, or its step here succeeded.
    ThisRun,
    /// Torn down already: its edge is `removing` by an action run that succeeded (its grace
    /// period is pending). A `removed` edge is no use at all.
    TornDown,
    /// Being torn down by another action run that is still running.
    BeingTornDown,
    /// Still using it: an active edge, an edge left `removing` by a run that failed or was
    /// canceled, or an entity this run keeps.
    InUse,
}

/// One entity that runs on an upstream: its `kind/name` and how it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub standing: Standing,
}

/// What becomes of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every user is torn down here or already: tear it down.
    TearDown,
    /// Every user is torn down or being torn down, some by other running action runs (named
    /// here): tear it down once those have succeeded.
    AfterOthers(Vec<String>),
    /// Some users (named here) still use it: keep it.
    Keep(Vec<String>),
}

/// The decision over an upstream's users. Fails closed: one user still using it keeps it,
/// whatever the others do.
pub fn decide(users: &[User]) -> Verdict {
    let names = |standing: Standing| -> Vec<String> {
        users
            .iter()
            .filter(|u| u.standing == standing)
            .map(|u| u.name.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let in_use = names(Standing::InUse);
    if !in_use.is_empty() {
        return Verdict::Keep(in_use);
    }
    let others = names(Standing::BeingTornDown);
    if others.is_empty() {
        Verdict::TearDown
    } else {
        Verdict::AfterOthers(others)
    }
}

/// One live edge of a cascaded type into an upstream, with what decides how its user stands.
#[derive(Debug, Clone, FromQueryResult)]
pub struct UserEdge {
    /// The upstream.
    pub to_entity_id: String,
    pub from_entity_id: String,
    pub user_kind: String,
    pub user_name: String,
    pub state: EdgeState,
    /// The action run that last moved the edge.
    pub action_run_id: Option<String>,
    /// Where that action run stands.
    pub run_status: Option<ActionRunStatus>,
    /// The user's own step in the action run asked about, if it has one.
    pub step_status: Option<StepStatus>,
}

impl UserEdge {
    /// The user as `kind/name`.
    pub fn user(&self) -> String {
        format!("{}/{}", self.user_kind, self.user_name)
    }

    /// How a user stands that is not part of action run `run_id` (if any): by its edge.
    pub fn standing_outside(&self, run_id: Option<&str>) -> Standing {
        let by_this_run = run_id.is_some() && self.action_run_id.as_deref() == run_id;
        match (self.state, self.run_status) {
            (EdgeState::Removing, Some(ActionRunStatus::Succeeded)) => Standing::TornDown,
            (EdgeState::Removing, Some(ActionRunStatus::Running)) if !by_this_run => {
                Standing::BeingTornDown
            }
            _ => Standing::InUse,
        }
    }

    /// How the user stands for a step of action run `run_id` that became ready: torn down here
    /// only if its own step here succeeded.
    pub fn standing_at_step(&self, run_id: &str) -> Standing {
        match self.step_status {
            Some(StepStatus::Succeeded) => Standing::ThisRun,
            Some(_) => Standing::InUse,
            None => self.standing_outside(Some(run_id)),
        }
    }
}

/// Every live edge of `types` into `upstreams`, with its user; with `run_id`, the user's step
/// in that action run.
pub async fn users(
    conn: &impl ConnectionTrait,
    upstreams: &[String],
    types: &[String],
    run_id: Option<&str>,
) -> Result<Vec<UserEdge>> {
    if types.is_empty() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for chunk in upstreams.chunks(CHUNK) {
        let ids = placeholders(2, chunk.len());
        let type_list = placeholders(2 + chunk.len(), types.len());
        let mut values: Vec<Value> = vec![run_id.map(str::to_owned).into()];
        values.extend(chunk.iter().map(|id| Value::from(id.clone())));
        values.extend(types.iter().map(|t| Value::from(t.clone())));
        found.extend(
            query_all::<UserEdge>(
                conn,
                &format!(
                    "SELECT r.to_entity_id, r.from_entity_id, e.kind AS user_kind, \
             e.name AS user_name, r.state, r.action_run_id, a.status AS run_status, \
             s.status AS step_status \
             FROM relationships r JOIN entities e ON e.id = r.from_entity_id \
             LEFT JOIN action_runs a ON a.id = r.action_run_id \
             LEFT JOIN action_steps s ON s.action_run_id = $1 AND s.entity_id = r.from_entity_id \
             WHERE r.to_entity_id IN ({ids}) AND r.type IN ({type_list}) AND r.state <> 'removed' \
             ORDER BY r.to_entity_id, e.kind, e.name"
                ),
                values,
            )
            .await?,
        );
    }
    Ok(found)
}

/// Locks the entity rows of `ids`, in id order so that lockers never wait on each other in a
/// circle. On SQLite writers are serialized already.
pub async fn lock(conn: &impl ConnectionTrait, ids: &[String]) -> Result<()> {
    if ids.is_empty() || conn.get_database_backend() != DatabaseBackend::Postgres {
        return Ok(());
    }
    let mut sorted: Vec<&String> = ids.iter().collect();
    sorted.sort();
    sorted.dedup();
    for chunk in sorted.chunks(CHUNK) {
        let _: Vec<IdRow> = query_all(
            conn,
            &format!(
                "SELECT id FROM entities WHERE id IN ({}) ORDER BY id FOR UPDATE",
                placeholders(1, chunk.len())
            ),
            chunk.iter().map(|id| Value::from((*id).clone())),
        )
        .await?;
    }
    Ok(())
}

/// What the gate decided for ready steps of upstreams.
#[derive(Debug, Default)]
pub struct Gates {
    /// Nobody else runs on these: they may start.
    pub open: Vec<StepRow>,
    /// Ended `kept` (their note written, their edges back to `active`); to be marked done.
    pub kept: Vec<String>,
    // The rest stay pending: other running action runs are tearing down their other users (or
    // another transaction took the step meanwhile). Their end advances this run again.
}

/// Re-checks, under a lock on each entity row, who runs on the upstreams of steps of `run`
/// that became ready. Fails closed: one user still on an upstream keeps it.
pub async fn gate(
    conn: &impl ConnectionTrait,
    run: &ActionRunRow,
    def: &ActionDef,
    steps: &[StepRow],
    actor: &str,
    now: EpochMs,
) -> Result<Gates> {
    let mut gates = Gates::default();
    let types = def.cascaded_types();
    let mut steps: Vec<&StepRow> = steps.iter().collect();
    steps.sort_by(|a, b| a.entity_id.cmp(&b.entity_id));
    for chunk in steps.chunks(CHUNK) {
        let entity_ids: Vec<String> = chunk.iter().map(|s| s.entity_id.clone()).collect();
        lock(conn, &entity_ids).await?;
        // Read again under the lock: another transaction may have decided them meanwhile.
        let ids: Vec<String> = chunk.iter().map(|s| s.id.clone()).collect();
        let current = pending_steps(conn, &ids).await?;
        let mut by_upstream: HashMap<String, Vec<User>> = HashMap::new();
        for u in users(conn, &entity_ids, &types, Some(&run.id)).await? {
            by_upstream
                .entry(u.to_entity_id.clone())
                .or_default()
                .push(User {
                    name: u.user(),
                    standing: u.standing_at_step(&run.id),
                });
        }
        for step in current {
            let standing = by_upstream.remove(&step.entity_id).unwrap_or_default();
            match decide(&standing) {
                Verdict::TearDown => gates.open.push(step),
                Verdict::AfterOthers(others) => {
                    tracing::debug!(
                        action_run_id = %run.id,
                        entity_id = %step.entity_id,
                        others = ?others,
                        "shared upstream waits for other action runs"
                    );
                }
                Verdict::Keep(used_by) => {
                    keep(conn, run, &step, &used_by, actor, now).await?;
                    gates.kept.push(step.id);
                }
            }
        }
    }
    Ok(gates)
}

/// Keeps a step's upstream: its note says who still uses it, and the edges this run moved from
/// it to what it runs on go back to `active`, since it still runs on them. The caller marks
/// the step done (`kept`).
async fn keep(
    conn: &impl ConnectionTrait,
    run: &ActionRunRow,
    step: &StepRow,
    used_by: &[String],
    actor: &str,
    now: EpochMs,
) -> Result<()> {
    exec(
        conn,
        "UPDATE action_steps SET error = $1 WHERE id = $2",
        [
            format!("kept: still used by {}", used_by.join(", ")).into(),
            step.id.clone().into(),
        ],
    )
    .await?;
    let moved: Vec<RelationshipRow> = query_all(
        conn,
        &format!(
            "SELECT {RELATIONSHIP_COLUMNS} FROM relationships \
             WHERE from_entity_id = $1 AND action_run_id = $2 AND state = 'removing'"
        ),
        [step.entity_id.clone().into(), run.id.clone().into()],
    )
    .await?;
    relationships::transition_relationships(conn, &moved, EdgeState::Active, &run.id, actor, now)
        .await?;
    let entity = entities::get_entity(conn, &step.entity_id).await?;
    tracing::info!(
        action_run_id = %run.id,
        entity_id = %entity.id,
        used_by = ?used_by,
        "shared upstream kept"
    );
    outbox::write(
        conn,
        vec![kept_event(
            run,
            &entity.id,
            &entity.kind,
            &entity.name,
            used_by,
            "step",
            actor,
        )],
        now,
    )
    .await
}

/// `deprovision.upstream_kept`: an action run left an upstream standing, and who still uses
/// it; `decided_at` is `plan` or `step`.
pub fn kept_event(
    run: &ActionRunRow,
    entity_id: &str,
    kind: &str,
    name: &str,
    used_by: &[String],
    decided_at: &str,
    actor: &str,
) -> NewEvent {
    NewEvent::new(
        &run.organization_id,
        "deprovision.upstream_kept",
        "entity",
        entity_id,
        actor,
        json!({
            "action_run_id": run.id, "kind": kind, "name": name, "used_by": used_by,
            "decided_at": decided_at,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, standing: Standing) -> User {
        User {
            name: name.into(),
            standing,
        }
    }

    #[test]
    fn an_upstream_used_only_by_this_run_or_the_torn_down_is_torn_down() {
        assert_eq!(
            decide(&[user("tenant/nu-1", Standing::ThisRun)]),
            Verdict::TearDown
        );
        assert_eq!(
            decide(&[
                user("tenant/nu-1", Standing::ThisRun),
                user("tenant/old", Standing::TornDown),
            ]),
            Verdict::TearDown,
            "a user whose run succeeded (grace period pending) no longer counts"
        );
    }

    #[test]
    fn one_user_still_using_it_keeps_it_whatever_the_others_do() {
        assert_eq!(
            decide(&[
                user("tenant/nu-1", Standing::ThisRun),
                user("tenant/nu-2", Standing::InUse),
                user("tenant/nu-3", Standing::BeingTornDown),
                user("tenant/nu-2", Standing::InUse),
            ]),
            Verdict::Keep(vec!["tenant/nu-2".into()]),
            "kept, naming each user still on it once"
        );
    }

    #[test]
    fn users_being_torn_down_by_other_running_runs_make_it_wait_for_them() {
        assert_eq!(
            decide(&[
                user("tenant/nu-2", Standing::ThisRun),
                user("tenant/nu-1", Standing::BeingTornDown),
            ]),
            Verdict::AfterOthers(vec!["tenant/nu-1".into()])
        );
    }

    fn edge(state: EdgeState, run: Option<(&str, ActionRunStatus)>) -> UserEdge {
        UserEdge {
            to_entity_id: "account".into(),
            from_entity_id: "tenant".into(),
            user_kind: "tenant".into(),
            user_name: "nu-1".into(),
            state,
            action_run_id: run.map(|(id, _)| id.to_owned()),
            run_status: run.map(|(_, s)| s),
            step_status: None,
        }
    }

    #[test]
    fn an_edge_says_how_a_user_outside_the_run_stands() {
        use ActionRunStatus::*;
        assert_eq!(
            edge(EdgeState::Active, None).standing_outside(None),
            Standing::InUse
        );
        assert_eq!(
            edge(EdgeState::Removing, Some(("r1", Succeeded))).standing_outside(None),
            Standing::TornDown
        );
        assert_eq!(
            edge(EdgeState::Removing, Some(("r1", Running))).standing_outside(Some("r2")),
            Standing::BeingTornDown
        );
        for failed in [Failed, Canceled] {
            assert_eq!(
                edge(EdgeState::Removing, Some(("r1", failed))).standing_outside(None),
                Standing::InUse,
                "a failed or canceled run put its entity back in use"
            );
        }
        let mut mine = edge(EdgeState::Removing, Some(("r1", Running)));
        assert_eq!(
            mine.standing_at_step("r1"),
            Standing::InUse,
            "moved by this run but without a step here that succeeded: fail closed"
        );
        mine.step_status = Some(StepStatus::Succeeded);
        assert_eq!(mine.standing_at_step("r1"), Standing::ThisRun);
        mine.step_status = Some(StepStatus::Kept);
        assert_eq!(
            mine.standing_at_step("r1"),
            Standing::InUse,
            "an entity this run keeps keeps what it runs on"
        );
    }
}
