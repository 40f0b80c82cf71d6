//! What Service Bus's answers mean, in its own words: the status classes
//! are [`classify`]'s (2xx delivered, 429/503 throttle with `Retry-After`,
//! 410 gone, the rest refused), the error text is the `<Detail>` of the
//! service's XML error body (`ExpiredToken: ...`, `MessagingEntityNotFound:
//! ...`) and says what to fix: 401 the key or application, 403 the Send
//! right (or the entity's quota, which Azure also answers 403), 404 the
//! queue or topic (refused and retried, not gone: an operator may create
//! it), 413 the size.

use std::time::Duration;

use crate::deliver::destination::Answer;
use crate::deliver::http_answer::{answer_of, classify, printable};
use crate::deliver::http_client::{Failure, Reply};

/// What the words name: the identity sending, and where to.
pub struct Target<'a> {
    /// "SAS key \"store-sender\"" or "Entra ID application ... of tenant ...".
    pub identity: &'a str,
    /// Whether the identity is an Entra ID application (its right is a
    /// role, a SAS policy's is a claim).
    pub entra: bool,
    /// The namespace's host.
    pub namespace: &'a str,
    /// The queue or topic.
    pub entity: &'a str,
}

/// The answer to a send, worded for Service Bus.
pub fn answer(result: Result<Reply, Failure>, timeout: Duration, target: &Target<'_>) -> Answer {
    let reply = match result {
        Ok(reply) if !reply.status.is_success() => reply,
        other => return answer_of(other, timeout),
    };
    let code = reply.status.as_u16();
    let detail = detail_of(&reply.body);
    let mut answer = classify(reply);
    answer.error = Some(wording(code, &detail, target));
    answer
}

/// The operator's line for status `code` with the service's `detail`.
pub fn wording(code: u16, detail: &str, t: &Target<'_>) -> String {
    let said = if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    };
    let place = format!("{}/{}", t.namespace, t.entity);
    match code {
        401 => format!(
            "HTTP 401: Service Bus refused the token of {}{said}; {}",
            t.identity,
            if t.entra {
                "check tenant_id and client_id, and that the application belongs to this namespace's directory"
            } else {
                "check sas_key_name and the key in sas_key_file (an ExpiredToken also means the store PC's clock is off)"
            }
        ),
        403 if is_quota(detail) => format!(
            "HTTP 403: {place} refused the message for its size or quota{said}; lower batch.max_bytes or ingest.max_event_bytes, or let the consumers catch up"
        ),
        403 => format!(
            "HTTP 403: {} may not send to {place}{said}; {}",
            t.identity,
            if t.entra {
                "give the application the role Azure Service Bus Data Sender on the namespace or the queue/topic"
            } else {
                "give the shared access policy the Send claim"
            }
        ),
        404 => format!(
            "HTTP 404: no queue or topic {:?} in namespace {}{said}; create it (sessions and duplicate detection on): the events wait",
            t.entity, t.namespace
        ),
        413 => format!(
            "HTTP 413: the request is too large for {place}{said}; lower batch.max_bytes (Standard namespaces take 256 KB)"
        ),
        _ if detail.is_empty() => format!("HTTP {code}"),
        _ => format!("HTTP {code}: {detail}"),
    }
}

/// Whether a 403's detail is about size or quota, not the right to send.
fn is_quota(detail: &str) -> bool {
    let lower = detail.to_ascii_lowercase();
    ["quota", "too large", "size", "exceeded"]
        .iter()
        .any(|w| lower.contains(w))
}

/// The service's `<Detail>` (its tracking ids cut off), or the start of
/// a body that is not its XML; safe for a log line.
pub fn detail_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let inner = match (text.find("<Detail>"), text.find("</Detail>")) {
        (Some(start), Some(end)) if start + 8 <= end => &text[start + 8..end],
        _ => &text[..text.len().min(200)],
    };
    let inner = inner.split(" TrackingId:").next().unwrap_or_default();
    let unescaped = inner.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
    let mut shown = printable(unescaped.trim());
    if shown.len() > 300 {
        let mut cut = 300;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        shown.truncate(cut);
        shown.push_str("...");
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::destination::AnswerKind;
    use bytes::Bytes;

    fn reply(code: u16, detail: &str) -> Result<Reply, Failure> {
        Ok(Reply {
            status: http::StatusCode::from_u16(code).expect("status"),
            headers: http::HeaderMap::new(),
            body: Bytes::from(format!(
                "<Error><Code>{code}</Code><Detail>{detail} TrackingId:abc_G0, SystemTracker:x, Timestamp:2026</Detail></Error>"
            )),
        })
    }

    fn target(entra: bool) -> Target<'static> {
        Target {
            identity: if entra {
                "Entra ID application app-1 of tenant t"
            } else {
                "SAS key \"store-sender\""
            },
            entra,
            namespace: "retail.servicebus.windows.net",
            entity: "pos-events",
        }
    }

    fn said(code: u16, detail: &str, entra: bool) -> Answer {
        answer(reply(code, detail), Duration::from_secs(5), &target(entra))
    }

    #[test]
    fn refusals_name_the_key_the_right_or_the_queue_with_the_services_detail() {
        let a = said(401, "ExpiredToken: The token is expired.", false);
        assert_eq!(a.kind, AnswerKind::Refused);
        let e = a.error.expect("error");
        assert!(
            e.contains("SAS key \"store-sender\"") && e.contains("ExpiredToken") && !e.contains("TrackingId"),
            "{e}"
        );
        let e = said(403, "Unauthorized access. 'Send' claim(s) are required.", true)
            .error
            .expect("error");
        assert!(
            e.contains("Azure Service Bus Data Sender") && e.contains("app-1"),
            "{e}"
        );
        let e = said(403, "Unauthorized access. 'Send' claim(s) are required.", false)
            .error
            .expect("error");
        assert!(e.contains("Send claim"), "{e}");
        let e = said(403, "QuotaExceeded: The maximum entity size has been reached.", false)
            .error
            .expect("error");
        assert!(e.contains("size or quota") && !e.contains("Send claim"), "{e}");
        let a = said(
            404,
            "MessagingEntityNotFound: The messaging entity could not be found.",
            false,
        );
        assert_eq!(a.kind, AnswerKind::Refused, "retried: an operator may create it");
        assert!(a.error.expect("error").contains("no queue or topic \"pos-events\""));
        assert_eq!(said(410, "MessagingEntityNotFound", false).kind, AnswerKind::Gone);
        assert_eq!(said(503, "ServerBusy", false).kind, AnswerKind::Throttled);
        assert_eq!(
            said(500, "InternalServerError: retry", false).error.as_deref(),
            Some("HTTP 500: InternalServerError: retry")
        );
    }

    #[test]
    fn a_hostile_detail_is_cut_and_made_printable() {
        let long = format!("a\nb\x1b[2J{}", "x".repeat(1000));
        let d = detail_of(format!("<Error><Detail>{long}</Detail></Error>").as_bytes());
        assert!(d.starts_with("a b [2J") && d.len() <= 303, "{d}");
        assert_eq!(detail_of(b"plain text"), "plain text");
    }
}
