//! ARTS POSLog XML to events: one `PosLog` event per `<Transaction>`.
//!
//! Entity `pos:<RetailStoreID>/<WorkstationID>`, event id
//! `poslog:<RetailStoreID>:<WorkstationID>:<SequenceNumber>`, payload the
//! transaction's XML as a string. Namespaces and prefixes are accepted (names
//! are matched on their local part). Parsed with quick-xml; errors name the
//! element and its line.

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::event::{normalise_time, now_rfc3339, valid_event_id, NewEvent};

/// The event type of POSLog transactions.
pub const EVENT_TYPE: &str = "PosLog";

/// Why a POSLog document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PosLogError {
    /// The element at fault, e.g. `Transaction[2]/SequenceNumber`.
    pub element: String,
    /// 1-based line of that element.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for PosLogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.element, self.message)
    }
}

/// One `<Transaction>` with what the event needs.
#[derive(Debug, Default, Clone)]
struct Transaction {
    index: usize,
    line: usize,
    store: Option<String>,
    workstation: Option<String>,
    sequence: Option<String>,
    end_time: Option<String>,
    xml: String,
}

/// Maps byte offsets to 1-based lines with a cursor that moves with the
/// reader: the offsets asked for grow through the document, so a whole parse
/// counts each newline once. (Counting from byte 0 for every transaction made
/// a 20,000-transaction file take minutes.)
struct Lines<'a> {
    /// The document.
    text: &'a [u8],
    /// Offset the cursor stands at.
    at: usize,
    /// Line at `at`.
    line: usize,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Lines {
            text: text.as_bytes(),
            at: 0,
            line: 1,
        }
    }

    /// The line of `offset` (past the end: the last line).
    fn line_at(&mut self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        let newlines = |bytes: &[u8]| bytes.iter().filter(|b| **b == b'\n').count();
        if offset >= self.at {
            self.line += newlines(&self.text[self.at..offset]);
        } else {
            // Backwards (an error's position can lie before the last event's
            // start): costs the distance, and happens once, at the end.
            self.line -= newlines(&self.text[offset..self.at]);
        }
        self.at = offset;
        self.line
    }
}

/// The parse was given up because the agent is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

/// How often (in XML events) a parse asks whether to give up.
const STOP_CHECK_EVERY: usize = 4096;

/// Parses a POSLog document into events.
pub fn parse(xml: &str) -> Result<Vec<NewEvent>, PosLogError> {
    parse_unless(xml, &|| false).unwrap_or_else(|Stopped| {
        // Never reached: nothing asks this parse to stop.
        Err(PosLogError {
            element: "document".into(),
            line: 1,
            message: "parse stopped".into(),
        })
    })
}

/// Like [`parse`], asking `stop` every few thousand XML events whether to give
/// up (a big document must not hold up the agent's shutdown): `Err(Stopped)`
/// once it says yes.
pub fn parse_unless(xml: &str, stop: &dyn Fn() -> bool) -> Result<Result<Vec<NewEvent>, PosLogError>, Stopped> {
    match read_document(xml, stop) {
        Ok(transactions) => Ok(transactions.into_iter().map(to_event).collect()),
        Err(Halt::Refused(e)) => Ok(Err(e)),
        Err(Halt::Stopped) => Err(Stopped),
    }
}

/// Why reading a document ended early.
enum Halt {
    /// The document is refused.
    Refused(PosLogError),
    /// The caller asked to stop.
    Stopped,
}

impl From<PosLogError> for Halt {
    fn from(e: PosLogError) -> Self {
        Halt::Refused(e)
    }
}

