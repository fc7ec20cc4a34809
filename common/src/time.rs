//! Time: one clock for every decision, and conversions between the database's epoch
//! milliseconds, chrono and protobuf types.

use chrono::{DateTime, TimeZone, Utc};

/// Milliseconds since the Unix epoch: how every timestamp is stored.
pub type EpochMs = i64;

/// The latest instant protobuf timestamps may carry (9999-12-31T23:59:59Z).
pub const MAX_EPOCH_MS: EpochMs = 253_402_300_799_000;

/// Current time in epoch milliseconds (moved by the test clock when one is enabled).
pub fn now_ms() -> EpochMs {
    Utc::now().timestamp_millis() + test_clock::offset_ms()
}

/// A clock that tests can move, so that time-zone transitions and other dates far from today
/// can be crossed through the real binaries. Off unless [`test_clock::VARIABLE`] names a file;
/// then every reading of [`now_ms`] adds the offset in milliseconds that the file holds (one
/// integer, rewritten by the test whenever it moves the clock). Never set it in production:
/// the process logs a warning at start when it is on.
pub mod test_clock {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// The variable naming the offset file.
    pub const VARIABLE: &str = "EBB_TEST_CLOCK_FILE";

    fn file() -> Option<&'static str> {
        static FILE: OnceLock<Option<String>> = OnceLock::new();
        FILE.get_or_init(|| std::env::var(VARIABLE).ok().filter(|f| !f.is_empty()))
            .as_deref()
    }

    /// Whether the test clock is on (for the warning at start).
    pub fn enabled() -> Option<&'static str> {
        file()
    }

    /// The offset in force: the file's, or the last one read while the test rewrites it.
    pub fn offset_ms() -> i64 {
        static LAST: AtomicI64 = AtomicI64::new(0);
        let Some(path) = file() else {
            return 0;
        };
        match std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
        {
            Some(offset) => {
                LAST.store(offset, Ordering::Relaxed);
                offset
            }
            None => LAST.load(Ordering::Relaxed),
        }
    }
}

/// A protobuf timestamp from epoch milliseconds.
pub fn to_timestamp(ms: EpochMs) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// An optional protobuf timestamp from optional epoch milliseconds.
pub fn to_timestamp_opt(ms: Option<EpochMs>) -> Option<prost_types::Timestamp> {
    ms.map(to_timestamp)
}

/// Epoch milliseconds from a protobuf timestamp, refusing values outside year 1..=9999 and
/// malformed nanos.
pub fn from_timestamp(ts: &prost_types::Timestamp) -> Result<EpochMs, String> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(format!("nanos {} out of range 0..999999999", ts.nanos));
    }
    // 0001-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z, as protobuf defines it.
    if !(-62_135_596_800..=253_402_300_799).contains(&ts.seconds) {
        return Err(format!(
            "seconds {} outside 0001-01-01..9999-12-31",
            ts.seconds
        ));
    }
    Ok(ts.seconds * 1000 + i64::from(ts.nanos / 1_000_000))
}

/// A protobuf duration from milliseconds.
pub fn to_duration(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// Milliseconds from a protobuf duration, refusing negative or malformed values.
pub fn from_duration(d: &prost_types::Duration) -> Result<i64, String> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err("must be a non-negative duration".into());
    }
    d.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(d.nanos / 1_000_000)))
        .ok_or_else(|| "duration too large".to_owned())
}

/// RFC 3339 text of epoch milliseconds, for messages and event payloads.
pub fn rfc3339(ms: EpochMs) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// A chrono time from epoch milliseconds.
pub fn datetime(ms: EpochMs) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// Human text of a duration in milliseconds, e.g. `14days 2h`.
pub fn human(ms: i64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms.max(0) as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_refuse_out_of_range() {
        let ms = 1_790_000_000_123;
        assert_eq!(from_timestamp(&to_timestamp(ms)), Ok(ms));
        assert_eq!(from_timestamp(&to_timestamp(-1500)), Ok(-1500));
        assert!(
            from_timestamp(&prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0
            })
            .is_err()
        );
        assert!(
            from_timestamp(&prost_types::Timestamp {
                seconds: 0,
                nanos: -1
            })
            .is_err()
        );
    }

    #[test]
    fn durations_refuse_negative_and_overflow() {
        assert_eq!(from_duration(&to_duration(90_500)), Ok(90_500));
        assert!(
            from_duration(&prost_types::Duration {
                seconds: -1,
                nanos: 0
            })
            .is_err()
        );
        assert!(
            from_duration(&prost_types::Duration {
                seconds: i64::MAX,
                nanos: 0
            })
            .is_err()
        );
    }
}
