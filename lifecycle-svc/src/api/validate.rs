//! Request-field checks shared by the handlers; every refusal names its field.

use std::collections::{BTreeMap, HashMap};

use ebb_common::config::parse_duration;
use ebb_common::error::Violations;
use ebb_common::text::has_hidden_or_control;
use ebb_common::time::{EpochMs, from_timestamp};

/// The longest inactivity period (AD-2).
pub const MAX_INACTIVITY_MS: i64 = 9999 * 86_400_000;

/// A required resource id (a UUID).
pub fn id(v: &mut Violations, field: &str, value: &str) -> String {
    if value.is_empty() {
        v.add(field, "is required");
    } else if uuid::Uuid::parse_str(value).is_err() {
        v.add(field, "is not a valid id (expected a UUID)");
    }
    value.to_owned()
}

/// An optional resource id filter.
pub fn optional_id(v: &mut Violations, field: &str, value: &str) -> Option<String> {
    if value.is_empty() {
        None
    } else {
        Some(id(v, field, value))
    }
}

/// A display name: 1 to 200 characters without control or hidden characters (bidirectional
/// overrides, zero-width characters: [`ebb_common::text::is_hidden_or_control`]).
pub fn name(v: &mut Violations, field: &str, value: &str) -> String {
    let len = value.chars().count();
    if value.trim().is_empty() {
        v.add(field, "is required");
    } else if len > 200 {
        v.add(field, "must be at most 200 characters");
    } else if has_hidden_or_control(value) {
        v.add(
            field,
            "must not contain control, bidirectional or invisible characters",
        );
    }
    value.to_owned()
}

/// Free text capped at `max` bytes.
pub fn text(v: &mut Violations, field: &str, value: &str, max: usize) -> String {
    if value.len() > max {
        v.add(field, format!("must be at most {max} bytes"));
    }
    value.to_owned()
}

/// Labels: at most 64, keys 1–63 characters, values at most 255.
pub fn labels(
    v: &mut Violations,
    field: &str,
    value: &HashMap<String, String>,
) -> BTreeMap<String, String> {
    if value.len() > 64 {
        v.add(field, "at most 64 labels");
    }
    for (k, val) in value {
        if k.is_empty() || k.len() > 63 || has_hidden_or_control(k) {
            v.add(
                format!("{field}[{k}]"),
                "label keys must be 1-63 printable characters",
            );
        }
        if val.len() > 255 || has_hidden_or_control(val) {
            v.add(
                format!("{field}[{k}]"),
                "label values must be at most 255 printable characters",
            );
        }
    }
    value.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// An inactivity period given as "14d", "18h" or seconds, between `min_ms` and 9999 days.
pub fn inactivity(v: &mut Violations, field: &str, value: &str, min_ms: i64) -> Option<i64> {
    let ms = match parse_duration(value) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => {
            v.add(field, e);
            return None;
        }
    };
    if ms < min_ms {
        v.add(
            field,
            format!("must be at least {}", ebb_common::time::human(min_ms)),
        );
        None
    } else if ms > MAX_INACTIVITY_MS {
        v.add(field, "must be at most 9999 days");
        None
    } else {
        Some(ms)
    }
}

/// A positive duration text such as "2d".
pub fn positive_duration(v: &mut Violations, field: &str, value: &str) -> Option<i64> {
    match parse_duration(value) {
        Ok(d) if d.is_zero() => {
            v.add(field, "must be greater than zero");
            None
        }
        Ok(d) => match i64::try_from(d.as_millis()) {
            Ok(ms) if ms <= MAX_INACTIVITY_MS => Some(ms),
            _ => {
                v.add(field, "must be at most 9999 days");
                None
            }
        },
        Err(e) => {
            v.add(field, e);
            None
        }
    }
}

/// An optional timestamp.
pub fn timestamp(
    v: &mut Violations,
    field: &str,
    value: &Option<prost_types::Timestamp>,
) -> Option<EpochMs> {
    let ts = value.as_ref()?;
    match from_timestamp(ts) {
        Ok(ms) => Some(ms),
        Err(e) => {
            v.add(field, e);
            None
        }
    }
}

