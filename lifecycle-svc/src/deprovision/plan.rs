//! The plan of an action run: the entity and its dependents reachable over cascaded edges,
//! ordered leaves first; a cycle is refused with its path (DP-2). An upstream that others
//! still run on is kept, and nothing beyond it is walked (DP-10).

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::deprovision::catalog::{ActionDef, SharedUpstream};
use crate::deprovision::entities::EntityRow;
use crate::deprovision::relationships::RELATIONSHIP_COLUMNS;
use crate::deprovision::relationships::RelationshipRow;
use crate::deprovision::upstreams::{self, Standing, User, UserEdge, Verdict};
use crate::store::{decode_json, placeholders, query_all, query_one};
use ebb_common::{Error, Result};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde::{Deserialize, Serialize};

/// One entity of a plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanNode {
    pub order: i32,
    pub entity_id: String,
    pub kind: String,
    pub name: String,
    /// Entities whose steps must succeed first.
    pub waits_for: Vec<String>,
    /// For a shared upstream whose other users are being torn down by other running action
    /// runs: those users (`kind/name`). Its step is torn down only after they are.
    #[serde(default)]
    pub shared_with: Vec<String>,
}

/// An upstream the plan leaves standing because others still run on it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeptNode {
    pub entity_id: String,
    pub kind: String,
    pub name: String,
    /// Who still uses it (`kind/name`).
    pub used_by: Vec<String>,
}

/// The stored plan of an action run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Plan {
    pub nodes: Vec<PlanNode>,
    pub relationships: Vec<String>,
    /// Upstreams kept, in the order the walk met them.
    #[serde(default)]
    pub kept: Vec<KeptNode>,
}

/// The stored plan of action run `run_id`.
pub async fn stored_plan(conn: &impl ConnectionTrait, run_id: &str) -> Result<Plan> {
    #[derive(FromQueryResult)]
    struct Stored {
        plan: String,
    }
    let stored: Stored = query_one(
        conn,
        "SELECT plan FROM action_runs WHERE id = $1",
        [run_id.into()],
    )
    .await?
    .ok_or_else(|| Error::not_found("action run", run_id))?;
    decode_json("action_runs", "plan", run_id, &stored.plan)
}

/// An entity as a plan shows it.
#[derive(Debug, Clone, FromQueryResult)]
struct Member {
    id: String,
    kind: String,
    name: String,
}

/// What the walk decided for one entity it reached.
#[derive(Debug, Clone, PartialEq)]
enum Fate {
    /// Torn down by this run; after the named users' other runs, if any.
    TornDown { shared_with: Vec<String> },
    /// Left standing: still used by the named users.
    Kept { used_by: Vec<String> },
}

/// Decides, leaves first, which entities the run tears down and which it keeps. `order` is
/// every reached entity after all that depend on it (the root first), `waits` the reached
/// entities depending on each, `users` every live edge of a cascaded type into a reached
/// entity. An entity none of whose reached users is torn down is not walked at all.
fn settle<'a>(
    root: &'a str,
    order: &[&'a str],
    waits: &HashMap<&str, Vec<&str>>,
    users: &[UserEdge],
) -> HashMap<&'a str, Fate> {
    let mut fate: HashMap<&str, Fate> = HashMap::from([(
        root,
        Fate::TornDown {
            shared_with: Vec::new(),
        },
    )]);
    let mut users_of: HashMap<&str, Vec<&UserEdge>> = HashMap::new();
    for u in users {
        users_of.entry(u.to_entity_id.as_str()).or_default().push(u);
    }
    for &id in order.iter().filter(|id| **id != root) {
        let reached_from = waits.get(id).map(Vec::as_slice).unwrap_or_default();
        if !reached_from
            .iter()
            .any(|u| matches!(fate.get(u), Some(Fate::TornDown { .. })))
        {
            continue;
        }
        let standing: Vec<User> = users_of
            .get(id)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|u| User {
                name: u.user(),
                standing: match fate.get(u.from_entity_id.as_str()) {
                    Some(Fate::TornDown { .. }) => Standing::ThisRun,
                    Some(Fate::Kept { .. }) => Standing::InUse,
                    None => u.standing_outside(None),
                },
            })
            .collect();
        let decided = match upstreams::decide(&standing) {
            Verdict::TearDown => Fate::TornDown {
                shared_with: Vec::new(),
            },
            Verdict::AfterOthers(shared_with) => Fate::TornDown { shared_with },
            Verdict::Keep(used_by) => Fate::Kept { used_by },
        };
        fate.insert(id, decided);
    }
    fate
}

