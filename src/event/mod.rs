//! The event a producer sends, its validation, and the reply it gets.
//!
//! Validation happens here, before anything reaches storage, so a rejected
//! event is never half-stored. Every message names the field at fault, and
//! the error carries that field for callers (the spool's reports) to use.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Top-level fields an event may have; anything else is rejected.
const KNOWN_FIELDS: [&str; 8] = [
    "event_id",
    "type",
    "entity",
    "occurred_at",
    "correlation_id",
    "is_test",
    "attributes",
    "payload",
];

/// The type of the agent's own heartbeats (`[agent] heartbeat`): reserved,
/// a producer may not send it (the agent supersedes undelivered ones, so a
/// producer's would be deleted undelivered).
pub const HEARTBEAT_TYPE: &str = "AgentHeartbeat";

/// Entities starting with this are the agent's own (`agent:<agent_id>`):
/// reserved for the same reason.
pub const AGENT_ENTITY_PREFIX: &str = "agent:";

/// Error codes of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON at all.
    InvalidJson,
    /// JSON, but not a valid event.
    InvalidEvent,
    /// Larger than `ingest.max_event_bytes`.
    TooLarge,
    /// The database reached its cap.
    StorageFull,
    /// The agent is stopping.
    ShuttingDown,
    /// Anything else (I/O errors); the event was not stored.
    Internal,
}

impl ErrorCode {
    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidEvent => "invalid_event",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Why one event was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngestError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable reason naming the field.
    pub message: String,
    /// The event's top-level field at fault, when one is. Not in replies:
    /// the contract fixes those as code and message.
    #[serde(skip)]
    pub field: Option<String>,
}

impl IngestError {
    /// Builds an error about no one field.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        IngestError {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// An `invalid_event` error about `field`; the message reads
    /// `<field>: <problem>`.
    pub fn at_field(field: &str, problem: impl std::fmt::Display) -> Self {
        IngestError {
            field: Some(field.to_string()),
            ..IngestError::new(ErrorCode::InvalidEvent, format!("{field}: {problem}"))
        }
    }
}

/// The answer to one event, exactly as the contract writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Committed (now or earlier, for a duplicate).
    Accepted {
        /// The event's id (generated when the producer gave none).
        event_id: String,
        /// Its position within its entity.
        entity_seq: i64,
        /// Already in the outbox before this request.
        duplicate: bool,
    },
    /// Not stored.
    Rejected(IngestError),
}

impl Reply {
    /// The reply's JSON text, fields in the contract's order.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Ok<'a> {
            ok: bool,
            event_id: &'a str,
            entity_seq: i64,
            duplicate: bool,
        }
        #[derive(Serialize)]
        struct Err<'a> {
            ok: bool,
            error: &'a IngestError,
        }
        let text = match self {
            Reply::Accepted {
                event_id,
                entity_seq,
                duplicate,
            } => serde_json::to_string(&Ok {
                ok: true,
                event_id,
                entity_seq: *entity_seq,
                duplicate: *duplicate,
            }),
            Reply::Rejected(error) => serde_json::to_string(&Err { ok: false, error }),
        };
        text.unwrap_or_else(|_| r#"{"ok":false,"error":{"code":"internal","message":"reply encoding"}}"#.into())
    }
}

impl From<IngestError> for Reply {
    fn from(e: IngestError) -> Self {
        Reply::Rejected(e)
    }
}

/// A validated event, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Producer's id, or a generated UUIDv7.
    pub event_id: String,
    /// Event type, e.g. `SaleCreated`.
    pub event_type: String,
    /// Ordering key.
    pub entity: String,
    /// RFC 3339 UTC time.
    pub occurred_at: String,
    /// Producer's correlation id.
    pub correlation_id: Option<String>,
    /// Test traffic flag, passed through.
    pub is_test: bool,
    /// String map as compact JSON text, `None` when empty.
    pub attributes: Option<String>,
    /// The payload's JSON text, verbatim.
    pub payload: String,
}