/// The document's transactions, in document order.
fn read_document(xml: &str, stop: &dyn Fn() -> bool) -> Result<Vec<Transaction>, Halt> {
    // quick-xml skips a byte-order mark without counting it in its
    // positions, which would shift every slice below by 3 bytes (found by
    // fuzzing): drop them (a file can hold several) first.
    let xml = xml.trim_start_matches('\u{feff}');
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut lines = Lines::new(xml);
    let mut events_read = 0usize;
    let mut stack: Vec<String> = Vec::new();
    let mut transactions: Vec<Transaction> = Vec::new();
    let mut current: Option<(Transaction, usize)> = None;
    let mut root_seen = false;
    loop {
        events_read += 1;
        if events_read % STOP_CHECK_EVERY == 0 && stop() {
            return Err(Halt::Stopped);
        }
        // Where the next event starts (trimmed whitespace skipped).
        let before = {
            let at = reader.buffer_position() as usize;
            at + (xml[at..].len() - xml[at..].trim_start().len())
        };
        let event = reader.read_event().map_err(|e| PosLogError {
            element: stack.last().cloned().unwrap_or_else(|| "document".into()),
            line: lines.line_at(reader.error_position() as usize),
            message: format!("not well-formed XML: {e}"),
        })?;
        match event {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if stack.is_empty() {
                    if root_seen || !name.eq_ignore_ascii_case("POSLog") {
                        return Err(PosLogError {
                            element: name,
                            line: lines.line_at(before),
                            message: "the root element must be POSLog".into(),
                        }
                        .into());
                    }
                    root_seen = true;
                } else if stack.len() == 1 && name == "Transaction" {
                    let tx = Transaction {
                        index: transactions.len() + 1,
                        line: lines.line_at(before),
                        ..Default::default()
                    };
                    current = Some((tx, before));
                }
                stack.push(name);
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if stack.is_empty() {
                    return Err(PosLogError {
                        element: name,
                        line: lines.line_at(before),
                        message: "empty document".into(),
                    }
                    .into());
                }
                if stack.len() == 1 && name == "Transaction" {
                    transactions.push(Transaction {
                        index: transactions.len() + 1,
                        line: lines.line_at(before),
                        xml: xml[before..reader.buffer_position() as usize].trim().to_string(),
                        ..Default::default()
                    });
                }
            }
            Event::Text(t) => {
                if let Some((tx, _)) = current.as_mut() {
                    if stack.len() == 3 {
                        let text = t
                            .unescape()
                            .map_err(|e| PosLogError {
                                element: format!("Transaction[{}]/{}", tx.index, stack[2]),
                                line: lines.line_at(before),
                                message: format!("bad text: {e}"),
                            })?
                            .trim()
                            .to_string();
                        let slot = match stack[2].as_str() {
                            "RetailStoreID" => Some(&mut tx.store),
                            "WorkstationID" => Some(&mut tx.workstation),
                            "SequenceNumber" => Some(&mut tx.sequence),
                            "EndDateTime" => Some(&mut tx.end_time),
                            _ => None,
                        };
                        if let Some(slot) = slot {
                            *slot = Some(text);
                        }
                    }
                }
            }
            Event::End(_) => {
                stack.pop();
                if stack.len() == 1 {
                    if let Some((mut tx, start)) = current.take() {
                        tx.xml = xml[start..reader.buffer_position() as usize].trim().to_string();
                        transactions.push(tx);
                    }
                }
            }
            Event::Eof => {
                if let Some(open) = stack.last() {
                    return Err(PosLogError {
                        element: open.clone(),
                        line: lines.line_at(xml.len()),
                        message: "the document ends before this element is closed".into(),
                    }
                    .into());
                }
                break;
            }
            _ => {}
        }
    }
    if !root_seen {
        return Err(PosLogError {
            element: "document".into(),
            line: 1,
            message: "no POSLog element".into(),
        }
        .into());
    }
    if transactions.is_empty() {
        return Err(PosLogError {
            element: "POSLog".into(),
            line: 1,
            message: "no Transaction element".into(),
        }
        .into());
    }
    Ok(transactions)
}