/// An owner: an email address (one `@` with text on both sides, no spaces, at most 254 bytes)
/// and/or a Slack member id (`U` or `W` and 2 to 20 upper-case letters or digits); an empty
/// part names none. The fields are `{prefix}.email` and `{prefix}.slack_user_id`.
pub fn owner(
    v: &mut Violations,
    prefix: &str,
    owner: Option<&ebb_proto::lifecycle::v1::Owner>,
) -> (String, String) {
    let Some(owner) = owner else {
        return (String::new(), String::new());
    };
    let email = owner.email.trim();
    if !email.is_empty() {
        let valid = email.len() <= 254
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            && email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && !domain.is_empty() && !domain.contains('@')
            });
        if !valid {
            v.add(
                format!("{prefix}.email"),
                format!("{email:?} is not an email address"),
            );
        }
    }
    let slack = owner.slack_user_id.trim();
    if !slack.is_empty() {
        let valid = (3..=21).contains(&slack.len())
            && (slack.starts_with('U') || slack.starts_with('W'))
            && slack
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        if !valid {
            v.add(
                format!("{prefix}.slack_user_id"),
                format!("{slack:?} is not a Slack member id (such as U024BE7LH)"),
            );
        }
    }
    (email.to_owned(), slack.to_owned())
}

/// A recurring schedule: a five-field cron expression and an IANA time zone, refused naming
/// `{prefix}.cron` or `{prefix}.time_zone`.
pub fn recurring(
    v: &mut Violations,
    prefix: &str,
    schedule: &ebb_proto::lifecycle::v1::RecurringSchedule,
) -> Option<crate::timing::recurrence::Recurrence> {
    match crate::timing::recurrence::Recurrence::parse(
        &schedule.cron,
        &schedule.time_zone,
        &format!("{prefix}.cron"),
        &format!("{prefix}.time_zone"),
    ) {
        Ok(r) => Some(r),
        Err(refusal) => {
            v.add(refusal.field, refusal.reason);
            None
        }
    }
}

/// Destroy windows: `None` when unset or listing no window (any time, or the organization's
/// for a project), refused naming `{field}.time_zone`, `{field}.windows[i].days` and so on.
pub fn destroy_windows(
    v: &mut Violations,
    field: &str,
    given: Option<&ebb_proto::lifecycle::v1::DestroyWindows>,
) -> Option<crate::timing::windows::DestroyWindows> {
    use crate::timing::windows::{DestroyWindows, WindowSpec, WindowsSpec};
    let given = given.filter(|w| !w.windows.is_empty() || !w.time_zone.is_empty())?;
    let spec = WindowsSpec {
        time_zone: given.time_zone.clone(),
        windows: given
            .windows
            .iter()
            .map(|w| WindowSpec {
                days: w.days.clone(),
                start: w.start.clone(),
                end: w.end.clone(),
            })
            .collect(),
    };
    match DestroyWindows::parse(&spec, field) {
        Ok(w) => Some(w),
        Err(refusals) => {
            for refusal in refusals {
                v.add(refusal.field, refusal.reason);
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_taken_in_the_canonical_form_responses_use_and_the_short_one() {
        let mut v = Violations::new();
        let day = 86_400_000;
        assert_eq!(
            inactivity(&mut v, "f", "1209600s", 3_600_000),
            Some(14 * day)
        );
        assert_eq!(inactivity(&mut v, "f", "14d", 3_600_000), Some(14 * day));
        assert_eq!(
            inactivity(&mut v, "f", "18h", 3_600_000),
            Some(18 * 3_600_000)
        );
        assert!(v.finish().is_ok());
        let mut v = Violations::new();
        assert_eq!(inactivity(&mut v, "f", "fortnight", 3_600_000), None);
        assert!(v.finish().is_err());
    }
}