/// Whether `t` is a valid event type (`^[A-Za-z][A-Za-z0-9._-]{0,127}$`).
pub fn valid_type(t: &str) -> bool {
    let mut chars = t.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && t.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Whether `id` is a valid event id (1-128 chars of `[A-Za-z0-9._:-]`).
pub fn valid_event_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
}

/// Checks an entity (1-256 bytes, no control characters).
pub fn check_entity(entity: &str) -> Result<(), IngestError> {
    if entity.is_empty() {
        return Err(IngestError::at_field("entity", "must not be empty"));
    }
    if entity.len() > 256 {
        return Err(IngestError::at_field(
            "entity",
            format!("{} bytes, at most 256", entity.len()),
        ));
    }
    if entity.chars().any(char::is_control) {
        return Err(IngestError::at_field("entity", "contains a control character"));
    }
    Ok(())
}

/// Now as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

/// Normalises an RFC 3339 time to UTC.
pub fn normalise_time(text: &str) -> Result<String, String> {
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| format!("{text:?} is not an RFC 3339 time ({e})"))?;
    // Checked: a time near the end of year 9999 with a negative offset has no
    // UTC representation (found by fuzzing; `to_offset` would panic).
    t.checked_to_offset(time::UtcOffset::UTC)
        .ok_or_else(|| format!("{text:?} is out of range in UTC"))?
        .format(&Rfc3339)
        .map_err(|e| e.to_string())
}

mod ijson;

use ijson::check_ijson;
pub use ijson::MAX_PAYLOAD_DEPTH;

fn as_string(field: &str, raw: &RawValue) -> Result<String, IngestError> {
    serde_json::from_str::<String>(raw.get()).map_err(|_| IngestError::at_field(field, "must be a string"))
}

/// Parses and validates one event's JSON text; an event without `event_id`
/// gets a new UUIDv7.
pub fn parse_event(text: &[u8], max_bytes: u64) -> Result<NewEvent, IngestError> {
    parse_event_with(text, max_bytes, || uuid::Uuid::now_v7().to_string())
}

