//! Recurring schedules: a five-field cron expression read in an IANA time zone ("0 19 * * FRI"
//! in `Europe/Berlin`), and the instants at which it occurs.
//!
//! Daylight saving time follows croner (OCPS): a fixed wall-clock time that falls in a
//! spring-forward gap occurs once, at the first real instant after the gap; one that falls in
//! an autumn overlap occurs once, at its first (earlier) instant.

use std::str::FromStr;

use chrono::{TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use ebb_common::time::{EpochMs, MAX_EPOCH_MS};

/// A parsed recurring schedule.
#[derive(Debug, Clone)]
pub struct Recurrence {
    cron: Cron,
    zone: Tz,
    /// The expression and the zone's name as given.
    source: (String, String),
}

impl PartialEq for Recurrence {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Recurrence {}

/// Why a cron expression or a time zone was refused: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: String,
    pub reason: String,
}

impl Recurrence {
    /// Parses `cron` (minute, hour, day of month, month, day of week; names such as `FRI`
    /// and `JAN` allowed) in the zone named `time_zone`. `cron_field` and `zone_field` name
    /// the request's fields in a refusal.
    pub fn parse(
        cron: &str,
        time_zone: &str,
        cron_field: &str,
        zone_field: &str,
    ) -> Result<Self, Refusal> {
        let refuse = |field: &str, reason: String| Refusal {
            field: field.to_owned(),
            reason,
        };
        if cron.trim().is_empty() {
            return Err(refuse(cron_field, "must not be empty".into()));
        }
        if cron.split_whitespace().count() != 5 {
            return Err(refuse(
                cron_field,
                format!(
                    "{cron:?} is not a cron expression of five fields (minute hour \
                     day-of-month month day-of-week), e.g. \"0 19 * * FRI\""
                ),
            ));
        }
        let parsed = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(cron)
            .map_err(|e| {
                refuse(
                    cron_field,
                    format!("{cron:?} is not a valid cron expression: {e}"),
                )
            })?;
        if time_zone.trim().is_empty() {
            return Err(refuse(
                zone_field,
                "must name an IANA time zone, e.g. Europe/Berlin or UTC".into(),
            ));
        }
        let zone = Tz::from_str(time_zone).map_err(|_| {
            refuse(
                zone_field,
                format!("{time_zone:?} is not an IANA time zone (e.g. Europe/Berlin, UTC)"),
            )
        })?;
        Ok(Self {
            cron: parsed,
            zone,
            source: (cron.trim().to_owned(), time_zone.to_owned()),
        })
    }

    /// A schedule as stored; `None` (never occurs) for one that no longer parses, so a
    /// damaged row fails closed.
    pub fn stored(cron: Option<&str>, time_zone: Option<&str>) -> Option<Self> {
        Self::parse(cron?, time_zone?, "recurring_cron", "recurring_time_zone").ok()
    }

    /// The cron expression as given.
    pub fn cron(&self) -> &str {
        &self.source.0
    }

    /// The time zone's name.
    pub fn time_zone(&self) -> &str {
        &self.source.1
    }

    /// The first occurrence strictly after `t`, if there is one before year 9999.
    pub fn next_after(&self, t: EpochMs) -> Option<EpochMs> {
        // Occurrences fall on whole minutes: search from the whole second at or before `t`,
        // exclusive, which never skips one after `t`.
        let start = self.zone.from_utc_datetime(
            &Utc.timestamp_millis_opt(t.div_euclid(1000) * 1000)
                .single()?
                .naive_utc(),
        );
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        let ms = next.timestamp_millis();
        (ms > t && ms <= MAX_EPOCH_MS).then_some(ms)
    }

    /// The first occurrence at or after `t`.
    pub fn next_at_or_after(&self, t: EpochMs) -> Option<EpochMs> {
        self.next_after(t.saturating_sub(1))
    }

    /// Up to `n` occurrences strictly after `t`, in order.
    pub fn upcoming(&self, t: EpochMs, n: usize) -> Vec<EpochMs> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            let Some(next) = self.next_after(at) else {
                break;
            };
            out.push(next);
            at = next;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> EpochMs {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .timestamp_millis()
    }

    fn berlin(cron: &str) -> Recurrence {
        Recurrence::parse(cron, "Europe/Berlin", "cron", "time_zone").expect("valid")
    }

    #[test]
    fn friday_evening_in_berlin_follows_the_zone_offset() {
        let r = berlin("0 19 * * FRI");
        // Winter (CET, UTC+1) and summer (CEST, UTC+2).
        assert_eq!(
            r.next_after(utc("2026-01-05T00:00:00Z")),
            Some(utc("2026-01-09T18:00:00Z"))
        );
        assert_eq!(
            r.next_after(utc("2026-07-01T00:00:00Z")),
            Some(utc("2026-07-03T17:00:00Z"))
        );
        // Strictly after: an occurrence is not its own successor.
        let at = utc("2026-07-03T17:00:00Z");
        assert_eq!(r.next_after(at), Some(utc("2026-07-10T17:00:00Z")));
        assert_eq!(r.next_at_or_after(at), Some(at));
        assert_eq!(r.next_after(at - 1), Some(at));
    }

    #[test]
    fn a_time_in_the_spring_gap_occurs_once_at_the_first_instant_after_it() {
        // 2026-03-29: Berlin moves from 02:00 CET to 03:00 CEST; 02:30 does not exist.
        let r = berlin("30 2 * * *");
        let from = utc("2026-03-28T12:00:00Z");
        assert_eq!(
            r.upcoming(from, 3),
            vec![
                utc("2026-03-29T01:00:00Z"), // 03:00 CEST, the first instant after the gap
                utc("2026-03-30T00:30:00Z"), // 02:30 CEST
                utc("2026-03-31T00:30:00Z"),
            ]
        );
    }

    #[test]
    fn a_time_in_the_autumn_overlap_occurs_once() {
        // 2026-10-25: Berlin moves from 03:00 CEST back to 02:00 CET; 02:30 happens twice.
        let r = berlin("30 2 * * *");
        let from = utc("2026-10-24T12:00:00Z");
        let first = utc("2026-10-25T00:30:00Z"); // 02:30 CEST, the earlier one
        assert_eq!(
            r.upcoming(from, 2),
            vec![first, utc("2026-10-26T01:30:00Z")]
        );
        // From inside the overlap, before the second 02:30: still not again that day.
        assert_eq!(
            r.next_after(utc("2026-10-25T01:10:00Z")),
            Some(utc("2026-10-26T01:30:00Z"))
        );
    }

    #[test]
    fn hourly_schedules_run_through_both_transitions() {
        let r = berlin("0 * * * *");
        let spring = r.upcoming(utc("2026-03-29T00:30:00Z"), 2);
        assert_eq!(spring[1] - spring[0], 3_600_000, "no hour lost twice");
        let autumn = r.upcoming(utc("2026-10-24T23:30:00Z"), 4);
        for pair in autumn.windows(2) {
            assert_eq!(pair[1] - pair[0], 3_600_000, "every real hour once");
        }
    }

    #[test]
    fn bad_expressions_and_zones_are_refused_naming_the_field() {
        for bad in [
            "",
            "0 19 * *",
            "0 0 19 * * FRI",
            "61 19 * * *",
            "0 19 * * FUNDAY",
        ] {
            let e = Recurrence::parse(bad, "UTC", "cron", "time_zone").expect_err(bad);
            assert_eq!(e.field, "cron", "{bad}: {}", e.reason);
        }
        for bad in ["", "Mars/Olympus", "Europe/Berln"] {
            let e = Recurrence::parse("0 19 * * FRI", bad, "cron", "time_zone").expect_err(bad);
            assert_eq!(e.field, "time_zone", "{bad}: {}", e.reason);
        }
        assert!(Recurrence::parse("0 19 * * fri", "UTC", "c", "z").is_ok());
    }

    #[test]
    fn a_date_that_never_comes_has_no_occurrence() {
        let r = Recurrence::parse("0 0 30 2 *", "UTC", "c", "z").expect("parses");
        assert_eq!(r.next_after(utc("2026-01-01T00:00:00Z")), None);
    }
}
