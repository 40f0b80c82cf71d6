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
    // Never a panic, whatever the config holds: `clamp` wants min <= max
    // (config checks it; this does not rely on it), the sums saturate.
    let (low, high) = (retry.initial.min(retry.max), retry.max);
    let exp = failures.saturating_sub(1).min(30);
    let base = low.saturating_mul(1u32 << exp).min(high);
    // "Equal jitter": half fixed, half random, never below `initial`.
    let half = base / 2;
    let jitter = if jitter.is_nan() { 0.0 } else { jitter.clamp(0.0, 1.0) };
    let random = Duration::try_from_secs_f64(half.as_secs_f64() * jitter).unwrap_or(half);
    half.saturating_add(random.min(half)).clamp(low, high)
}

/// Parses `Retry-After`: delay-seconds or an HTTP date, as the wait from
/// now. Delay-seconds too large for a number are a very long wait (the
/// rules clamp any wait to `retry.max`). A date in the past is no wait
/// (`Duration::ZERO`, which the rules take as no `Retry-After`: the
/// backoff); a negative number or anything else is not a `Retry-After`.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(value.parse::<u64>().map_or(Duration::MAX, Duration::from_secs));
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

    #[test]
    fn hostile_retry_after_values_parse_without_a_panic() {
        // Beyond u64: a very long wait (the rules clamp it to retry.max).
        assert_eq!(
            parse_retry_after("18446744073709551615"),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(parse_retry_after("99999999999999999999999999"), Some(Duration::MAX));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        for garbage in ["-5", "+5", "", "1.5", "5s", "\u{0}", "Fri, 31 Dec 9999 25:00:00 GMT"] {
            assert_eq!(parse_retry_after(garbage), None, "{garbage:?}");
        }
        let far = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT").expect("a date");
        assert!(far > Duration::from_secs(3600 * 24 * 365 * 7000), "{far:?}");
    }

    #[test]
    fn extreme_configs_give_a_delay_within_bounds_without_a_panic() {
        let huge = RetryConfig {
            initial: Duration::from_secs(1),
            max: Duration::MAX,
            give_up_after: None,
        };
        for failures in [1, 31, 40, u32::MAX] {
            for jitter in [0.0, 0.5, 0.999_999, f64::NAN, f64::INFINITY, -1.0] {
                let d = delay_with(&huge, failures, jitter);
                assert!(d >= Duration::from_secs(1), "{failures} {jitter}: {d:?}");
            }
        }
        // A top below the start (config refuses it): the top, no panic.
        let inverted = RetryConfig {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(2),
            give_up_after: None,
        };
        assert_eq!(delay_with(&inverted, 5, 0.5), Duration::from_secs(2));
        let max_start = RetryConfig {
            initial: Duration::MAX,
            max: Duration::MAX,
            give_up_after: None,
        };
        assert_eq!(delay_with(&max_start, u32::MAX, 1.0), Duration::MAX);
    }
}
