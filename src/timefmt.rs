//! Times and durations as people read and write them: stored wall-clock
//! milliseconds as RFC 3339, ages as "3h12m", and the "since" filter of the
//! CLI and the admin API (an RFC 3339 time or a duration ago).

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
    if let Ok(d) = crate::config::parse_duration(text) {
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
