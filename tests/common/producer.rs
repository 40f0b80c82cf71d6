//! Producers on the ingest socket: lines sent pipelined over one connection,
//! event lines, and [`Events`], numbered events built to send in one go.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Sends lines over one connection, pipelined, and returns one reply per line.
pub fn send_lines(socket: &Path, lines: &[String]) -> Vec<serde_json::Value> {
    let stream = UnixStream::connect(socket).expect("connect to the ingest socket");
    let mut writer = stream.try_clone().expect("clone");
    let n = lines.len();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut r = BufReader::new(stream);
        for _ in 0..n {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            out.push(serde_json::from_str(&line).expect("reply is JSON"));
        }
        out
    });
    for l in lines {
        writer.write_all(l.as_bytes()).expect("write");
        writer.write_all(b"\n").expect("write");
    }
    let replies = reader.join().expect("reader");
    assert_eq!(replies.len(), n, "one reply per line");
    replies
}

/// An event line.
pub fn event(id: &str, entity: &str, event_type: &str, payload: serde_json::Value) -> String {
    serde_json::json!({"event_id": id, "type": event_type, "entity": entity,
        "attributes": {"terminal": "03"}, "payload": payload})
    .to_string()
}

/// Numbered events of one type, to send in one go: ids `{ids}-{i}` for each
/// number `i`, the number as the payload and one entity (`till:1`) unless
/// [`Events::spread_over`], [`Events::entity`] or [`Events::payload`] say
/// otherwise. Each entity's events come in the order of their numbers.
pub struct Events {
    ids: String,
    numbers: Vec<usize>,
    event_type: String,
    entity: Box<dyn Fn(usize) -> String>,
    payload: Box<dyn Fn(usize) -> serde_json::Value>,
}

impl Events {
    /// Events `{ids}-{i}` of `event_type` for every `i` of `numbers`.
    pub fn new(ids: &str, numbers: impl IntoIterator<Item = usize>, event_type: &str) -> Events {
        Events {
            ids: ids.to_string(),
            numbers: numbers.into_iter().collect(),
            event_type: event_type.to_string(),
            entity: Box::new(|_| "till:1".to_string()),
            payload: Box::new(|i| serde_json::json!(i)),
        }
    }

    /// All of entity `entity`.
    pub fn entity(mut self, entity: &str) -> Events {
        let entity = entity.to_string();
        self.entity = Box::new(move |_| entity.clone());
        self
    }

    /// Round-robin over `count` entities: event `i` is of `{prefix}:{i % count}`.
    pub fn spread_over(mut self, prefix: &str, count: usize) -> Events {
        let prefix = prefix.to_string();
        self.entity = Box::new(move |i| format!("{prefix}:{}", i % count));
        self
    }

    /// Event `i`'s payload is `payload(i)`.
    pub fn payload(mut self, payload: impl Fn(usize) -> serde_json::Value + 'static) -> Events {
        self.payload = Box::new(payload);
        self
    }

    /// The event lines, in order.
    pub fn lines(&self) -> Vec<String> {
        self.numbers
            .iter()
            .map(|&i| {
                event(
                    &format!("{}-{i}", self.ids),
                    &(self.entity)(i),
                    &self.event_type,
                    (self.payload)(i),
                )
            })
            .collect()
    }
}
