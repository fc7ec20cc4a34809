//! Event type patterns: which event types a configuration subscribes to.
//!
//! A pattern is dot-separated segments of `[a-z0-9_]`, where `*` stands for one segment, or,
//! as the last segment, for one or more (`workspace.*` matches `workspace.auto_destroy.queued`);
//! `*` alone matches every event but those of the `auth` family (`auth.denied`): refused calls
//! are many and an attacker makes them at will, so a configuration receives them only when it
//! names them (`auth.denied`, `auth.*`). HCP Terraform's trigger names are accepted as aliases.

/// HCP Terraform trigger names and the Ebb patterns they stand for.
const ALIASES: &[(&str, &[&str])] = &[
    (
        "workspace:auto_destroy_reminder",
        &["workspace.auto_destroy.reminder"],
    ),
    (
        "workspace:auto_destroy_run_results",
        &[
            "workspace.auto_destroy.succeeded",
            "workspace.auto_destroy.failed",
        ],
    ),
];

/// Checks one pattern as a client wrote it.
pub fn validate(pattern: &str) -> Result<(), String> {
    if ALIASES.iter().any(|(alias, _)| *alias == pattern) {
        return Ok(());
    }
    if pattern.is_empty() || pattern.len() > 200 {
        return Err("must be 1 to 200 characters".into());
    }
    for segment in pattern.split('.') {
        let ok = segment == "*"
            || (!segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        if !ok {
            return Err(format!(
                "`{pattern}` is not a pattern: use dot-separated segments of a-z, 0-9 and _, \
                 `*` for a segment, or `workspace:auto_destroy_reminder` / \
                 `workspace:auto_destroy_run_results`"
            ));
        }
    }
    Ok(())
}

/// Whether `event_type` matches any of `patterns` (aliases expanded).
pub fn matches_any(patterns: &[String], event_type: &str) -> bool {
    patterns
        .iter()
        .any(|p| match ALIASES.iter().find(|(a, _)| a == p) {
            Some((_, expanded)) => expanded.iter().any(|e| matches(e, event_type)),
            None => matches(p, event_type),
        })
}

/// Event families a leading `*` does not reach.
const EXPLICIT_ONLY: &[&str] = &["auth"];

fn matches(pattern: &str, event_type: &str) -> bool {
    let pat: Vec<&str> = pattern.split('.').collect();
    let ev: Vec<&str> = event_type.split('.').collect();
    if pat[0] == "*" && EXPLICIT_ONLY.contains(&ev[0]) {
        return false;
    }
    for (i, p) in pat.iter().enumerate() {
        let last = i == pat.len() - 1;
        match (*p, ev.get(i)) {
            (_, None) => return false,
            ("*", Some(_)) if last => return true,
            ("*", Some(_)) => {}
            (p, Some(e)) if p == *e => {}
            _ => return false,
        }
    }
    pat.len() == ev.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, e: &str) -> bool {
        matches_any(&[p.to_owned()], e)
    }

    #[test]
    fn auth_events_need_to_be_named() {
        assert!(!m("*", "auth.denied"));
        assert!(!m("*.denied", "auth.denied"));
        assert!(m("auth.denied", "auth.denied"));
        assert!(m("auth.*", "auth.denied"));
        assert!(m("*", "workspace.created"));
    }

    #[test]
    fn wildcards_and_aliases() {
        assert!(m(
            "workspace.auto_destroy.*",
            "workspace.auto_destroy.reminder"
        ));
        assert!(!m("workspace.auto_destroy.*", "workspace.auto_destroy"));
        assert!(m("workspace.*", "workspace.auto_destroy.queued"));
        assert!(m("*", "run.completed"));
        assert!(m("run.*.done", "run.x.done"));
        assert!(!m("run.*.done", "run.x.y.done"));
        assert!(m("run.completed", "run.completed"));
        assert!(!m("run.completed", "run.completed.late"));
        assert!(!m("run", "run.completed"));
        assert!(m(
            "workspace:auto_destroy_reminder",
            "workspace.auto_destroy.reminder"
        ));
        assert!(m(
            "workspace:auto_destroy_run_results",
            "workspace.auto_destroy.failed"
        ));
        assert!(m(
            "workspace:auto_destroy_run_results",
            "workspace.auto_destroy.succeeded"
        ));
        assert!(!m(
            "workspace:auto_destroy_run_results",
            "workspace.auto_destroy.queued"
        ));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "",
            "Workspace.x",
            "a..b",
            "a.b-c",
            "a.**",
            "workspace:other",
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
        for good in [
            "*",
            "a.*",
            "workspace:auto_destroy_run_results",
            "deprovision.scheduled",
        ] {
            assert!(validate(good).is_ok(), "{good}");
        }
    }
}
