//! A spool file as the spool hands it to `ingest::spool::parse_file`: its
//! name and its bytes, whichever kind the name says (`*.json`, `*.ndjson`,
//! `*.xml`, or none of them).
//!
//! Shared by the `spool_file` fuzz target and by replays in the main crate's
//! tests (both include this file with `#[path]`), so a saved input goes
//! through exactly the same checks. It needs only `store_outbox` and
//! `serde_json`.
//!
//! The input is `<name>\n<content>`: the first line is the file's name (as
//! lossy UTF-8: the spool moves a name that is not UTF-8 to `failed/` before
//! any parser sees it), the rest the file's bytes, as is. Without a `\n` the
//! whole input is the name of an empty file. The seeds are real spool files
//! with a name line in front.

use serde_json::value::RawValue;
use store_outbox::event::{check_entity, valid_event_id, ErrorCode, NewEvent};
use store_outbox::ingest::poslog::{self, Stopped};
use store_outbox::ingest::spool::{parse_file, parse_file_unless, FileError};

/// The agent's default `ingest.max_event_bytes`.
pub const MAX_EVENT_BYTES: u64 = 1024 * 1024;

/// What the name makes of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `*.json`: one event or an array.
    Json,
    /// `*.ndjson`: one event a line.
    Ndjson,
    /// `*.xml`: an ARTS POSLog document.
    Xml,
    /// Anything else: refused.
    Unknown,
}

/// The kind the spool gives a file of this name (the contract's suffixes).
pub fn kind_of(name: &str) -> Kind {
    if name.ends_with(".ndjson") {
        Kind::Ndjson
    } else if name.ends_with(".json") {
        Kind::Json
    } else if name.ends_with(".xml") {
        Kind::Xml
    } else {
        Kind::Unknown
    }
}

/// The input's name and content.
pub fn split(data: &[u8]) -> (String, &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(at) => (String::from_utf8_lossy(&data[..at]).into_owned(), &data[at + 1..]),
        None => (String::from_utf8_lossy(data).into_owned(), &[]),
    }
}

/// What two parses of one file must agree on: the events without their
/// `occurred_at` (a missing or untrusted time is the time of the parse), or
/// the error.
type Outcome = Result<Vec<(String, String, String, String)>, Box<FileError>>;

fn outcome(answer: &Result<Vec<NewEvent>, Box<FileError>>) -> Outcome {
    match answer {
        Ok(events) => Ok(events
            .iter()
            .map(|e| {
                (
                    e.event_id.clone(),
                    e.event_type.clone(),
                    e.entity.clone(),
                    e.payload.clone(),
                )
            })
            .collect()),
        Err(e) => Err(e.clone()),
    }
}

/// Checks one input and returns the spool's answer: the number of events,
/// or the error. Calls `on_accepted(kind, content, events)` for an accepted
/// file, for the caller's own checks of every event. Panics on any violated
/// invariant.
pub fn check_file(data: &[u8], on_accepted: &mut dyn FnMut(Kind, &str, &[NewEvent])) -> Result<usize, Box<FileError>> {
    let (name, content) = split(data);
    let kind = kind_of(&name);
    let answer = parse_file(&name, content, MAX_EVENT_BYTES);
    let text = std::str::from_utf8(content).ok();
    match (&answer, text) {
        (Ok(events), Some(text)) => {
            assert_ne!(kind, Kind::Unknown, "{name:?}: accepted a file of no known kind");
            assert!(!events.is_empty(), "{name:?}: accepted with no event");
            check_accepted(&name, kind, text, events);
            on_accepted(kind, text, events);
        }
        (Ok(_), None) => panic!("{name:?}: accepted content that is not UTF-8"),
        (Err(e), _) => check_refused(&name, kind, content, e),
    }

    // The same file again: the same answer (ids derived from name and
    // content are stable, so a file read again after a crash between commit
    // and delete gives duplicates, not new events).
    let first = outcome(&answer);
    assert_eq!(
        outcome(&parse_file(&name, content, MAX_EVENT_BYTES)),
        first,
        "{name:?}: two parses differ"
    );
    // Under another name of the same kind: the same answer, but for the ids
    // the spool derives from the name and content, and the file named.
    let other = format!("other-{name}");
    match (&first, outcome(&parse_file(&other, content, MAX_EVENT_BYTES))) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.len(), b.len(), "{name:?} and {other:?}: the event count differs");
            for (x, y) in a.iter().zip(&b) {
                assert_eq!((&x.1, &x.2, &x.3), (&y.1, &y.2, &y.3), "{name:?} and {other:?}");
                assert!(
                    x.0 == y.0 || (x.0.starts_with("spool:") && y.0.starts_with("spool:")),
                    "ids differ that are not derived from the name: {:?} and {:?}",
                    x.0,
                    y.0
                );
            }
        }
        (Err(a), Err(b)) => {
            assert_eq!(b.file, other, "the error names its file");
            assert_eq!(
                FileError {
                    file: name.clone(),
                    ..(*b).clone()
                },
                **a,
                "{name:?} and {other:?}: the errors differ"
            );
        }
        (a, b) => panic!("{name:?} and {other:?}: {a:?} but {b:?}"),
    }

    // A parse that may give up (the agent stopping) never gives up halfway:
    // it answers as a whole or not at all.
    assert_eq!(
        parse_file_unless(&name, content, MAX_EVENT_BYTES, &|| false).map(|a| outcome(&a)),
        Ok(first.clone()),
        "{name:?}: parse_file_unless without a stop differs from parse_file"
    );
    match parse_file_unless(&name, content, MAX_EVENT_BYTES, &|| true) {
        Err(Stopped) => assert_ne!(kind, Kind::Unknown, "{name:?}: stopped before looking at the name"),
        Ok(a) => assert_eq!(outcome(&a), first, "{name:?}: a parse told to stop answered otherwise"),
    }
    answer.map(|events| events.len())
}

