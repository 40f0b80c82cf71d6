//! A checking webhook receiver: verifies Standard Webhooks signatures and
//! per-entity order by `entity_seq`, for one event per request or a batch
//! (a JSON array of events, signed once with the batch's id). Used by
//! `receive` (field checks, tests) and by `demo`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::Router;
use serde::Serialize;
use tokio::sync::mpsc;

/// Timestamps further than this from our clock are refused (replay guard).
const TIMESTAMP_TOLERANCE_S: i64 = 300;

/// The order verdict for one received event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "order")]
pub enum Order {
    /// The next one of its entity (or the first seen).
    InOrder,
    /// This id was received before (a retry): allowed.
    Duplicate,
    /// Later than expected: `missing` sequence numbers were not seen (a
    /// subscription filtered by type sees gaps; so does a late receiver).
    Gap {
        /// How many numbers were skipped.
        missing: i64,
    },
    /// A new event older than one already received: order was broken.
    OutOfOrder {
        /// Highest `entity_seq` already seen for the entity.
        after: i64,
    },
}

/// One received event, checked.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    /// `webhook-id` / body `id`.
    pub id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Entity.
    pub entity: String,
    /// Position within the entity.
    pub entity_seq: i64,
    /// Whether the signature was checked and valid (`None`: no secret given).
    pub signature_valid: Option<bool>,
    /// The batch it came in (its `webhook-id`), if it came in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// Order verdict.
    #[serde(flatten)]
    pub order: Order,
    /// The whole body.
    pub body: serde_json::Value,
}

/// Running totals.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Requests with a well-formed event.
    pub received: u64,
    /// Distinct event ids.
    pub unique: u64,
    /// Repeated ids.
    pub duplicates: u64,
    /// Events after a gap.
    pub gaps: u64,
    /// Order violations.
    pub out_of_order: u64,
    /// Refused for a bad or missing signature.
    pub bad_signatures: u64,
    /// Refused as malformed.
    pub invalid: u64,
}

/// Checks events as they arrive.
pub struct Checker {
    secrets: Vec<Vec<u8>>,
    last_seq: HashMap<String, i64>,
    seen: HashSet<String>,
    /// Totals so far.
    pub stats: Stats,
}

impl Checker {
    /// A checker verifying against `secrets` (none: signatures not checked).
    pub fn new(secrets: Vec<Vec<u8>>) -> Self {
        Checker {
            secrets,
            last_seq: HashMap::new(),
            seen: HashSet::new(),
            stats: Stats::default(),
        }
    }

    /// Checks one request, with one event or a batch of them (in the order
    /// they came); `Err((status, reason))` when it must be refused (a batch
    /// is refused whole if one of its events is malformed).
    pub fn check(&mut self, headers: &HeaderMap, body: &[u8]) -> Result<Vec<Received>, (StatusCode, String)> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
        let msg_id = header("webhook-id").to_string();
        let signature_valid = if self.secrets.is_empty() {
            None
        } else {
            let timestamp: i64 = header("webhook-timestamp").parse().unwrap_or(0);
            let now = crate::outbox::now_ms() / 1000;
            let fresh = (now - timestamp).abs() <= TIMESTAMP_TOLERANCE_S;
            let signed = self
                .secrets
                .iter()
                .any(|k| crate::signing::verify(k, &msg_id, timestamp, body, header("webhook-signature")));
            if !(fresh && signed) {
                self.stats.bad_signatures += 1;
                let why = if signed {
                    "webhook-timestamp too far from now"
                } else {
                    "signature does not verify"
                };
                return Err((StatusCode::UNAUTHORIZED, why.to_string()));
            }
            Some(true)
        };
        let parsed: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                self.stats.invalid += 1;
                return Err((StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")));
            }
        };
        let (batch, events) = match parsed {
            serde_json::Value::Array(events) => (Some(msg_id.clone()), events),
            single => (None, vec![single]),
        };
        let mut checked = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            let text = |k: &str| event.get(k).and_then(|v| v.as_str()).map(str::to_string);
            let (Some(id), Some(event_type), Some(entity), Some(entity_seq)) = (
                text("id"),
                text("type"),
                text("entity"),
                event.get("entity_seq").and_then(|v| v.as_i64()),
            ) else {
                self.stats.invalid += 1;
                let at = if batch.is_some() {
                    format!("event [{index}] of the batch")
                } else {
                    "body".into()
                };
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("{at} lacks id, type, entity or entity_seq"),
                ));
            };
            if batch.as_deref() == Some(id.as_str()) {
                self.stats.invalid += 1;
                return Err((
                    StatusCode::BAD_REQUEST,
                    "a batch's webhook-id is one of its event ids".into(),
                ));
            }
            if batch.is_none() && !msg_id.is_empty() && msg_id != id {
                self.stats.invalid += 1;
                return Err((StatusCode::BAD_REQUEST, "webhook-id differs from the body's id".into()));
            }
            checked.push((id, event_type, entity, entity_seq));
        }
        let mut out = Vec::with_capacity(checked.len());
        for ((id, event_type, entity, entity_seq), body) in checked.into_iter().zip(events) {
            let order = self.order_of(&id, &entity, entity_seq);
            out.push(Received {
                id,
                event_type,
                entity,
                entity_seq,
                signature_valid,
                batch: batch.clone(),
                order,
                body,
            });
        }
        Ok(out)
    }

    /// The order verdict of one well-formed event, counted.
    fn order_of(&mut self, id: &str, entity: &str, entity_seq: i64) -> Order {
        let id = id.to_string();
        let entity = entity.to_string();
        self.stats.received += 1;
        let order = if !self.seen.insert(id.clone()) {
            self.stats.duplicates += 1;
            Order::Duplicate
        } else {
            self.stats.unique += 1;
            let last = self.last_seq.get(&entity).copied();
            let order = match last {
                None => Order::InOrder,
                Some(l) if entity_seq == l + 1 => Order::InOrder,
                Some(l) if entity_seq > l + 1 => {
                    self.stats.gaps += 1;
                    Order::Gap {
                        missing: entity_seq - l - 1,
                    }
                }
                Some(l) => {
                    self.stats.out_of_order += 1;
                    Order::OutOfOrder { after: l }
                }
            };
            let slot = self.last_seq.entry(entity).or_insert(entity_seq);
            *slot = (*slot).max(entity_seq);
            order
        };
        order
    }
}

