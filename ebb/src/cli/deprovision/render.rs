//! How `ebb deprovision` prints plans, action runs and relationships.

use std::collections::HashMap;

use chrono::Utc;
use ebb_proto::lifecycle::v1 as pb;

use crate::cli::output::{
    self, fields, label, or_none, relative, struct_text, table, text, time, when,
};

/// Whether a step has ended.
pub(super) fn is_done(status: i32) -> bool {
    [
        pb::ActionStepStatus::Succeeded as i32,
        pb::ActionStepStatus::Failed as i32,
        pb::ActionStepStatus::Canceled as i32,
        pb::ActionStepStatus::Kept as i32,
    ]
    .contains(&status)
}

pub(super) fn run_status(r: &pb::ActionRun) -> String {
    label(
        r.status,
        "ACTION_RUN_STATUS_",
        pb::ActionRunStatus::as_str_name,
    )
}

pub(super) fn plan_table(plan: &[pb::PlanStep]) -> String {
    let names: HashMap<&str, &str> = plan
        .iter()
        .map(|p| (p.entity_id.as_str(), p.entity_name.as_str()))
        .collect();
    let mut t = table(&["order", "entity", "kind", "name", "after"]);
    let mut steps: Vec<&pb::PlanStep> = plan.iter().collect();
    steps.sort_by_key(|p| p.order);
    for p in steps {
        let after: Vec<&str> = p
            .waits_for_entity_ids
            .iter()
            .map(|id| names.get(id.as_str()).copied().unwrap_or(id.as_str()))
            .collect();
        t.add_row(vec![
            p.order.to_string(),
            p.entity_id.clone(),
            p.entity_kind.clone(),
            p.entity_name.clone(),
            text(&after.join(", ")),
        ]);
    }
    or_none(t, plan.len(), "nothing to do")
}

/// One line per shared upstream of a plan, each ending in a newline: those kept, with who
/// still uses them, and those torn down only after other runs tear down their other users.
pub(super) fn shared_lines(plan: &[pb::PlanStep], kept: &[pb::KeptEntity]) -> String {
    let mut out = String::new();
    for p in plan.iter().filter(|p| !p.shared_with.is_empty()) {
        out.push_str(&format!(
            "shared: {}/{} (torn down once the runs tearing down {} succeed)\n",
            p.entity_kind,
            p.entity_name,
            p.shared_with.join(", ")
        ));
    }
    for k in kept {
        out.push_str(&format!(
            "kept: {}/{} (still used by {})\n",
            k.entity_kind,
            k.entity_name,
            k.used_by.join(", ")
        ));
    }
    out
}

/// An action run: its summary and a table of its steps in order.
pub(super) fn run_report(r: &pb::ActionRun) -> String {
    let summary = fields(vec![
        ("action run", r.id.clone()),
        ("action", r.action.clone()),
        ("entity", r.entity_id.clone()),
        ("status", run_status(r)),
        ("parameters", struct_text(r.parameters.as_ref())),
        ("actor", text(&r.actor)),
        ("started", when(r.create_time.as_ref())),
        ("finished", when(r.finish_time.as_ref())),
        ("error", text(&r.error)),
    ]);
    let plan: HashMap<&str, &pb::PlanStep> =
        r.plan.iter().map(|p| (p.entity_id.as_str(), p)).collect();
    let mut steps: Vec<&pb::ActionStep> = r.steps.iter().collect();
    steps.sort_by_key(|s| s.order);
    let mut t = table(&[
        "order", "entity", "kind", "status", "trigger", "run", "attempt", "started", "finished",
        "error",
    ])
    .wide_only(&["attempt", "started"])
    .summarise(&["error"]);
    for s in &steps {
        let p = plan.get(s.entity_id.as_str());
        t.add_row(vec![
            s.order.to_string(),
            p.map_or(s.entity_id.clone(), |p| p.entity_name.clone()),
            p.map_or("-".to_owned(), |p| p.entity_kind.clone()),
            label(
                s.status,
                "ACTION_STEP_STATUS_",
                pb::ActionStepStatus::as_str_name,
            ),
            text(&s.trigger_type),
            text(&s.run_id),
            s.attempt.to_string(),
            time(s.start_time.as_ref()),
            time(s.finish_time.as_ref()),
            text(&s.error),
        ]);
    }
    format!(
        "{summary}\n{}\n{}{}",
        or_none(t, steps.len(), "no steps"),
        shared_lines(&r.plan, &r.kept),
        step_counts(&steps)
    )
}

