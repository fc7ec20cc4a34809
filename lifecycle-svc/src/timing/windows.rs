//! Destroy windows: the weekly hours in a time zone when automated destroys may start
//! ("Mon–Fri 09:00–17:00 Europe/Berlin": destroy only when someone is around). A destroy that
//! comes due outside every window waits for the next opening.
//!
//! Wall-clock times follow the zone's daylight saving rules: a time a spring-forward gap skips
//! is read as the first instant after the gap, and one an autumn overlap repeats as its first
//! instant, as recurring schedules do.

use std::str::FromStr;

use chrono::{Datelike, Days, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use ebb_common::time::EpochMs;
use serde::{Deserialize, Serialize};

use super::recurrence::Refusal;

/// The most windows a setting may list.
pub const MAX_WINDOWS: usize = 32;

/// One weekly window as given: the days it opens on and its local opening and closing times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    /// "mon-fri", "sat,sun", "mon,wed-fri"; empty for every day.
    pub days: String,
    /// "HH:MM".
    pub start: String,
    /// "HH:MM" after `start`, or "24:00".
    pub end: String,
}

/// A destroy-window setting as given and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowsSpec {
    pub time_zone: String,
    pub windows: Vec<WindowSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    /// Bit `d` set: opens on day `d` (0 = Monday).
    days: u8,
    /// Minutes after local midnight; `end` may be 1440.
    start: u32,
    end: u32,
}

/// A parsed destroy-window setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestroyWindows {
    zone: Tz,
    windows: Vec<Window>,
    spec: WindowsSpec,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day_index(name: &str) -> Option<u32> {
    let name = name.trim().to_ascii_lowercase();
    DAY_NAMES
        .iter()
        .position(|d| name == *d || name == full_day(d))
        .map(|i| i as u32)
}

fn full_day(short: &str) -> &'static str {
    match short {
        "mon" => "monday",
        "tue" => "tuesday",
        "wed" => "wednesday",
        "thu" => "thursday",
        "fri" => "friday",
        "sat" => "saturday",
        _ => "sunday",
    }
}