fn to_event(tx: Transaction) -> Result<NewEvent, PosLogError> {
    let field = |value: &Option<String>, name: &str| -> Result<String, PosLogError> {
        let err = |message: String| PosLogError {
            element: format!("Transaction[{}]/{name}", tx.index),
            line: tx.line,
            message,
        };
        match value.as_deref() {
            None | Some("") => Err(err("missing: every Transaction needs it to build the event id".into())),
            Some(v) if !valid_event_id(v) => Err(err(format!("{v:?} may only hold [A-Za-z0-9._-]"))),
            Some(v) if v.contains(':') => Err(err(format!("{v:?} may only hold [A-Za-z0-9._-]"))),
            Some(v) => Ok(v.to_string()),
        }
    };
    let store = field(&tx.store, "RetailStoreID")?;
    let workstation = field(&tx.workstation, "WorkstationID")?;
    let sequence = field(&tx.sequence, "SequenceNumber")?;
    // ARTS times often lack an offset (store local time); only a full RFC 3339
    // time is trusted, otherwise the time of ingest is used.
    let occurred_at = tx
        .end_time
        .as_deref()
        .and_then(|t| normalise_time(t).ok())
        .unwrap_or_else(now_rfc3339);
    // Each part is valid on its own; together they must still fit the
    // contract's limits (128 for ids, 256 for entities).
    let event_id = format!("poslog:{store}:{workstation}:{sequence}");
    let entity = format!("pos:{store}/{workstation}");
    if !valid_event_id(&event_id) || crate::event::check_entity(&entity).is_err() {
        return Err(PosLogError {
            element: format!("Transaction[{}]", tx.index),
            line: tx.line,
            message: format!(
                "RetailStoreID, WorkstationID and SequenceNumber are too long together: the event id would be {} characters (at most 128)",
                event_id.len()
            ),
        });
    }
    Ok(NewEvent {
        event_id,
        event_type: EVENT_TYPE.to_string(),
        entity,
        occurred_at,
        correlation_id: None,
        is_test: false,
        attributes: None,
        payload: serde_json::to_string(&tx.xml).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_prefixed_documents() {
        let plain = r#"<?xml version="1.0"?>
<POSLog><Transaction><RetailStoreID>0042</RetailStoreID><WorkstationID>3</WorkstationID>
<SequenceNumber>17</SequenceNumber><EndDateTime>2026-11-22T10:15:00Z</EndDateTime></Transaction>
<Transaction><RetailStoreID>0042</RetailStoreID><WorkstationID>3</WorkstationID><SequenceNumber>18</SequenceNumber></Transaction></POSLog>"#;
        let events = parse(plain).expect("valid");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event_id, "poslog:0042:3:17");
        assert_eq!(events[0].entity, "pos:0042/3");
        assert_eq!(events[0].occurred_at, "2026-11-22T10:15:00Z");
        let payload: String = serde_json::from_str(&events[0].payload).expect("a JSON string");
        assert!(
            payload.starts_with("<Transaction>") && payload.ends_with("</Transaction>"),
            "{payload}"
        );

        let prefixed = r#"<ns:POSLog xmlns:ns="http://www.nrf-arts.org/IXRetail/namespace/"><ns:Transaction>
<ns:RetailStoreID>7</ns:RetailStoreID><ns:WorkstationID TypeCode="POS">1</ns:WorkstationID><ns:SequenceNumber>5</ns:SequenceNumber>
</ns:Transaction></ns:POSLog>"#;
        assert_eq!(parse(prefixed).expect("valid")[0].event_id, "poslog:7:1:5");
    }

    #[test]
    fn errors_name_element_and_line() {
        let doc = "<POSLog>\n<Transaction><RetailStoreID>1</RetailStoreID><WorkstationID>2</WorkstationID><SequenceNumber>1</SequenceNumber></Transaction>\n<Transaction>\n<RetailStoreID>1</RetailStoreID><WorkstationID>2</WorkstationID></Transaction></POSLog>";
        let e = parse(doc).unwrap_err();
        assert_eq!(e.element, "Transaction[2]/SequenceNumber");
        assert_eq!(e.line, 3);
        let e = parse("<POSLog><Transaction>").unwrap_err();
        assert!(
            e.message.contains("ends before this element is closed") && e.element == "Transaction",
            "{e}"
        );
        assert!(parse("<Other/>").is_err());
        assert!(parse("<POSLog></POSLog>")
            .unwrap_err()
            .message
            .contains("no Transaction"));
    }

    /// A document of `n` transactions over several lines each; the last
    /// one lacks its SequenceNumber when `broken_last`.
    fn document(n: usize, broken_last: bool) -> String {
        let mut doc = String::from("<?xml version=\"1.0\"?>\n<POSLog>\n");
        for i in 1..=n {
            let sequence = if broken_last && i == n {
                String::new()
            } else {
                format!("<SequenceNumber>{i}</SequenceNumber>")
            };
            doc += &format!(
                "<Transaction>\n  <RetailStoreID>0042</RetailStoreID><WorkstationID>3</WorkstationID>{sequence}\n  \
                 <RetailTransaction><LineItem><Sale><ItemID>4006381333931</ItemID></Sale></LineItem></RetailTransaction>\n\
                 </Transaction>\n"
            );
        }
        doc + "</POSLog>\n"
    }

    #[test]
    fn lines_follow_the_offsets_both_ways() {
        let text = "a\nbb\n\nccc\n";
        let mut lines = Lines::new(text);
        let expected = |offset: usize| {
            text.as_bytes()[..offset.min(text.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1
        };
        for offset in [0, 1, 2, 4, 5, 6, 9, 10, 11, 99, 7, 3, 0, 6] {
            assert_eq!(lines.line_at(offset), expected(offset), "offset {offset}");
        }
    }

    /// 20,000 transactions: counting lines from byte 0 per transaction took
    /// 93 s in a release build (and far longer in debug); linear takes well
    /// under a second. The bound is only there to fail on quadratic work.
    #[test]
    fn a_big_document_parses_in_linear_time() {
        const N: usize = 20_000;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let good = parse(&document(N, false));
            let broken = parse(&document(N, true));
            let _ = tx.send((good, broken));
        });
        let (good, broken) = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("two 20,000-transaction documents parsed within 30 s (quadratic work takes many minutes)");
        let events = good.expect("valid");
        assert_eq!(events.len(), N);
        assert_eq!(events[N - 1].event_id, format!("poslog:0042:3:{N}"));
        // Lines are still right at the end: 2 lines of head, 4 per transaction.
        let e = broken.unwrap_err();
        assert_eq!(e.element, format!("Transaction[{N}]/SequenceNumber"));
        assert_eq!(e.line, 2 + 4 * (N - 1) + 1);
    }

    #[test]
    fn a_parse_stops_when_asked() {
        let doc = document(2_000, false);
        let asked = std::cell::Cell::new(0);
        let stopped = parse_unless(&doc, &|| {
            asked.set(asked.get() + 1);
            asked.get() >= 2
        });
        assert_eq!(stopped.err(), Some(Stopped));
        assert_eq!(
            asked.get(),
            2,
            "asked every {STOP_CHECK_EVERY} XML events, stopped at the first yes"
        );
        assert_eq!(parse_unless(&doc, &|| false).map(|r| r.map(|e| e.len())), Ok(Ok(2_000)));
    }
}
