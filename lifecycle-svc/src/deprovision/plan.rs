//! The plan of an action run: the entity and its dependents reachable over cascaded edges,
//! ordered leaves first; a cycle is refused with its path (DP-2).

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::deprovision::catalog::ActionDef;
use crate::deprovision::entities::EntityRow;
use crate::deprovision::relationships::RELATIONSHIP_COLUMNS;
use crate::deprovision::relationships::RelationshipRow;
use crate::store::placeholders;
use crate::store::query_all;
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
}

/// The stored plan of an action run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Plan {
    pub nodes: Vec<PlanNode>,
    pub relationships: Vec<String>,
}

/// An entity as a plan shows it.
#[derive(Debug, Clone, FromQueryResult)]
struct Member {
    id: String,
    kind: String,
    name: String,
}

/// Computes the plan from `root` over edges of the cascaded types that are not yet removed:
/// the entity and everything reachable, ordered leaves first; a cycle is refused with its path.
pub async fn plan(
    conn: &impl ConnectionTrait,
    root: &EntityRow,
    action: &ActionDef,
) -> Result<(Plan, Vec<RelationshipRow>)> {
    let started = std::time::Instant::now();
    let types: Vec<String> = action
        .cascade_rules
        .iter()
        .map(|r| r.relationship_type.clone())
        .collect();
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
    let mut nodes = Vec::new();
    while let Some(id) = ready.pop_front() {
        let e = &entities[id];
        let mut waits_for: Vec<String> = waits
            .get(id)
            .map(|v| v.iter().map(|s| (*s).to_owned()).collect())
            .unwrap_or_default();
        waits_for.sort();
        waits_for.dedup();
        nodes.push(PlanNode {
            order: nodes.len() as i32,
            entity_id: id.to_owned(),
            kind: e.kind.clone(),
            name: e.name.clone(),
            waits_for,
        });
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
    tracing::debug!(
        entities = entities.len(),
        edges = edges.len(),
        ms = started.elapsed().as_millis() as u64,
        "plan computed"
    );
    let plan = Plan {
        nodes,
        relationships: edges.iter().map(|e| e.id.clone()).collect(),
    };
    Ok((plan, edges))
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
