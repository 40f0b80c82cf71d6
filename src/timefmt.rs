//! Times, durations and sizes as people read and write them: stored
//! wall-clock milliseconds as RFC 3339, ages as "3h12m", durations ("30s",
//! "1h30m") and sizes ("512KiB") with the bounds every key keeps, and the
//! "since" filter of the CLI and the admin API (an RFC 3339 time or a
//! duration ago).

use std::time::Duration;

/// The longest duration any key takes: 100 years. Every duration is added
/// to clocks and turned into milliseconds of an `i64`; far below where
/// either overflows, and far beyond any retry, retention or period a store
/// needs (`give_up_after` has "never" for no limit).
pub const MAX_DURATION: Duration = Duration::from_secs(36_525 * 24 * 3600);

/// The largest size any key takes: what SQLite's 64-bit signed integers
/// hold (sizes are compared with the database's figures).
pub const MAX_SIZE: u64 = i64::MAX as u64;

/// Parses `30s`, `5m`, `7d`, `1h30m`; at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}); write it like \"30s\", \"5m\", \"7d\""))?;
    if d > MAX_DURATION {
        return Err(format!(
            "duration {text:?} is longer than 100 years (\"36525d\"), the longest the agent takes"
        ));
    }
    Ok(d)
}

/// Parses `512KiB`, `2GiB`, `1MB` or a plain number of bytes; at most
/// [`MAX_SIZE`].
pub fn parse_size(text: &str) -> Result<u64, String> {
    let n = text
        .trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("invalid size {text:?} ({e}); write it like \"512KiB\", \"2GiB\""))?;
    check_size(n).map_err(|e| format!("size {text:?} {e}"))
}

/// A size within [`MAX_SIZE`].
pub fn check_size(n: u64) -> Result<u64, String> {
    if n > MAX_SIZE {
        return Err(format!(
            "is more than {MAX_SIZE} bytes (8 EiB), the largest the agent takes"
        ));
    }
    Ok(n)
}

/// Formats wall-clock ms as RFC 3339 UTC (empty if out of range).
pub fn ms_to_rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// "3h12m"-style durations for people, from seconds (negative counts as 0).
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

/// A "since" value that is neither an RFC 3339 time nor a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?}: give an RFC 3339 time or a duration like \"2h\"")]
pub struct BadSince {
    /// The text that was given.
    pub given: String,
}

/// Parses a "since" value into wall-clock ms: an RFC 3339 time, or a
/// duration ("2h", "7d") before `now_ms`.
pub fn parse_since(text: &str, now_ms: i64) -> Result<i64, BadSince> {
    // Not `parse_duration`: its 100-year bound is for config keys. A filter
    // reaching back further than that is simply "since the beginning".
    if let Ok(d) = humantime::parse_duration(text.trim()) {
        return Ok(now_ms.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| BadSince {
            given: text.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-21T10:00:00Z
    const T0: i64 = 1_795_255_200_000;

    #[test]
    fn since_takes_a_time_or_a_duration_ago() {
        assert_eq!(parse_since("2h", T0), Ok(T0 - 2 * 3600 * 1000));
        assert_eq!(parse_since("2026-11-21T10:00:00Z", 0), Ok(T0));
        // Beyond the config keys' 100 years (and beyond any i64 of ms): since
        // the beginning, not an error.
        let before_epoch = parse_since("900256h", T0).expect("a duration");
        assert!(before_epoch < 0, "{before_epoch}");
        assert!(parse_since("5000000000000000000s", T0).is_ok());
        let err = parse_since("yesterday", T0).expect_err("not a time");
        assert_eq!(
            err.to_string(),
            "\"yesterday\": give an RFC 3339 time or a duration like \"2h\""
        );
    }

    #[test]
    fn times_and_ages_read_as_people_write_them() {
        assert_eq!(ms_to_rfc3339(T0), "2026-11-21T10:00:00Z");
        let ages: Vec<String> = [-5, 42, 125, 3 * 3600 + 12 * 60, 2 * 86400 + 3600]
            .into_iter()
            .map(human_duration)
            .collect();
        assert_eq!(ages, ["0s", "42s", "2m05s", "3h12m", "2d01h"]);
    }
}