/// Shared state of a running receiver.
pub struct Shared {
    /// The checker.
    pub checker: Mutex<Checker>,
    /// Where checked events go.
    pub events: mpsc::UnboundedSender<Received>,
}

/// An axum router answering `POST` on any path.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "POST webhooks here\n".into());
    }
    // Signatures are over the body after undoing its content encoding.
    let body = match headers.get("content-encoding").and_then(|v| v.to_str().ok()) {
        None | Some("identity") => body.to_vec(),
        Some(enc) if enc.eq_ignore_ascii_case("gzip") => {
            use std::io::Read as _;
            let mut plain = Vec::new();
            if let Err(e) = flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut plain) {
                return (StatusCode::BAD_REQUEST, format!("body is not valid gzip: {e}\n"));
            }
            plain
        }
        Some(other) => {
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content-encoding {other:?} is not supported (gzip is)\n"),
            )
        }
    };
    let result = shared
        .checker
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .check(&headers, &body);
    match result {
        Ok(received) => {
            for event in received {
                let _ = shared.events.send(event);
            }
            (StatusCode::OK, "ok\n".into())
        }
        Err((status, why)) => {
            tracing::warn!(%status, reason = %why, "refused a webhook");
            (status, format!("{why}\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str, entity: &str, seq: i64) -> (HeaderMap, Vec<u8>) {
        let body = serde_json::json!({"id": id, "type": "T", "entity": entity, "entity_seq": seq}).to_string();
        let mut h = HeaderMap::new();
        h.insert("webhook-id", id.parse().expect("header"));
        (h, body.into_bytes())
    }

    #[test]
    fn classifies_order() {
        let mut c = Checker::new(vec![]);
        let mut verdict = |id: &str, seq| {
            let (h, b) = request(id, "e", seq);
            c.check(&h, &b).expect("accepted").remove(0).order
        };
        assert_eq!(verdict("a", 1), Order::InOrder);
        assert_eq!(verdict("a", 1), Order::Duplicate);
        assert_eq!(verdict("b", 2), Order::InOrder);
        assert_eq!(verdict("d", 4), Order::Gap { missing: 1 });
        assert_eq!(verdict("c", 3), Order::OutOfOrder { after: 4 });
        assert_eq!(c.stats.out_of_order, 1);
        assert_eq!(c.stats.duplicates, 1);
    }

    #[test]
    fn refuses_bad_signatures() {
        let key = crate::signing::decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let mut c = Checker::new(vec![key.clone()]);
        let (mut h, b) = request("a", "e", 1);
        let ts = crate::outbox::now_ms() / 1000;
        h.insert("webhook-timestamp", ts.to_string().parse().expect("header"));
        h.insert("webhook-signature", "v1,AAAA".parse().expect("header"));
        assert_eq!(c.check(&h, &b).unwrap_err().0, StatusCode::UNAUTHORIZED);
        let sig = crate::signing::sign(&key, "a", ts, &b);
        h.insert("webhook-signature", sig.parse().expect("header"));
        assert_eq!(c.check(&h, &b).expect("valid")[0].signature_valid, Some(true));
    }

    #[test]
    fn a_batch_is_checked_event_by_event_and_refused_whole_if_one_is_malformed() {
        let mut c = Checker::new(vec![]);
        let mut h = HeaderMap::new();
        h.insert("webhook-id", "batch~1".parse().expect("header"));
        let body = br#"[{"id":"a","type":"T","entity":"e","entity_seq":1},{"id":"b","type":"T","entity":"e","entity_seq":2},{"id":"x","type":"T","entity":"f","entity_seq":1}]"#;
        let got = c.check(&h, body).expect("accepted");
        assert_eq!(got.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a", "b", "x"]);
        assert!(got
            .iter()
            .all(|r| r.order == Order::InOrder && r.batch.as_deref() == Some("batch~1")));
        let bad = br#"[{"id":"c","type":"T","entity":"e","entity_seq":3},{"id":"d"}]"#;
        let (status, why) = c.check(&h, bad).expect_err("malformed");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(why.contains("event [1] of the batch"), "{why}");
        assert_eq!(c.stats.unique, 3, "nothing of the refused batch counted");
    }
}