/// Computes the plan from `root` over edges of the cascaded types that are not yet removed:
/// the entity and everything reachable, ordered leaves first; a cycle is refused with its path.
pub async fn plan(
    conn: &impl ConnectionTrait,
    root: &EntityRow,
    action: &ActionDef,
) -> Result<(Plan, Vec<RelationshipRow>)> {
    let started = std::time::Instant::now();
    let types = action.cascaded_types();
    // Only what a plan shows of each entity: its kind and name.
    let mut entities: BTreeMap<String, Member> = BTreeMap::from([(
        root.id.clone(),
        Member {
            id: root.id.clone(),
            kind: root.kind.clone(),
            name: root.name.clone(),
        },
    )]);
    let mut edges: Vec<RelationshipRow> = Vec::new();
    if !types.is_empty() {
        // Everything reachable over live edges of the cascaded types, in the database: one
        // recursive walk (UNION stops at a cycle), then the edges and entities it reached.
        let type_list = placeholders(2, types.len());
        let reach = format!(
            "WITH RECURSIVE reach (id) AS (SELECT CAST($1 AS TEXT) UNION \
             SELECT r.to_entity_id FROM relationships r JOIN reach ON r.from_entity_id = reach.id \
             WHERE r.type IN ({type_list}) AND r.state <> 'removed')"
        );
        let mut values: Vec<Value> = vec![root.id.clone().into()];
        values.extend(types.iter().map(|t| Value::from(t.clone())));
        edges = query_all(
            conn,
            &format!(
                "{reach} SELECT {RELATIONSHIP_COLUMNS} FROM relationships \
                 WHERE from_entity_id IN (SELECT id FROM reach) AND type IN ({type_list}) \
                 AND state <> 'removed'"
            ),
            values.clone(),
        )
        .await?;
        let reached: Vec<Member> = query_all(
            conn,
            &format!(
                "{reach} SELECT id, kind, name FROM entities WHERE id IN (SELECT id FROM reach)"
            ),
            values,
        )
        .await?;
        entities.extend(reached.into_iter().map(|e| (e.id.clone(), e)));
    }
    // Edges M -> N: M depends on N, so N's step waits for M's.
    let mut waits: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut outgoing: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in &edges {
        waits
            .entry(e.to_entity_id.as_str())
            .or_default()
            .push(e.from_entity_id.as_str());
        outgoing
            .entry(e.from_entity_id.as_str())
            .or_default()
            .push(e.to_entity_id.as_str());
    }
    if let Some(cycle) = find_cycle(&root.id, &outgoing) {
        let names: Vec<String> = cycle
            .iter()
            .map(|id| {
                entities
                    .get(*id)
                    .map(|e| format!("{} {}", e.kind, e.name))
                    .unwrap_or_else(|| (*id).to_owned())
            })
            .collect();
        return Err(Error::precondition(format!(
            "the relationships form a cycle: {}",
            names.join(" -> ")
        )));
    }
    // Kahn's algorithm: an entity comes after every entity that depends on it.
    let mut indegree: HashMap<&str, usize> = entities.keys().map(|k| (k.as_str(), 0)).collect();
    for e in &edges {
        *indegree.entry(e.to_entity_id.as_str()).or_default() += 1;
    }
    let mut ready: VecDeque<&str> = {
        let mut r: Vec<&str> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(k, _)| *k)
            .collect();
        r.sort_by_key(|id| (*id != root.id.as_str(), *id));
        r.into()
    };
    let mut order: Vec<&str> = Vec::new();
    while let Some(id) = ready.pop_front() {
        order.push(id);
        let mut unlocked = Vec::new();
        for to in outgoing.get(id).cloned().unwrap_or_default() {
            if let Some(d) = indegree.get_mut(to) {
                *d -= 1;
                if *d == 0 {
                    unlocked.push(to);
                }
            }
        }
        unlocked.sort_unstable();
        ready.extend(unlocked);
    }
    // Who runs on each reached entity, read under a lock on its row: a concurrent trigger or
    // step gate over the same upstream decides before or after this one, never beside it.
    let reached: Vec<String> = entities
        .keys()
        .filter(|id| **id != root.id)
        .cloned()
        .collect();
    upstreams::lock(conn, &reached).await?;
    let users = upstreams::users(conn, &reached, &types, None).await?;
    let fate = settle(&root.id, &order, &waits, &users);
    refuse_shared(action, &edges, &fate, &entities)?;

    let torn_down = |id: &str| matches!(fate.get(id), Some(Fate::TornDown { .. }));
    let mut nodes = Vec::new();
    let mut kept = Vec::new();
    for id in order {
        let e = &entities[id];
        match fate.get(id) {
            Some(Fate::TornDown { shared_with }) => {
                let mut waits_for: Vec<String> = waits
                    .get(id)
                    .map(|v| {
                        v.iter()
                            .filter(|u| torn_down(u))
                            .map(|s| (*s).to_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                waits_for.sort();
                waits_for.dedup();
                nodes.push(PlanNode {
                    order: nodes.len() as i32,
                    entity_id: id.to_owned(),
                    kind: e.kind.clone(),
                    name: e.name.clone(),
                    waits_for,
                    shared_with: shared_with.clone(),
                });
            }
            Some(Fate::Kept { used_by }) => kept.push(KeptNode {
                entity_id: id.to_owned(),
                kind: e.kind.clone(),
                name: e.name.clone(),
                used_by: used_by.clone(),
            }),
            None => {}
        }
    }
    // The run moves the edges of what it tears down, into what it tears down or keeps.
    let moved: Vec<RelationshipRow> = edges
        .iter()
        .filter(|e| torn_down(&e.from_entity_id) && fate.contains_key(e.to_entity_id.as_str()))
        .cloned()
        .collect();
    tracing::debug!(
        entities = entities.len(),
        steps = nodes.len(),
        kept = kept.len(),
        edges = moved.len(),
        ms = started.elapsed().as_millis() as u64,
        "plan computed"
    );
    let plan = Plan {
        nodes,
        relationships: moved.iter().map(|e| e.id.clone()).collect(),
        kept,
    };
    Ok((plan, moved))
}

/// Refuses the trigger when a kept upstream was reached over a rule that says
/// `sharedUpstream: refuse`, naming each such upstream and who still uses it.
fn refuse_shared(
    action: &ActionDef,
    edges: &[RelationshipRow],
    fate: &HashMap<&str, Fate>,
    entities: &BTreeMap<String, Member>,
) -> Result<()> {
    let refusing = |rel_type: &str| {
        action
            .cascade_rules
            .iter()
            .any(|r| r.relationship_type == rel_type && r.shared_upstream == SharedUpstream::Refuse)
    };
    let mut refused: Vec<String> = Vec::new();
    for e in edges {
        let (Some(Fate::TornDown { .. }), Some(Fate::Kept { used_by })) = (
            fate.get(e.from_entity_id.as_str()),
            fate.get(e.to_entity_id.as_str()),
        ) else {
            continue;
        };
        if !refusing(&e.rel_type) {
            continue;
        }
        let upstream = &entities[&e.to_entity_id];
        let line = format!(
            "{}/{} is still used by {}",
            upstream.kind,
            upstream.name,
            used_by.join(", ")
        );
        if !refused.contains(&line) {
            refused.push(line);
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    Err(Error::precondition_reason(
        "SHARED_UPSTREAM_IN_USE",
        format!(
            "{}; the cascade rule says sharedUpstream: refuse",
            refused.join("; ")
        ),
        [("action", action.name.as_str())],
    ))
}

fn find_cycle<'a>(
    root: &'a str,
    outgoing: &HashMap<&'a str, Vec<&'a str>>,
) -> Option<Vec<&'a str>> {
    // Iterative depth-first search keeping the current path.
    let mut state: HashMap<&str, u8> = HashMap::new(); // 1 = on path, 2 = done
    let mut path: Vec<&str> = vec![root];
    let mut iters: Vec<usize> = vec![0];
    state.insert(root, 1);
    while let Some(&node) = path.last() {
        let i = iters.last_mut().expect("iterator per node");
        let next = outgoing.get(node).and_then(|v| v.get(*i)).copied();
        *i += 1;
        match next {
            Some(n) => match state.get(n) {
                Some(1) => {
                    let start = path.iter().position(|p| *p == n).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(n);
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    state.insert(n, 1);
                    path.push(n);
                    iters.push(0);
                }
            },
            None => {
                state.insert(node, 2);
                path.pop();
                iters.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deprovision::action_runs::ActionRunStatus;
    use crate::deprovision::relationships::EdgeState;

    /// An edge `from --runs_on--> to`, last moved by a run in `run` (if any).
    fn uses(from: &str, to: &str, state: EdgeState, run: Option<ActionRunStatus>) -> UserEdge {
        UserEdge {
            to_entity_id: to.into(),
            from_entity_id: from.into(),
            user_kind: "tenant".into(),
            user_name: from.into(),
            state,
            action_run_id: run.map(|_| "other-run".to_owned()),
            run_status: run,
            step_status: None,
        }
    }

    fn active(from: &str, to: &str) -> UserEdge {
        uses(from, to, EdgeState::Active, None)
    }

    /// The reached users of each entity, as the walk gets them from the reached edges.
    fn waits<'a>(edges: &[(&'a str, &'a str)]) -> HashMap<&'a str, Vec<&'a str>> {
        let mut w: HashMap<&str, Vec<&str>> = HashMap::new();
        for (from, to) in edges {
            w.entry(*to).or_default().push(*from);
        }
        w
    }

    #[test]
    fn a_shared_upstream_is_kept_and_nothing_beyond_it_is_walked() {
        let reached = [("nu-1", "shared-aws"), ("shared-aws", "org-root")];
        let users = [
            active("nu-1", "shared-aws"),
            active("nu-2", "shared-aws"),
            active("shared-aws", "org-root"),
        ];
        let fate = settle(
            "nu-1",
            &["nu-1", "shared-aws", "org-root"],
            &waits(&reached),
            &users,
        );
        assert_eq!(
            fate["shared-aws"],
            Fate::Kept {
                used_by: vec!["tenant/nu-2".into()]
            }
        );
        assert!(
            !fate.contains_key("org-root"),
            "what a kept upstream runs on is not walked"
        );
    }

    #[test]
    fn an_upstream_whose_users_are_all_torn_down_is_torn_down() {
        let reached = [("nu-2", "shared-aws")];
        let users = [
            active("nu-2", "shared-aws"),
            uses(
                "nu-1",
                "shared-aws",
                EdgeState::Removing,
                Some(ActionRunStatus::Succeeded),
            ),
        ];
        let fate = settle("nu-2", &["nu-2", "shared-aws"], &waits(&reached), &users);
        assert_eq!(
            fate["shared-aws"],
            Fate::TornDown {
                shared_with: vec![]
            }
        );
    }

    #[test]
    fn an_upstream_whose_other_users_are_being_torn_down_waits_for_them() {
        let reached = [("nu-2", "shared-aws")];
        let users = [
            active("nu-2", "shared-aws"),
            uses(
                "nu-1",
                "shared-aws",
                EdgeState::Removing,
                Some(ActionRunStatus::Running),
            ),
        ];
        let fate = settle("nu-2", &["nu-2", "shared-aws"], &waits(&reached), &users);
        assert_eq!(
            fate["shared-aws"],
            Fate::TornDown {
                shared_with: vec!["tenant/nu-1".into()]
            }
        );
    }

    #[test]
    fn an_entity_whose_user_is_kept_is_kept() {
        // nu-1 runs on the app stack and on the account; the app stack (shared with nu-2)
        // runs on the account too.
        let reached = [("nu-1", "app"), ("nu-1", "account"), ("app", "account")];
        let users = [
            active("nu-1", "app"),
            active("nu-2", "app"),
            active("nu-1", "account"),
            active("app", "account"),
        ];
        let fate = settle(
            "nu-1",
            &["nu-1", "app", "account"],
            &waits(&reached),
            &users,
        );
        assert!(matches!(fate["app"], Fate::Kept { .. }));
        assert_eq!(
            fate["account"],
            Fate::Kept {
                used_by: vec!["tenant/app".into()]
            }
        );
    }
}
