//! Retry delays: exponential from `retry.initial` to `retry.max`, with jitter
//! so that a store full of agents does not retry in lock step.

use std::time::{Duration, SystemTime};

use crate::config::RetryConfig;

/// Delay before attempt `failures + 1`, after `failures` (>= 1) failures in a row.
pub fn delay(retry: &RetryConfig, failures: u32) -> Duration {
    delay_with(retry, failures, rand::random::<f64>())
}

/// [`delay`] with the random draw given (`jitter` in `[0, 1)`), so that a
/// caller draws once and tests are exact.
pub fn delay_with(retry: &RetryConfig, failures: u32, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let base = retry.initial.saturating_mul(1u32 << exp).min(retry.max);
    // "Equal jitter": half fixed, half random, never below `initial`.
    let half = base / 2;
    (half + half.mul_f64(jitter.clamp(0.0, 1.0))).clamp(retry.initial, retry.max)
}

/// Parses `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry() -> RetryConfig {
        RetryConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            give_up_after: None,
        }
    }

    #[test]
    fn grows_exponentially_within_bounds() {
        for failures in 1..40 {
            let d = delay(&retry(), failures);
            let base = Duration::from_secs(1u64 << (failures - 1).min(20)).min(Duration::from_secs(300));
            assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_secs(300),
                "{failures}: {d:?}"
            );
            assert!(d >= base / 2 && d <= base, "{failures}: {d:?} vs {base:?}");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(61));
        let d = parse_retry_after(&in_a_minute).expect("date");
        assert!(d > Duration::from_secs(55) && d <= Duration::from_secs(61), "{d:?}");
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