/// Like [`parse_event`], with the id to give an event that has none (the
/// spool derives stable ids from the file, so a re-read file is recognised).
pub fn parse_event_with(
    text: &[u8],
    max_bytes: u64,
    make_id: impl FnOnce() -> String,
) -> Result<NewEvent, IngestError> {
    if text.len() as u64 > max_bytes {
        return Err(IngestError::new(
            ErrorCode::TooLarge,
            format!("event is {} bytes, the limit is {max_bytes}", text.len()),
        ));
    }
    let fields: HashMap<String, Box<RawValue>> = serde_json::from_slice(text).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            IngestError::new(ErrorCode::InvalidEvent, "event must be a JSON object")
        } else {
            // A lone surrogate in a top-level key fails this parse; the walk
            // tells it from broken JSON.
            check_ijson(text)
                .err()
                .unwrap_or_else(|| IngestError::new(ErrorCode::InvalidJson, e.to_string()))
        }
    })?;
    // Before any field is read: a duplicate field must not be resolved by
    // whichever copy the map kept.
    check_ijson(text)?;
    let mut unknown: Vec<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|k| !KNOWN_FIELDS.contains(k))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(IngestError::at_field(unknown[0], "unknown field"));
    }
    let get = |name: &str| fields.get(name).filter(|v| v.get() != "null");

    let event_type = get("type")
        .ok_or_else(|| IngestError::at_field("type", "missing"))
        .and_then(|v| as_string("type", v))?;
    if !valid_type(&event_type) {
        return Err(IngestError::at_field(
            "type",
            format!("{event_type:?} must match ^[A-Za-z][A-Za-z0-9._-]{{0,127}}$"),
        ));
    }
    let entity = get("entity")
        .ok_or_else(|| IngestError::at_field("entity", "missing"))
        .and_then(|v| as_string("entity", v))?;
    check_entity(&entity)?;
    if event_type == HEARTBEAT_TYPE {
        return Err(IngestError::at_field(
            "type",
            format!("{HEARTBEAT_TYPE} is reserved for the agent's own heartbeats"),
        ));
    }
    if entity.starts_with(AGENT_ENTITY_PREFIX) {
        return Err(IngestError::at_field(
            "entity",
            format!("{entity:?}: entities starting {AGENT_ENTITY_PREFIX:?} are reserved for the agent's own events"),
        ));
    }
    let payload = fields
        .get("payload")
        .ok_or_else(|| IngestError::at_field("payload", "missing"))?
        .get()
        .to_string();
    let event_id = match get("event_id") {
        Some(v) => {
            let id = as_string("event_id", v)?;
            if !valid_event_id(&id) {
                return Err(IngestError::at_field(
                    "event_id",
                    format!("{id:?} must be 1-128 characters of [A-Za-z0-9._:-]"),
                ));
            }
            id
        }
        None => make_id(),
    };
    let occurred_at = match get("occurred_at") {
        Some(v) => {
            normalise_time(&as_string("occurred_at", v)?).map_err(|e| IngestError::at_field("occurred_at", e))?
        }
        None => now_rfc3339(),
    };
    let correlation_id = match get("correlation_id") {
        Some(v) => {
            let c = as_string("correlation_id", v)?;
            if c.len() > 256 {
                return Err(IngestError::at_field("correlation_id", "longer than 256 bytes"));
            }
            Some(c)
        }
        None => None,
    };
    let is_test = match get("is_test") {
        Some(v) => serde_json::from_str::<bool>(v.get())
            .map_err(|_| IngestError::at_field("is_test", "must be true or false"))?,
        None => false,
    };
    let attributes = match get("attributes") {
        Some(v) => {
            let map: BTreeMap<String, String> = serde_json::from_str(v.get())
                .map_err(|_| IngestError::at_field("attributes", "must be an object of string values"))?;
            (!map.is_empty()).then(|| serde_json::to_string(&map).unwrap_or_default())
        }
        None => None,
    };
    Ok(NewEvent {
        event_id,
        event_type,
        entity,
        occurred_at,
        correlation_id,
        is_test,
        attributes,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NewEvent, IngestError> {
        parse_event(text.as_bytes(), 1 << 20)
    }

    #[test]
    fn accepts_a_full_event_and_keeps_the_payload_verbatim() {
        let e = parse(r#"{"event_id":"s-1","type":"SaleCreated","entity":"order:1","occurred_at":"2026-11-22T11:15:00+01:00","correlation_id":"c","is_test":true,"attributes":{"terminal":"03"},"payload":{"b": 1,  "a":[2]}}"#).expect("valid");
        assert_eq!(e.occurred_at, "2026-11-22T10:15:00Z");
        assert_eq!(e.payload, r#"{"b": 1,  "a":[2]}"#);
        assert_eq!(e.attributes.as_deref(), Some(r#"{"terminal":"03"}"#));
        assert!(e.is_test);
    }

    #[test]
    fn generates_a_uuid_v7_when_no_id_is_given() {
        let e = parse(r#"{"type":"T","entity":"e","payload":null}"#).expect("valid");
        assert_eq!(uuid::Uuid::parse_str(&e.event_id).expect("uuid").get_version_num(), 7);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"entity":"e","payload":1}"#, "type: missing"),
            (r#"{"type":"1x","entity":"e","payload":1}"#, "type:"),
            (r#"{"type":"T","payload":1}"#, "entity: missing"),
            (r#"{"type":"T","entity":"","payload":1}"#, "entity: must not be empty"),
            (
                r#"{"type":"T","entity":"a\u0001","payload":1}"#,
                "entity: contains a control",
            ),
            (r#"{"type":"T","entity":"e"}"#, "payload: missing"),
            (
                r#"{"type":"T","entity":"e","payload":1,"extra":2}"#,
                "extra: unknown field",
            ),
            (r#"{"type":"T","entity":"e","payload":1,"event_id":"a b"}"#, "event_id:"),
            (
                r#"{"type":"T","entity":"e","payload":1,"occurred_at":"yesterday"}"#,
                "occurred_at:",
            ),
            (
                r#"{"type":"T","entity":"e","payload":1,"attributes":{"a":1}}"#,
                "attributes:",
            ),
            (r#"{"type":"T","entity":"e","payload":1,"is_test":"no"}"#, "is_test:"),
            (r#"[1]"#, "event must be a JSON object"),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.code, ErrorCode::InvalidEvent, "{text}");
            assert!(err.message.starts_with(want), "{text}: {}", err.message);
        }
    }

    #[test]
    fn errors_carry_their_field() {
        let cases = [
            (r#"{"entity":"e","payload":1}"#, Some("type")),
            (r#"{"type":"T","entity":7,"payload":1}"#, Some("entity")),
            (r#"{"type":"T","entity":"e"}"#, Some("payload")),
            (r#"{"type":"T","entity":"e","payload":1,"a:b c":2}"#, Some("a:b c")),
            (
                r#"{"type":"T","entity":"e","payload":1,"event_id":"a b"}"#,
                Some("event_id"),
            ),
            (
                r#"{"type":"T","entity":"e","payload":1,"correlation_id":1}"#,
                Some("correlation_id"),
            ),
            (
                r#"{"type":"T","entity":"e","payload":1,"occurred_at":"x"}"#,
                Some("occurred_at"),
            ),
            (
                r#"{"type":"T","entity":"e","payload":1,"attributes":[]}"#,
                Some("attributes"),
            ),
            (r#"[1]"#, None),
            ("{\"type\":", None),
        ];
        for (text, field) in cases {
            assert_eq!(parse(text).expect_err(text).field.as_deref(), field, "{text}");
        }
        let big = format!(r#"{{"type":"T","entity":"e","payload":"{}"}}"#, "x".repeat(300));
        assert_eq!(parse_event(big.as_bytes(), 256).unwrap_err().field, None);
        assert_eq!(check_entity("").unwrap_err().field.as_deref(), Some("entity"));
    }

    /// The event around a payload.
    fn with_payload(payload: &str) -> String {
        format!(r#"{{"type":"T","entity":"e","payload":{payload}}}"#)
    }

    /// Asserts `text` is refused as not I-JSON with a message starting
    /// `want` and the top-level field `field`.
    fn refused(text: &str, want: &str, field: Option<&str>) {
        let err = parse(text).expect_err(text);
        assert_eq!(err.code, ErrorCode::InvalidEvent, "{text}: {}", err.message);
        assert!(err.message.starts_with(want), "{text}: {}", err.message);
        assert!(err.message.ends_with("(I-JSON, RFC 7493)"), "{text}: {}", err.message);
        assert_eq!(err.field.as_deref(), field, "{text}");
    }

    #[test]
    fn numbers_beyond_the_double_range_are_refused_naming_their_path() {
        refused(
            &with_payload(r#"{"lines":[{},{"price":1},{},{"price":1e999999}]}"#),
            "payload.lines[3].price: number out of range",
            Some("payload"),
        );
        refused(&with_payload("-1e400"), "payload: number out of range", Some("payload"));
        refused(
            &with_payload("[1.7976931348623159e308]"),
            "payload[0]: number out of range",
            Some("payload"),
        );
        // An integer literal too long for any double.
        refused(
            &with_payload(&format!("{{\"n\":1{}}}", "0".repeat(400))),
            "payload.n: number out of range",
            Some("payload"),
        );
        // Keys that are not plain names are quoted.
        refused(
            &with_payload(r#"{"unit price":{"x.y":[0,1e309]}}"#),
            r#"payload["unit price"]["x.y"][1]: number out of range"#,
            Some("payload"),
        );
    }

    #[test]
    fn numbers_within_the_double_range_are_kept_verbatim_whatever_their_precision() {
        // Big integers and long decimals: within range, only their exactness
        // is at stake (RFC 7493 SHOULD NOT; accepted, see the module's notes).
        for payload in [
            "18446744073709551616",
            "-9007199254740993",
            "3.141592653589793238462643383279",
            "1.7976931348623157e308",
            "-1.7976931348623157E+308",
            "1e-400",
            "-0",
            r#"{"a":{"x":1},"b":{"x":1},"c":[{"x":1},{"x":1}]}"#,
            r#""\ud83d\ude00 \uFFFF""#,
        ] {
            let e = parse(&with_payload(payload)).expect(payload);
            assert_eq!(e.payload, payload);
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        refused(
            &with_payload(r#"{"a":1,"b":{"c":1,"d":[{"c":1,"c":2}]}}"#),
            "payload.b.d[0].c: duplicate key",
            Some("payload"),
        );
        refused(
            &with_payload(r#"{"a":1,"a":1}"#),
            "payload.a: duplicate key",
            Some("payload"),
        );
        // Keys are compared decoded: `"\u0061"` is `"a"`.
        refused(
            &with_payload(r#"{"\u0061":1,"a":2}"#),
            "payload.a: duplicate key",
            Some("payload"),
        );
        // Which copy would count is exactly the ambiguity: not in the
        // attributes either, nor among the event's own fields.
        refused(
            r#"{"type":"T","entity":"e","attributes":{"terminal":"03","terminal":"04"},"payload":1}"#,
            "attributes.terminal: duplicate key",
            Some("attributes"),
        );
        refused(
            r#"{"type":"T","entity":"e","entity":"f","payload":1}"#,
            "entity: duplicate key",
            Some("entity"),
        );
        refused(
            r#"{"type":"T","entity":"e","payload":1,"payload":2}"#,
            "payload: duplicate key",
            Some("payload"),
        );
    }

    #[test]
    fn lone_surrogates_are_refused_in_values_and_keys() {
        for s in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#""a\ud800b""#,
            r#""\ud800\u0041""#,
            r#""\ud800\n""#,
        ] {
            refused(
                &with_payload(&format!("[1,{s}]")),
                "payload[1]: lone surrogate",
                Some("payload"),
            );
        }
        refused(
            &with_payload(r#"{"ok":{"\udfff":1}}"#),
            "payload.ok: key with a lone surrogate",
            Some("payload"),
        );
        refused(
            r#"{"type":"T","entity":"\ud800","payload":1}"#,
            "entity: lone surrogate",
            Some("entity"),
        );
        refused(
            r#"{"type":"T","attributes":{"t":"\ud800"},"entity":"e","payload":1}"#,
            "attributes.t: lone surrogate",
            Some("attributes"),
        );
        // A top-level key fails the first parse already; still invalid_event.
        refused(
            r#"{"\ud800":1,"type":"T","entity":"e","payload":1}"#,
            "event: key with a lone surrogate",
            None,
        );
    }

    /// `depth` nested arrays around `inner`.
    fn nested(depth: usize, inner: &str) -> String {
        format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn payloads_nest_up_to_128_levels_and_are_checked_all_the_way_down() {
        // 128 levels: serde_json's own parser (limit 128, the event is one
        // more) could not have walked it; the walk can.
        let deepest = nested(MAX_PAYLOAD_DEPTH, r#"{"a":1}"#);
        assert!(parse(&with_payload(&nested(MAX_PAYLOAD_DEPTH - 1, r#"{"a":1}"#))).is_ok());
        assert!(parse(&with_payload(&nested(MAX_PAYLOAD_DEPTH, "1"))).is_ok());
        let e = parse(&with_payload(&deepest)).expect_err("129 levels");
        assert_eq!(e.code, ErrorCode::InvalidEvent);
        assert_eq!(e.field.as_deref(), Some("payload"));
        assert_eq!(
            e.message,
            "payload: nested deeper than 128 levels of arrays and objects"
        );
        // What used to pass unchecked below serde_json's limit.
        for bad in [
            nested(127, "1, 1e999"),
            nested(127, r#""\ud800""#),
            nested(126, r#"{"k":1,"k":2}"#),
        ] {
            let e = parse(&with_payload(&bad)).expect_err(&bad);
            assert_eq!(e.code, ErrorCode::InvalidEvent, "{}", e.message);
            assert!(e.message.ends_with("(I-JSON, RFC 7493)"), "{}", e.message);
        }
        // Far deeper than any limit: refused, no recursion to overflow.
        for depth in [130, 100_000] {
            let e = parse(&with_payload(&nested(depth, "1, 1e999"))).expect_err("deep");
            assert!(e.message.contains("nested deeper than 128"), "{}", e.message);
        }
        let objects = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
        assert!(parse(&with_payload(&objects)).unwrap_err().message.contains("deeper"));
    }

    #[test]
    fn numbers_are_judged_by_jsons_grammar_first() {
        for text in ["NaN", "Infinity", "-Infinity"] {
            assert_eq!(
                parse(&with_payload(text)).unwrap_err().code,
                ErrorCode::InvalidJson,
                "{text}"
            );
        }
    }

    #[test]
    fn the_agents_own_type_and_entities_are_refused_from_producers() {
        let e = parse(r#"{"type":"AgentHeartbeat","entity":"till:1","payload":{}}"#).unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), (ErrorCode::InvalidEvent, Some("type")));
        assert!(e.message.contains("reserved"), "{}", e.message);
        let e = parse(r#"{"type":"SaleCreated","entity":"agent:till-03","payload":{}}"#).unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), (ErrorCode::InvalidEvent, Some("entity")));
        assert!(e.message.contains("reserved"), "{}", e.message);
        // Only the prefix is reserved.
        assert!(parse(r#"{"type":"AgentHeartbeats","entity":"agents:1","payload":{}}"#).is_ok());
    }

    #[test]
    fn broken_json_stays_invalid_json_and_a_non_object_stays_that() {
        for text in [
            r#"{"type":"T","payload":[1,}"#,
            r#"{"payload":"\u12"}"#,
            r#"{"payload":1e}"#,
        ] {
            assert_eq!(parse(text).unwrap_err().code, ErrorCode::InvalidJson, "{text}");
        }
        let e = parse("[1e999]").unwrap_err();
        assert_eq!(e.message, "event must be a JSON object");
    }

    #[test]
    fn long_keys_are_cut_in_the_path() {
        let key = "k".repeat(300);
        let err = parse(&with_payload(&format!(r#"{{"{key}":1,"{key}":2}}"#))).unwrap_err();
        assert!(err.message.len() < 150, "{}", err.message);
        assert!(
            err.message
                .starts_with(&format!(r#"payload["{}"…]: duplicate key"#, "k".repeat(64))),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_time_beyond_year_9999_in_utc_is_an_error_not_a_panic() {
        let e =
            parse(r#"{"type":"T","entity":"e","payload":1,"occurred_at":"9999-12-31T23:59:59-01:00"}"#).unwrap_err();
        assert!(
            e.message.starts_with("occurred_at:") && e.message.contains("out of range"),
            "{}",
            e.message
        );
    }

    #[test]
    fn broken_json_and_size() {
        assert_eq!(parse("{\"type\":").unwrap_err().code, ErrorCode::InvalidJson);
        let big = format!(r#"{{"type":"T","entity":"e","payload":"{}"}}"#, "x".repeat(300));
        assert_eq!(parse_event(big.as_bytes(), 256).unwrap_err().code, ErrorCode::TooLarge);
    }

    #[test]
    fn reply_shapes_follow_the_contract() {
        let ok = Reply::Accepted {
            event_id: "a".into(),
            entity_seq: 3,
            duplicate: false,
        };
        assert_eq!(
            ok.to_json(),
            r#"{"ok":true,"event_id":"a","entity_seq":3,"duplicate":false}"#
        );
        let err: Reply = IngestError::new(ErrorCode::InvalidEvent, "entity: missing").into();
        assert_eq!(
            err.to_json(),
            r#"{"ok":false,"error":{"code":"invalid_event","message":"entity: missing"}}"#
        );
    }
}
