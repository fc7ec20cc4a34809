//! A cascade drawn as a layered graph, leaves first: the first wave (steps that wait for
//! nothing) on top, each step one row below the latest step it waits for, and the shared
//! upstreams the cascade keeps at the bottom with who still uses them. Past a size a drawing
//! of every box says nothing, so large plans are drawn as one box per kind and wave.

use std::collections::{BTreeMap, HashMap};

use maud::{Markup, html};

use super::timeline::clip;

const BOX_W: f64 = 176.0;
const BOX_H: f64 = 44.0;
const GAP_X: f64 = 18.0;
const ROW: f64 = 86.0;
const TOP: f64 = 26.0;
const MIN_WIDTH: f64 = 640.0;
/// Most boxes drawn one per entity.
pub const MAX_NODES: usize = 120;

/// One step of a plan (or of a run, with its status).
#[derive(Debug, Clone)]
pub struct Node {
    pub entity_id: String,
    pub kind: String,
    pub name: String,
    pub order: i32,
    pub waits_for: Vec<String>,
    /// A step's status (`pending`, `running`, `succeeded`...); none for a plan.
    pub status: Option<String>,
}

/// An upstream the cascade leaves standing.
#[derive(Debug, Clone)]
pub struct Kept {
    pub entity_id: String,
    pub kind: String,
    pub name: String,
    pub used_by: Vec<String>,
}