/// `3 of 4 step(s) done; 1 failed`: only steps that succeeded (or were kept) are done.
fn step_counts(steps: &[&pb::ActionStep]) -> String {
    use pb::ActionStepStatus as S;
    let count = |which: &[S]| {
        steps
            .iter()
            .filter(|s| which.iter().any(|w| *w as i32 == s.status))
            .count()
    };
    let mut line = format!(
        "{} of {} step(s) done",
        count(&[S::Succeeded, S::Kept]),
        steps.len()
    );
    for (n, what) in [
        (count(&[S::Failed]), "failed"),
        (count(&[S::Canceled]), "canceled"),
        (count(&[S::Running]), "running"),
        (count(&[S::Pending]), "pending"),
    ] {
        if n > 0 {
            line.push_str(&format!("; {n} {what}"));
        }
    }
    line
}

pub(super) fn runs_table(runs: &[pb::ActionRun]) -> String {
    let mut t = table(&[
        "action run",
        "action",
        "entity",
        "status",
        "steps done",
        "started (UTC)",
        "finished (UTC)",
        "error",
    ]);
    for r in runs {
        let done = r.steps.iter().filter(|s| is_done(s.status)).count();
        t.add_row(vec![
            r.id.clone(),
            r.action.clone(),
            r.entity_id.clone(),
            run_status(r),
            format!("{done}/{}", r.steps.len()),
            time(r.create_time.as_ref()),
            time(r.finish_time.as_ref()),
            text(&r.error),
        ]);
    }
    or_none(t, runs.len(), "no action runs")
}

pub(super) fn relationships_table(list: &[pb::Relationship], none: &str) -> String {
    let mut t = table(&[
        "relationship",
        "type",
        "from",
        "to",
        "state",
        "deletion scheduled (UTC)",
        "due",
        "finalized",
        "method",
    ]);
    let now = Utc::now();
    for r in list {
        let due = match output::datetime(r.deletion_scheduled_time.as_ref()) {
            Some(t) if r.state == pb::RelationshipState::Removing as i32 && t < now => {
                format!("overdue {}", relative(r.deletion_scheduled_time.as_ref()))
            }
            Some(_) => relative(r.deletion_scheduled_time.as_ref()),
            None => "-".to_owned(),
        };
        t.add_row(vec![
            r.id.clone(),
            r.r#type.clone(),
            r.from_entity_id.clone(),
            r.to_entity_id.clone(),
            label(
                r.state,
                "RELATIONSHIP_STATE_",
                pb::RelationshipState::as_str_name,
            ),
            time(r.deletion_scheduled_time.as_ref()),
            due,
            time(r.finalize_time.as_ref()),
            text(&r.finalize_method),
        ]);
    }
    or_none(t, list.len(), none)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(status: pb::ActionStepStatus) -> pb::ActionStep {
        pb::ActionStep {
            status: status as i32,
            ..Default::default()
        }
    }

    #[test]
    fn only_succeeded_or_kept_steps_count_as_done() {
        use pb::ActionStepStatus as S;
        let failed = [step(S::Failed)];
        assert_eq!(
            step_counts(&failed.iter().collect::<Vec<_>>()),
            "0 of 1 step(s) done; 1 failed"
        );
        let mixed = [
            step(S::Succeeded),
            step(S::Kept),
            step(S::Canceled),
            step(S::Pending),
        ];
        assert_eq!(
            step_counts(&mixed.iter().collect::<Vec<_>>()),
            "2 of 4 step(s) done; 1 canceled; 1 pending"
        );
    }
}
