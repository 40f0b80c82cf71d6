//! The events every phase sends: ~1 KiB sale events, the same rows for the
//! raw SQLite baselines, and the webhook body for the raw request client and
//! the naive loop.

/// The fields the agent stores for one event (what `insert_event` writes).
pub struct Ev {
    pub event_id: String,
    pub event_type: &'static str,
    pub entity: String,
    pub occurred_at: &'static str,
    pub attributes: &'static str,
    pub payload: String,
}

const OCCURRED_AT: &str = "2026-11-23T10:15:00Z";
const ATTRIBUTES: &str = r#"{"terminal":"03"}"#;

/// The payload of event `i`, padded so the whole event line is `size` bytes
/// (never less than the fixed part).
fn payload(i: u64, pad: usize) -> String {
    let cents = 1000 + (i % 90_000);
    format!(
        r#"{{"store":"0042","till":"03","receipt":{i},"total":{}.{:02},"currency":"EUR","lines":[{{"sku":"4006381333931","qty":2,"price":9.95}},{{"sku":"4006381333948","qty":1,"price":103.55}}],"note":"{}"}}"#,
        cents / 100,
        cents % 100,
        "x".repeat(pad)
    )
}

/// Builds event `i` of a phase (`prefix` keeps ids unique across phases).
pub fn event(prefix: &str, i: u64, entity: &str, size: usize) -> Ev {
    let mut ev = Ev {
        event_id: format!("{prefix}-{i:09}"),
        event_type: "SaleCreated",
        entity: entity.to_string(),
        occurred_at: OCCURRED_AT,
        attributes: ATTRIBUTES,
        payload: payload(i, 0),
    };
    let len = ev.line().len();
    if len < size {
        ev.payload = payload(i, size - len);
    }
    ev
}

impl Ev {
    /// The event as a producer sends it (one JSON object, no newline).
    pub fn line(&self) -> String {
        format!(
            r#"{{"event_id":"{}","type":"{}","entity":"{}","occurred_at":"{}","attributes":{},"payload":{}}}"#,
            self.event_id, self.event_type, self.entity, self.occurred_at, self.attributes, self.payload
        )
    }

    /// The webhook body of the contract, as the agent would send it.
    pub fn webhook_body(&self, entity_seq: i64) -> String {
        format!(
            r#"{{"id":"{}","type":"{}","timestamp":"{}","entity":"{}","entity_seq":{entity_seq},"source":{{"store_id":"0042","agent_id":"bench"}},"correlation_id":null,"is_test":false,"attributes":{},"data":{}}}"#,
            self.event_id, self.event_type, self.occurred_at, self.entity, self.attributes, self.payload
        )
    }
}

/// The entity of event `i` when events are spread over `entities` entities.
pub fn order_entity(i: u64, entities: u64) -> String {
    format!("order:{}", i % entities.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_requested_size_and_are_valid_json() {
        let ev = event("t", 12345, "order:7", 1024);
        let line = ev.line();
        assert_eq!(line.len(), 1024);
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["entity"], "order:7");
        let body: serde_json::Value = serde_json::from_str(&ev.webhook_body(3)).expect("json");
        assert_eq!(body["entity_seq"], 3);
    }
}