/// The wave of each node: 0 for those that wait for nothing in the plan, else one more than
/// the latest wave they wait for.
pub fn waves(nodes: &[Node]) -> HashMap<String, usize> {
    let by_id: HashMap<&str, &Node> = nodes.iter().map(|n| (n.entity_id.as_str(), n)).collect();
    let mut wave: HashMap<String, usize> = HashMap::new();
    let mut sorted: Vec<&Node> = nodes.iter().collect();
    sorted.sort_by_key(|n| n.order);
    // Steps wait only for earlier ones; a few passes settle any order the API gave.
    for _ in 0..nodes.len().clamp(1, 64) {
        let mut changed = false;
        for n in &sorted {
            let w = n
                .waits_for
                .iter()
                .filter(|id| by_id.contains_key(id.as_str()))
                .map(|id| wave.get(id).copied().unwrap_or(0) + 1)
                .max()
                .unwrap_or(0);
            if wave.get(&n.entity_id) != Some(&w) {
                wave.insert(n.entity_id.clone(), w);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    wave
}

/// The graph of `nodes` and `kept`.
pub fn draw(nodes: &[Node], kept: &[Kept]) -> Markup {
    if nodes.len() > MAX_NODES {
        return draw_summary(nodes, kept);
    }
    let wave = waves(nodes);
    let waves_n = wave.values().copied().max().map_or(0, |w| w + 1);
    let mut rows: Vec<Vec<&Node>> = vec![Vec::new(); waves_n];
    for n in nodes {
        rows[wave[&n.entity_id]].push(n);
    }
    for r in &mut rows {
        r.sort_by_key(|n| n.order);
    }
    let widest = rows.iter().map(Vec::len).max().unwrap_or(0).max(kept.len());
    let width = (widest as f64 * (BOX_W + GAP_X) + GAP_X + 60.0).max(MIN_WIDTH);
    let kept_row = if kept.is_empty() { 0.0 } else { ROW };
    let height = TOP + waves_n as f64 * ROW + kept_row + 8.0;
    // Each row centred.
    let mut pos: HashMap<&str, (f64, f64)> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        let row_w = r.len() as f64 * (BOX_W + GAP_X) - GAP_X;
        let x0 = 60.0 + (width - 60.0 - row_w) / 2.0;
        for (j, n) in r.iter().enumerate() {
            pos.insert(
                n.entity_id.as_str(),
                (x0 + j as f64 * (BOX_W + GAP_X), TOP + i as f64 * ROW),
            );
        }
    }
    let kept_y = TOP + waves_n as f64 * ROW;
    let kept_w = kept.len() as f64 * (BOX_W + GAP_X) - GAP_X;
    let kept_x0 = 60.0 + (width - 60.0 - kept_w) / 2.0;
    html! {
        svg.plan viewBox=(format!("0 0 {width:.0} {height:.0}")) width=(format!("{width:.0}")) role="img"
            aria-label=(format!("{} steps in {} waves, leaves first", nodes.len(), waves_n)) {
            defs {
                marker #arrow viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" fill="#8796a5" {}
                }
            }
            @for i in 0..waves_n {
                text.wave x="4" y=(TOP + i as f64 * ROW + BOX_H / 2.0 + 4.0) { "wave " (i + 1) }
            }
            @for n in nodes {
                @let (x, y) = pos[n.entity_id.as_str()];
                @for w in &n.waits_for {
                    @if let Some((wx, wy)) = pos.get(w.as_str()) {
                        path.edge d=(format!("M {:.1} {:.1} C {:.1} {:.1}, {:.1} {:.1}, {:.1} {:.1}",
                            wx + BOX_W / 2.0, wy + BOX_H, wx + BOX_W / 2.0, wy + BOX_H + 30.0,
                            x + BOX_W / 2.0, y - 30.0, x + BOX_W / 2.0, y - 2.0))
                            marker-end="url(#arrow)" {}
                    }
                }
            }
            @for n in nodes {
                @let (x, y) = pos[n.entity_id.as_str()];
                @let status = n.status.as_deref().unwrap_or("planned");
                g class=(format!("node {status}")) data-entity=(n.entity_id) data-order=(n.order)
                    data-wave=(wave[&n.entity_id] + 1) data-name=(n.name) data-status=(status) {
                    title { (n.kind) "/" (n.name) " — step " (n.order + 1) ", " (status) }
                    rect x=(x) y=(y) width=(BOX_W) height=(BOX_H) rx="6" {}
                    text x=(x + 8.0) y=(y + 17.0) { (n.order + 1) ". " (clip(&n.kind, 20)) }
                    text x=(x + 8.0) y=(y + 34.0) { (clip(&n.name, 24)) }
                }
            }
            @if !kept.is_empty() {
                text.wave x="4" y=(kept_y + BOX_H / 2.0 + 4.0) { "kept" }
            }
            @for (i, k) in kept.iter().enumerate() {
                @let x = kept_x0 + i as f64 * (BOX_W + GAP_X);
                g.node.kept data-entity=(k.entity_id) data-name=(k.name) data-used-by=(k.used_by.join(", ")) {
                    title { (k.kind) "/" (k.name) " is kept: still used by " (k.used_by.join(", ")) }
                    rect x=(x) y=(kept_y) width=(BOX_W) height=(BOX_H) rx="6" {}
                    text x=(x + 8.0) y=(kept_y + 17.0) { "kept: " (clip(&k.name, 18)) }
                    text.small x=(x + 8.0) y=(kept_y + 34.0) { "used by " (clip(&k.used_by.join(", "), 22)) }
                }
            }
        }
    }
}

/// A large plan: one box per wave and kind, with its count.
fn draw_summary(nodes: &[Node], kept: &[Kept]) -> Markup {
    let wave = waves(nodes);
    let mut groups: BTreeMap<(usize, &str), (usize, usize)> = BTreeMap::new();
    for n in nodes {
        let e = groups
            .entry((wave[&n.entity_id], n.kind.as_str()))
            .or_default();
        e.0 += 1;
        if matches!(n.status.as_deref(), Some("succeeded" | "kept")) {
            e.1 += 1;
        }
    }
    let waves_n = wave.values().copied().max().map_or(0, |w| w + 1);
    let mut per_wave: Vec<Vec<(&str, usize, usize)>> = vec![Vec::new(); waves_n];
    for ((w, kind), (n, done)) in &groups {
        per_wave[*w].push((kind, *n, *done));
    }
    let widest = per_wave.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let width = (widest as f64 * (BOX_W + GAP_X) + 80.0).max(MIN_WIDTH);
    let height = TOP + waves_n as f64 * ROW + 8.0;
    let with_status = nodes.iter().any(|n| n.status.is_some());
    html! {
        p.muted { (nodes.len()) " steps: drawn as one box per kind and wave. "
            @if !kept.is_empty() { (kept.len()) " shared upstreams are kept (listed below)." } }
        svg.plan.summary viewBox=(format!("0 0 {width:.0} {height:.0}")) width=(format!("{width:.0}")) role="img"
            aria-label=(format!("{} steps in {} waves, leaves first", nodes.len(), waves_n)) {
            @for (i, row) in per_wave.iter().enumerate() {
                text.wave x="4" y=(TOP + i as f64 * ROW + BOX_H / 2.0 + 4.0) { "wave " (i + 1) }
                @for (j, (kind, n, done)) in row.iter().enumerate() {
                    @let x = 70.0 + j as f64 * (BOX_W + GAP_X);
                    @let y = TOP + i as f64 * ROW;
                    g.node data-wave=(i + 1) data-kind=(kind) data-count=(n) {
                        rect x=(x) y=(y) width=(BOX_W) height=(BOX_H) rx="6" {}
                        text x=(x + 8.0) y=(y + 17.0) { (clip(kind, 20)) " × " (n) }
                        @if with_status { text.small x=(x + 8.0) y=(y + 34.0) { (done) " done" } }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, order: i32, waits: &[&str]) -> Node {
        Node {
            entity_id: id.into(),
            kind: "stack".into(),
            name: id.into(),
            order,
            waits_for: waits.iter().map(|s| s.to_string()).collect(),
            status: None,
        }
    }

    #[test]
    fn waves_follow_the_longest_wait() {
        // tenant waits for nothing; app for tenant; net for app; account for net and tenant.
        let nodes = vec![
            node("tenant", 1, &[]),
            node("app", 2, &["tenant"]),
            node("net", 3, &["app"]),
            node("account", 4, &["net", "tenant"]),
        ];
        let w = waves(&nodes);
        assert_eq!(
            [w["tenant"], w["app"], w["net"], w["account"]],
            [0, 1, 2, 3]
        );
        let kept = vec![Kept {
            entity_id: "shared".into(),
            kind: "account".into(),
            name: "shared".into(),
            used_by: vec!["tenant/other".into()],
        }];
        let svg = draw(&nodes, &kept).into_string();
        assert_eq!(svg.matches("class=\"node planned\"").count(), 4);
        assert_eq!(svg.matches("class=\"node kept\"").count(), 1);
        assert!(svg.contains("data-used-by=\"tenant/other\""));
        assert_eq!(svg.matches("class=\"edge\"").count(), 4);
    }

    #[test]
    fn large_plans_are_summarised_per_kind_and_wave() {
        let nodes: Vec<Node> = (0..200).map(|i| node(&format!("n{i}"), i, &[])).collect();
        let svg = draw(&nodes, &[]).into_string();
        assert!(svg.contains("data-count=\"200\""), "{svg}");
    }
}