fn parse_days(days: &str) -> Result<u8, String> {
    if days.trim().is_empty() {
        return Ok(0x7f);
    }
    let mut mask = 0u8;
    for part in days.split(',') {
        let (from, to) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let (Some(a), Some(b)) = (day_index(from), day_index(to)) else {
            return Err(format!(
                "{days:?} is not a list of days such as \"mon-fri\" or \"sat,sun\" \
                 (mon, tue, wed, thu, fri, sat, sun; ranges with -)"
            ));
        };
        // A range may wrap the week ("fri-mon").
        let mut d = a;
        loop {
            mask |= 1 << d;
            if d == b {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    Ok(mask)
}

fn parse_time(value: &str, allow_midnight_end: bool) -> Result<u32, String> {
    let refused = || format!("{value:?} is not a time of day \"HH:MM\" (00:00 to 24:00)");
    let (h, m) = value.trim().split_once(':').ok_or_else(refused)?;
    let (h, m): (u32, u32) = (
        h.parse().map_err(|_| refused())?,
        m.parse().map_err(|_| refused())?,
    );
    if m.to_string().len() > 2 || m > 59 || h > 24 || (h == 24 && (m != 0 || !allow_midnight_end)) {
        return Err(refused());
    }
    Ok(h * 60 + m)
}

impl DestroyWindows {
    /// Parses a setting; `field` names it in a refusal (`destroy_windows`). No windows at all
    /// is refused: leave the setting unset for "any time".
    pub fn parse(spec: &WindowsSpec, field: &str) -> Result<Self, Vec<Refusal>> {
        let mut refusals = Vec::new();
        let mut refuse = |sub: &str, reason: String| {
            refusals.push(Refusal {
                field: format!("{field}{sub}"),
                reason,
            })
        };
        let zone = if spec.time_zone.trim().is_empty() {
            refuse(
                ".time_zone",
                "must name an IANA time zone, e.g. Europe/Berlin or UTC".into(),
            );
            None
        } else {
            Tz::from_str(spec.time_zone.trim())
                .map_err(|_| {
                    refuse(
                        ".time_zone",
                        format!(
                            "{:?} is not an IANA time zone (e.g. Europe/Berlin, UTC)",
                            spec.time_zone
                        ),
                    )
                })
                .ok()
        };
        if spec.windows.is_empty() {
            refuse(
                ".windows",
                "must list at least one window; leave destroy_windows unset to allow any time"
                    .into(),
            );
        }
        if spec.windows.len() > MAX_WINDOWS {
            refuse(
                ".windows",
                format!(
                    "lists {} windows; at most {MAX_WINDOWS}",
                    spec.windows.len()
                ),
            );
        }
        let mut windows = Vec::with_capacity(spec.windows.len());
        for (i, w) in spec.windows.iter().enumerate() {
            let days = parse_days(&w.days)
                .map_err(|r| refuse(&format!(".windows[{i}].days"), r))
                .ok();
            let start = parse_time(&w.start, false)
                .map_err(|r| refuse(&format!(".windows[{i}].start"), r))
                .ok();
            let end = parse_time(&w.end, true)
                .map_err(|r| refuse(&format!(".windows[{i}].end"), r))
                .ok();
            if let (Some(days), Some(start), Some(end)) = (days, start, end) {
                if end <= start {
                    refuse(
                        &format!(".windows[{i}].end"),
                        format!(
                            "{:?} is not after the start {:?}; a window closes on the day it \
                             opens (use two windows to span midnight)",
                            w.end, w.start
                        ),
                    );
                }
                windows.push(Window { days, start, end });
            }
        }
        let Some(zone) = zone.filter(|_| refusals.is_empty()) else {
            return Err(refusals);
        };
        Ok(Self {
            zone,
            windows,
            spec: WindowsSpec {
                time_zone: spec.time_zone.trim().to_owned(),
                windows: spec
                    .windows
                    .iter()
                    .map(|w| WindowSpec {
                        days: w.days.trim().to_ascii_lowercase(),
                        start: w.start.trim().to_owned(),
                        end: w.end.trim().to_owned(),
                    })
                    .collect(),
            },
        })
    }

    /// A setting as stored (JSON); `None` for none, and for one that no longer parses, which
    /// then allows no destroy at all (fails closed: see [`Self::closed`]).
    pub fn stored(json: Option<&str>) -> Option<Result<Self, Vec<Refusal>>> {
        let json = json?;
        Some(
            serde_json::from_str::<WindowsSpec>(json)
                .map_err(|e| {
                    vec![Refusal {
                        field: "destroy_windows".into(),
                        reason: format!("the stored setting does not decode: {e}"),
                    }]
                })
                .and_then(|spec| Self::parse(&spec, "destroy_windows")),
        )
    }

    /// The setting as given, normalised.
    pub fn spec(&self) -> &WindowsSpec {
        &self.spec
    }

    /// The setting as stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.spec).unwrap_or_default()
    }

    /// `t` itself when a window is open at `t`, else the next opening after it.
    pub fn open_at_or_after(&self, t: EpochMs) -> Option<EpochMs> {
        let local = self
            .zone
            .from_utc_datetime(&Utc.timestamp_millis_opt(t).single()?.naive_utc());
        let today = local.date_naive();
        let mut best: Option<EpochMs> = None;
        // Yesterday's windows cannot reach into today (they close by midnight), but the
        // local date of `t` and a window's date can differ around a transition; a week and a
        // day ahead always holds the next opening of a weekly window.
        for offset in 0..=8u64 {
            let date = today
                .checked_sub_days(Days::new(1))?
                .checked_add_days(Days::new(offset))?;
            let weekday = date.weekday().num_days_from_monday();
            for w in &self.windows {
                if w.days & (1 << weekday) == 0 {
                    continue;
                }
                let (Some(open), Some(close)) =
                    (self.instant(date, w.start), self.instant(date, w.end))
                else {
                    continue;
                };
                if open <= t && t < close {
                    return Some(t);
                }
                if open > t && open < close {
                    best = Some(best.map_or(open, |b| b.min(open)));
                }
            }
        }
        best
    }

    /// Whether a window is open at `t`.
    pub fn contains(&self, t: EpochMs) -> bool {
        self.open_at_or_after(t) == Some(t)
    }

    /// The instant of `minutes` after local midnight of `date` (1440: the next midnight),
    /// resolved through daylight saving transitions.
    fn instant(&self, date: NaiveDate, minutes: u32) -> Option<EpochMs> {
        let (date, minutes) = if minutes >= 1440 {
            (date.checked_add_days(Days::new(1))?, minutes - 1440)
        } else {
            (date, minutes)
        };
        let mut naive: NaiveDateTime =
            date.and_time(NaiveTime::from_hms_opt(minutes / 60, minutes % 60, 0)?);
        // A gap is at most a few hours: the first wall-clock minute after it is its instant.
        for _ in 0..=24 * 60 {
            match self.zone.from_local_datetime(&naive) {
                LocalResult::Single(at) => return Some(at.timestamp_millis()),
                LocalResult::Ambiguous(first, _) => return Some(first.timestamp_millis()),
                LocalResult::None => naive += chrono::Duration::minutes(1),
            }
        }
        None
    }
}

/// The destroy windows in force: a stored setting that no longer parses allows no destroy
/// (fails closed) rather than any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum InForce {
    /// No windows: any time.
    #[default]
    Any,
    /// Only inside these.
    Windows(DestroyWindows),
    /// A damaged setting: never.
    Closed,
}

impl InForce {
    /// From the stored setting.
    pub fn stored(json: Option<&str>) -> Self {
        match DestroyWindows::stored(json) {
            None => InForce::Any,
            Some(Ok(w)) => InForce::Windows(w),
            Some(Err(_)) => InForce::Closed,
        }
    }

    /// `t` when destroys may start at `t`, else the next instant they may; `None` never.
    pub fn open_at_or_after(&self, t: EpochMs) -> Option<EpochMs> {
        match self {
            InForce::Any => Some(t),
            InForce::Windows(w) => w.open_at_or_after(t),
            InForce::Closed => None,
        }
    }

    /// Whether destroys may start at `t`.
    pub fn contains(&self, t: EpochMs) -> bool {
        match self {
            InForce::Any => true,
            InForce::Windows(w) => w.contains(t),
            InForce::Closed => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> EpochMs {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("a time")
            .timestamp_millis()
    }

    fn office(zone: &str) -> DestroyWindows {
        DestroyWindows::parse(
            &WindowsSpec {
                time_zone: zone.into(),
                windows: vec![WindowSpec {
                    days: "Mon-Fri".into(),
                    start: "09:00".into(),
                    end: "17:00".into(),
                }],
            },
            "destroy_windows",
        )
        .expect("valid")
    }

    #[test]
    fn inside_a_window_is_now_outside_waits_for_the_next_opening() {
        let w = office("Europe/Berlin");
        // Wednesday 2026-12-02 10:00 Berlin (UTC+1) is inside.
        let wed = at("2026-12-02T09:00:00Z");
        assert_eq!(w.open_at_or_after(wed), Some(wed));
        assert!(w.contains(wed));
        // Friday 19:00 Berlin waits for Monday 09:00 Berlin.
        assert_eq!(
            w.open_at_or_after(at("2026-12-04T18:00:00Z")),
            Some(at("2026-12-07T08:00:00Z"))
        );
        // 17:00 itself is closed; 08:59 waits a minute.
        assert!(!w.contains(at("2026-12-02T16:00:00Z")));
        assert_eq!(
            w.open_at_or_after(at("2026-12-02T07:59:00Z")),
            Some(at("2026-12-02T08:00:00Z"))
        );
    }

    #[test]
    fn windows_follow_daylight_saving_time() {
        let w = office("Europe/Berlin");
        // Summer: 09:00 Berlin is 07:00 UTC (Monday 2026-06-01).
        assert_eq!(
            w.open_at_or_after(at("2026-06-01T05:00:00Z")),
            Some(at("2026-06-01T07:00:00Z"))
        );
        // A window opening at 02:30 on the spring-forward day opens at 03:00 local.
        let night = DestroyWindows::parse(
            &WindowsSpec {
                time_zone: "Europe/Berlin".into(),
                windows: vec![WindowSpec {
                    days: "sun".into(),
                    start: "02:30".into(),
                    end: "04:00".into(),
                }],
            },
            "w",
        )
        .expect("valid");
        // 2026-03-29 is the spring-forward Sunday: 03:00 CEST is 01:00 UTC.
        assert_eq!(
            night.open_at_or_after(at("2026-03-29T00:00:00Z")),
            Some(at("2026-03-29T01:00:00Z"))
        );
        // On the autumn Sunday (2026-10-25) 02:30 happens twice: the first one opens it.
        assert_eq!(
            night.open_at_or_after(at("2026-10-24T23:00:00Z")),
            Some(at("2026-10-25T00:30:00Z"))
        );
    }

    #[test]
    fn several_windows_days_lists_and_midnight() {
        let w = DestroyWindows::parse(
            &WindowsSpec {
                time_zone: "UTC".into(),
                windows: vec![
                    WindowSpec {
                        days: "sat,sun".into(),
                        start: "20:00".into(),
                        end: "24:00".into(),
                    },
                    WindowSpec {
                        days: "fri-mon".into(),
                        start: "06:00".into(),
                        end: "07:00".into(),
                    },
                ],
            },
            "w",
        )
        .expect("valid");
        // Tuesday 2026-12-01 → Friday 06:00.
        assert_eq!(
            w.open_at_or_after(at("2026-12-01T12:00:00Z")),
            Some(at("2026-12-04T06:00:00Z"))
        );
        // Saturday 23:59 is inside the window that closes at midnight.
        assert!(w.contains(at("2026-12-05T23:59:00Z")));
        assert!(!w.contains(at("2026-12-05T12:00:00Z")));
    }

    #[test]
    fn bad_settings_are_refused_naming_the_field() {
        let spec = |days: &str, start: &str, end: &str, zone: &str| WindowsSpec {
            time_zone: zone.into(),
            windows: vec![WindowSpec {
                days: days.into(),
                start: start.into(),
                end: end.into(),
            }],
        };
        let refusal = |s: WindowsSpec| {
            DestroyWindows::parse(&s, "destroy_windows").expect_err("refused")[0]
                .field
                .clone()
        };
        assert_eq!(
            refusal(spec("mon-fri", "09:00", "17:00", "Mars/Olympus")),
            "destroy_windows.time_zone"
        );
        assert_eq!(
            refusal(spec("weekdays", "09:00", "17:00", "UTC")),
            "destroy_windows.windows[0].days"
        );
        assert_eq!(
            refusal(spec("mon", "9am", "17:00", "UTC")),
            "destroy_windows.windows[0].start"
        );
        assert_eq!(
            refusal(spec("mon", "17:00", "09:00", "UTC")),
            "destroy_windows.windows[0].end"
        );
        assert_eq!(
            refusal(spec("mon", "24:00", "24:00", "UTC")),
            "destroy_windows.windows[0].start"
        );
        assert_eq!(
            refusal(WindowsSpec {
                time_zone: "UTC".into(),
                windows: vec![]
            }),
            "destroy_windows.windows"
        );
    }

    #[test]
    fn a_damaged_stored_setting_allows_no_destroy() {
        assert_eq!(InForce::stored(None).open_at_or_after(5), Some(5));
        let closed = InForce::stored(Some("{not json"));
        assert_eq!(closed, InForce::Closed);
        assert_eq!(closed.open_at_or_after(5), None);
        let kept = office("UTC").to_json();
        assert_eq!(
            InForce::stored(Some(&kept)),
            InForce::Windows(office("UTC"))
        );
    }
}