/// What an accepted file must hold, by kind.
fn check_accepted(name: &str, kind: Kind, text: &str, events: &[NewEvent]) {
    for e in events {
        assert!(valid_event_id(&e.event_id), "{name:?}: event id {:?}", e.event_id);
        assert!(check_entity(&e.entity).is_ok(), "{name:?}: entity {:?}", e.entity);
        assert!(
            serde_json::from_str::<&RawValue>(&e.payload).is_ok(),
            "{name:?}: payload is not one JSON value: {:?}",
            e.payload
        );
    }
    match kind {
        Kind::Xml => {
            // The spool's XML is the POSLog parser's, event for event.
            let direct = poslog::parse(text).unwrap_or_else(|e| panic!("{name:?}: POSLog parser refuses it: {e}"));
            let ids = |v: &[NewEvent]| v.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>();
            assert_eq!(ids(events), ids(&direct), "{name:?}: not the POSLog parser's events");
            for e in events {
                assert!(e.event_id.starts_with("poslog:"), "{name:?}: event id {:?}", e.event_id);
                assert_eq!(e.event_type, poslog::EVENT_TYPE);
                let xml: String = serde_json::from_str(&e.payload)
                    .unwrap_or_else(|err| panic!("{name:?}: payload is not a JSON string ({err})"));
                assert!(
                    xml.starts_with('<') && xml.ends_with('>') && xml.contains("Transaction"),
                    "{name:?}: payload is not the Transaction element: {xml:?}"
                );
            }
        }
        Kind::Ndjson => {
            let lines: Vec<&str> = text.lines().collect();
            let filled = lines.iter().filter(|l| !l.trim().is_empty()).count();
            assert_eq!(events.len(), filled, "{name:?}: one event per line that is not blank");
            for e in events {
                // A derived id names its line (1-based, blank lines counted).
                if let Some(n) = derived_number(&e.event_id) {
                    assert!(
                        (1..=lines.len()).contains(&n) && !lines[n - 1].trim().is_empty(),
                        "{name:?}: derived id {:?} names no line with an event",
                        e.event_id
                    );
                }
            }
        }
        Kind::Json => {
            let items = match text.trim_start().starts_with('[') {
                true => serde_json::from_str::<Vec<&RawValue>>(text)
                    .unwrap_or_else(|e| panic!("{name:?}: accepted array is not JSON: {e}"))
                    .len(),
                false => 1,
            };
            assert_eq!(events.len(), items, "{name:?}: one event per item");
        }
        Kind::Unknown => unreachable!("checked by the caller"),
    }
}

/// `n` of an id the spool derived for an event without one (`spool:<hex>:<n>`).
fn derived_number(id: &str) -> Option<usize> {
    let rest = id.strip_prefix("spool:")?;
    let (hex, n) = rest.split_once(':')?;
    if hex.len() == 20 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        n.parse().ok()
    } else {
        None
    }
}

/// What a refusal must say.
fn check_refused(name: &str, kind: Kind, content: &[u8], e: &FileError) {
    assert_eq!(e.file, name, "the error names its file");
    assert!(!e.message.is_empty(), "{name:?}: an error without a message");
    assert!(
        matches!(
            e.code,
            ErrorCode::InvalidJson | ErrorCode::InvalidEvent | ErrorCode::TooLarge
        ),
        "{name:?}: code {:?} for a file's content",
        e.code
    );
    let Ok(text) = std::str::from_utf8(content) else {
        assert!(
            e.code == ErrorCode::InvalidJson && e.message.starts_with("not UTF-8"),
            "{name:?}: content that is not UTF-8 refused as {:?}: {}",
            e.code,
            e.message
        );
        return;
    };
    if kind == Kind::Unknown {
        assert!(
            e.message.contains("unknown file type") && e.line.is_none(),
            "{name:?}: {e:?}"
        );
        return;
    }
    if let Some(line) = e.line {
        let last = text.matches('\n').count() + 1;
        assert!((1..=last).contains(&line), "{name:?}: line {line} of {last}");
    }
    match kind {
        Kind::Xml => assert!(
            e.line.is_some() && e.element.is_some() && e.index.is_none() && e.field.is_none(),
            "{name:?}: a POSLog error names its line and element: {e:?}"
        ),
        Kind::Ndjson => assert!(
            e.index.is_none() && (e.line.is_some() || e.message.contains("no event")),
            "{name:?}: an NDJSON error names its line: {e:?}"
        ),
        Kind::Json => {
            assert!(e.line.is_none(), "{name:?}: {e:?}");
            if let Some(i) = e.index {
                let items = serde_json::from_str::<Vec<&RawValue>>(text)
                    .map(|v| v.len())
                    .unwrap_or(0);
                assert!(i < items, "{name:?}: index {i} of {items} items");
            }
        }
        Kind::Unknown => {}
    }
}
