//! When to try a failed delivery again: the schedule with jitter, `Retry-After`, the minimum
//! wait after throttling, and when to give up.

use std::time::Duration;

use rand::Rng;

/// How one attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered.
    Delivered,
    /// 410 Gone: the endpoint asks never to be called again.
    Gone,
    /// Worth another try. `throttled` for a 429 or a timeout.
    Retry {
        /// The endpoint was overloaded or slow.
        throttled: bool,
        /// What `Retry-After` asked for.
        retry_after: Option<Duration>,
    },
}

/// What happens to the delivery next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Done.
    Succeeded,
    /// Dead letter because the endpoint answered 410; the configuration is disabled.
    Gone,
    /// Try again after this delay.
    RetryAfter(Duration),
    /// Dead letter: the schedule is used up.
    Exhausted,
}

/// Retry policy from the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Delay before each attempt, the first included.
    pub schedule: Vec<Duration>,
    /// ± fraction.
    pub jitter: f64,
    /// Least wait after a 429 or a timeout.
    pub min_throttle_wait: Duration,
}

impl Policy {
    /// The next step after the `attempts_in_cycle`-th attempt (1-based) ended with `verdict`.
    pub fn next(&self, attempts_in_cycle: usize, verdict: Verdict) -> Next {
        match verdict {
            Verdict::Delivered => Next::Succeeded,
            Verdict::Gone => Next::Gone,
            Verdict::Retry {
                throttled,
                retry_after,
            } => {
                let Some(scheduled) = self.schedule.get(attempts_in_cycle).copied() else {
                    return Next::Exhausted;
                };
                let mut delay = jittered(scheduled, self.jitter);
                if let Some(asked) = retry_after {
                    // Honoured, but only between the scheduled delay and twice it, so an
                    // endpoint can neither make us hammer it nor park a delivery for days.
                    delay = asked.clamp(scheduled, scheduled * 2);
                }
                if throttled {
                    delay = delay.max(self.min_throttle_wait);
                }
                Next::RetryAfter(delay)
            }
        }
    }

    /// Delay of the first attempt of a new delivery.
    pub fn first_delay(&self) -> Duration {
        self.schedule
            .first()
            .map(|d| jittered(*d, self.jitter))
            .unwrap_or_default()
    }
}

fn jittered(base: Duration, jitter: f64) -> Duration {
    if base.is_zero() || jitter <= 0.0 {
        return base;
    }
    let factor = rand::rng().random_range((1.0 - jitter)..=(1.0 + jitter));
    base.mul_f64(factor)
}

/// `Retry-After` as seconds or an HTTP date, relative to `now_ms`.
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(7 * 86_400)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let ms = at.timestamp_millis() - now_ms;
    Some(Duration::from_millis(ms.clamp(0, 7 * 86_400_000) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            schedule: [0, 5, 300, 1800]
                .iter()
                .map(|s| Duration::from_secs(*s))
                .collect(),
            jitter: 0.2,
            min_throttle_wait: Duration::from_secs(60),
        }
    }

    fn retry(throttled: bool, retry_after: Option<u64>) -> Verdict {
        Verdict::Retry {
            throttled,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn schedule_with_jitter_then_exhaustion() {
        let p = policy();
        for _ in 0..100 {
            let Next::RetryAfter(d) = p.next(1, retry(false, None)) else {
                panic!("expected a retry")
            };
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(6),
                "{d:?}"
            );
        }
        assert!(matches!(p.next(3, retry(false, None)), Next::RetryAfter(_)));
        assert_eq!(p.next(4, retry(false, None)), Next::Exhausted);
        assert_eq!(p.next(1, Verdict::Gone), Next::Gone);
        assert_eq!(p.next(4, Verdict::Delivered), Next::Succeeded);
    }

    #[test]
    fn retry_after_is_clamped_and_throttling_waits_the_minimum() {
        let p = policy();
        assert_eq!(
            p.next(2, retry(false, Some(1))),
            Next::RetryAfter(Duration::from_secs(300))
        );
        assert_eq!(
            p.next(2, retry(false, Some(450))),
            Next::RetryAfter(Duration::from_secs(450))
        );
        assert_eq!(
            p.next(2, retry(false, Some(99_999))),
            Next::RetryAfter(Duration::from_secs(600))
        );
        assert_eq!(
            p.next(1, retry(true, Some(7))),
            Next::RetryAfter(Duration::from_secs(60))
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        assert_eq!(parse_retry_after("120", 0), Some(Duration::from_secs(120)));
        let now = chrono::DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT")
            .map(|d| d.timestamp_millis())
            .unwrap_or_default();
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", 0), None);
    }
}
