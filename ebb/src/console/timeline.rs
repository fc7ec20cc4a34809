//! The upcoming-destroys timeline: one lane per workspace, grouped by project, over the next
//! days; each lane ends at the destroy, with its reminders (sent and to come) before it, a
//! destroy pushed by the minimum notice and one held for a destroy window marked apart.

use chrono::{DateTime, Duration, Utc};
use maud::{Markup, html};

/// Width of the drawing, in its own units (it scales to the page).
const WIDTH: f64 = 1000.0;
/// The column of workspace names.
const LABELS: f64 = 200.0;
const HEADER: f64 = 26.0;
const PROJECT_ROW: f64 = 22.0;
const LANE: f64 = 24.0;

/// A reminder of one destroy.
#[derive(Debug, Clone)]
pub struct Reminder {
    pub at: DateTime<Utc>,
    pub lead: String,
    pub sent: bool,
}

/// One scheduled destroy.
#[derive(Debug, Clone)]
pub struct Lane {
    pub workspace_id: String,
    pub workspace_name: String,
    pub project: String,
    pub due: DateTime<Utc>,
    /// The time the schedule gave, when a destroy window holds it back until `due`.
    pub held_from: Option<DateTime<Utc>>,
    /// The minimum notice pushed it.
    pub pushed_by_notice: bool,
    pub reason: String,
    pub reminders: Vec<Reminder>,
}

/// The timeline from `start` over `days` days; `lanes` sorted by project, then due time.
pub fn draw(lanes: &[Lane], start: DateTime<Utc>, days: i64) -> Markup {
    let span = Duration::days(days).num_seconds() as f64;
    let plot = WIDTH - LABELS - 12.0;
    let x = |t: DateTime<Utc>| {
        let s = (t - start).num_seconds() as f64;
        LABELS + (s / span).clamp(0.0, 1.0) * plot
    };
    // Rows: a header per project, then its lanes.
    let mut rows: Vec<(f64, Option<&Lane>, &str)> = Vec::new();
    let mut y = HEADER;
    let mut project: Option<&str> = None;
    for lane in lanes {
        if project != Some(lane.project.as_str()) {
            project = Some(lane.project.as_str());
            rows.push((y, None, lane.project.as_str()));
            y += PROJECT_ROW;
        }
        rows.push((y, Some(lane), ""));
        y += LANE;
    }
    let height = y + 6.0;
    let midnight = start
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc())
        .unwrap_or(start);
    let ticks: Vec<DateTime<Utc>> = (1..=days)
        .map(|d| midnight + Duration::days(d))
        .filter(|t| *t < start + Duration::days(days))
        .collect();
    html! {
        svg.timeline viewBox=(format!("0 0 {WIDTH} {height}")) role="img"
            aria-label=(format!("Destroys over the next {days} days")) {
            @for t in &ticks {
                line.grid x1=(x(*t)) x2=(x(*t)) y1="18" y2=(height) {}
                text x=(x(*t) + 3.0) y="14" { (t.format("%a %d")) }
            }
            line.now x1=(LABELS) x2=(LABELS) y1="4" y2=(height) {}
            text.small x=(LABELS + 3.0) y="24" { "now" }
            @for (top, lane, name) in &rows {
                @match lane {
                    None => {
                        text.project x="4" y=(top + 15.0) { (clip(name, 30)) }
                        line.grid x1="0" x2=(WIDTH) y1=(top + 20.0) y2=(top + 20.0) {}
                    }
                    Some(l) => {
                        @let mid = top + LANE / 2.0;
                        @let end = x(l.due);
                        g.lanerow data-workspace=(l.workspace_id) data-due=(l.due.to_rfc3339()) {
                            a href=(format!("/workspaces/{}", l.workspace_id)) {
                                text x="14" y=(mid + 4.0) { title { (l.workspace_name) } (clip(&l.workspace_name, 26)) }
                            }
                            line.lane x1=(LABELS) x2=(end) y1=(mid) y2=(mid) {}
                            @if let Some(from) = l.held_from {
                                line.held x1=(x(from)) x2=(end) y1=(mid) y2=(mid) {}
                                circle.held cx=(x(from)) cy=(mid) r="3" {
                                    title { "scheduled for " (stamp(from)) ", outside every destroy window" }
                                }
                            }
                            @for r in &l.reminders {
                                circle.reminder.sent[r.sent].tocome[!r.sent] cx=(x(r.at)) cy=(mid) r="4"
                                    data-sent=(if r.sent { "true" } else { "false" }) {
                                    title {
                                        @if r.sent { "reminder sent " } @else { "reminder to come " }
                                        (r.lead) " before, at " (stamp(r.at))
                                    }
                                }
                            }
                            polygon.destroy.notice[l.pushed_by_notice].window[l.held_from.is_some()]
                                points=(diamond(end, mid)) {
                                title {
                                    "destroy at " (stamp(l.due)) " (" (l.reason) ")"
                                    @if l.pushed_by_notice { ", pushed by the minimum notice" }
                                    @if l.held_from.is_some() { ", waiting for a destroy window" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn diamond(x: f64, y: f64) -> String {
    format!(
        "{:.1},{:.1} {:.1},{:.1} {:.1},{:.1} {:.1},{:.1}",
        x,
        y - 7.0,
        x + 7.0,
        y,
        x,
        y + 7.0,
        x - 7.0,
        y
    )
}

/// A time as `Tue 01 14:00 UTC`.
pub fn stamp(t: DateTime<Utc>) -> String {
    t.format("%a %d %b %H:%M UTC").to_string()
}

/// At most `n` characters, with an ellipsis when cut.
pub fn clip(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        return text.to_owned();
    }
    let mut s: String = text.chars().take(n.saturating_sub(1)).collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(name: &str, project: &str, due: DateTime<Utc>) -> Lane {
        Lane {
            workspace_id: format!("id-{name}"),
            workspace_name: name.into(),
            project: project.into(),
            due,
            held_from: None,
            pushed_by_notice: false,
            reason: "auto_destroy_at".into(),
            reminders: vec![],
        }
    }

    #[test]
    fn lanes_end_at_their_destroy_and_projects_get_a_header() {
        let start = DateTime::parse_from_rfc3339("2030-01-01T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let lanes = vec![
            lane("a", "web", start + Duration::days(1)),
            lane("b", "web", start + Duration::days(2)),
            lane("c", "data", start + Duration::days(10)),
        ];
        let svg = draw(&lanes, start, 7).into_string();
        assert_eq!(svg.matches("class=\"project\"").count(), 2);
        assert_eq!(svg.matches("<polygon").count(), 3);
        // One day of seven across 788 units after the 200-unit label column.
        assert!(svg.contains("x2=\"312.57142857142856\""), "{svg}");
        // Past the drawing's end, a destroy sits at its edge.
        assert!(svg.contains("x2=\"988\""), "{svg}");
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}
