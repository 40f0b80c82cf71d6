//! What an HTTP answer means for delivery, for every destination over HTTP:
//! the status classes (2xx delivered; 429 and 503 throttle; 410 gone; 408,
//! 502 and 504 unavailable; the rest refused), `Retry-After`, an answer cut
//! off, no answer at all, and the endpoint's text made safe for a log line.
//! A destination with its own error dialect (Pub/Sub's JSON errors) starts
//! from [`classify`] and words the error its way.

use std::time::Duration;

use http::header::HeaderValue;

use crate::deliver::backoff::parse_retry_after;
use crate::deliver::destination::{Answer, AnswerKind};
use crate::deliver::http_client::{Failure, Reply};

/// What an HTTP answer means: 2xx delivered; 429 and 503 throttle the whole
/// subscription; 410 says the endpoint is gone; 408, 502 and 504 the
/// endpoint is unavailable; anything else refuses this event.
pub fn classify(reply: Reply) -> Answer {
    let status = reply.status;
    let code = status.as_u16();
    if status.is_success() {
        return Answer::delivered(Some(code));
    }
    let header = |name| reply.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let retry_after = header(http::header::RETRY_AFTER).and_then(parse_retry_after);
    // (A header value holds no control characters: the parser refuses them.)
    let location = header(http::header::LOCATION).map(str::to_string);
    let text = printable(&String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)]));
    let kind = match code {
        429 | 503 => AnswerKind::Throttled,
        410 => AnswerKind::Gone,
        408 | 502 | 504 => AnswerKind::Unavailable,
        _ => AnswerKind::Refused,
    };
    let detail = match (status.is_redirection(), location) {
        (true, Some(to)) => format!("HTTP {code}: redirect to {to} not followed; point the subscription url there"),
        _ if text.trim().is_empty() => format!("HTTP {code}"),
        _ => format!("HTTP {code}: {}", text.trim()),
    };
    let retry_after = if matches!(code, 429 | 503) { retry_after } else { None };
    Answer {
        kind,
        status: Some(code),
        error: Some(detail),
        retry_after,
    }
}

/// `text` from an endpoint as it may go into a log line, `status` or the
/// page: control characters (newlines, terminal escapes) become spaces, so
/// an answer cannot forge a log line or repaint a terminal.
pub fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// What a request's outcome means for delivery. An answer whose body was
/// cut off counts by its status when that is a failure anyway (a 429 with
/// its `Retry-After`, a 503, a 410); a 2xx cut off is not a delivery.
pub fn answer_of(result: Result<Reply, Failure>, timeout: Duration) -> Answer {
    match result {
        Ok(reply) => classify(reply),
        Err(Failure::Broken(Some(reply), _)) if !reply.status.is_success() => classify(*reply),
        Err(failure) => {
            let status = match &failure {
                Failure::Broken(reply, _) => reply.as_ref().map(|r| r.status.as_u16()),
                _ => None,
            };
            Answer::failed(AnswerKind::Unavailable, status, describe_failure(&failure, timeout))
        }
    }
}

/// What a request without an answer tells a person.
pub fn describe_failure(failure: &Failure, timeout: Duration) -> String {
    match failure {
        Failure::Connect(reason) | Failure::Tls(reason) => format!("cannot connect: {reason}"),
        Failure::Timeout => format!("no answer within the timeout ({})", humantime::format_duration(timeout)),
        Failure::Broken(Some(reply), reason) => format!("answer {} cut off: {reason}", reply.status),
        Failure::Broken(None, reason) => format!("request failed: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::header::HeaderMap;

    fn reply(code: u16, headers: &[(&'static str, &[u8])], body: &'static [u8]) -> Reply {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_bytes(value).expect("value"));
        }
        Reply {
            status: http::StatusCode::from_u16(code).expect("status"),
            headers: map,
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn hostile_retry_after_values_are_read_without_a_panic_and_only_on_429_and_503() {
        let retry_after =
            |code, value: &'static [u8]| classify(reply(code, &[("retry-after", value)], b"")).retry_after;
        assert_eq!(
            retry_after(429, b"18446744073709551615"),
            Some(Duration::from_secs(u64::MAX)),
            "the rules clamp it to retry.max"
        );
        assert_eq!(retry_after(503, b"99999999999999999999999"), Some(Duration::MAX));
        assert_eq!(retry_after(503, b"-30"), None);
        assert_eq!(retry_after(429, b"soon \xff"), None, "not text: no Retry-After");
        assert_eq!(retry_after(429, b"Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(retry_after(500, b"60"), None, "only a throttle pauses");
    }

    #[test]
    fn an_endpoint_cannot_put_control_characters_in_the_error_people_read() {
        let answer = classify(reply(
            500,
            &[],
            b"boom\n2026-01-01T00:00:00Z INFO delivered all\x1b[2J\r",
        ));
        assert_eq!(
            answer.error.as_deref(),
            Some("HTTP 500: boom 2026-01-01T00:00:00Z INFO delivered all [2J")
        );
    }

    #[test]
    fn an_answer_cut_off_counts_by_its_status_and_keeps_its_retry_after() {
        let cut_off = |code: u16, headers: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.insert(*name, HeaderValue::from_str(value).expect("value"));
            }
            let reply = Reply {
                status: http::StatusCode::from_u16(code).expect("status"),
                headers: map,
                body: Bytes::from_static(b"slow do"),
            };
            answer_of(
                Err(Failure::Broken(Some(Box::new(reply)), "connection reset".into())),
                Duration::from_secs(10),
            )
        };
        let throttled = cut_off(429, &[("retry-after", "7")]);
        assert_eq!(throttled.kind, AnswerKind::Throttled);
        assert_eq!(throttled.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(throttled.status, Some(429));
        assert_eq!(cut_off(410, &[]).kind, AnswerKind::Gone);
        // A 2xx whose body was cut off is not a delivery: it goes again.
        let cut_ok = cut_off(200, &[]);
        assert_eq!(cut_ok.kind, AnswerKind::Unavailable);
        assert_eq!(cut_ok.status, Some(200));
        assert!(
            cut_ok
                .error
                .as_deref()
                .is_some_and(|e| e.contains("200 OK cut off: connection reset")),
            "{:?}",
            cut_ok.error
        );
    }
}
