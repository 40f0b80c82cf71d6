//! An ARTS POSLog document (`ingest::poslog::parse`), on lossy UTF-8 input
//! (the spool refuses non-UTF-8 files before this parser sees them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use store_outbox::ingest::poslog::{parse, EVENT_TYPE};
use store_outbox_fuzz::check_events;

fuzz_target!(|data: &[u8]| {
    let xml = String::from_utf8_lossy(data);
    match parse(&xml) {
        Ok(events) => {
            for e in &events {
                assert!(e.event_id.starts_with("poslog:"), "event_id {:?}", e.event_id);
                assert_eq!(e.event_type, EVENT_TYPE);
                assert!(e.entity.starts_with("pos:"), "entity {:?}", e.entity);
                let xml_text: String = serde_json::from_str(&e.payload)
                    .unwrap_or_else(|err| panic!("payload is not a JSON string ({err}): {:?}", e.payload));
                // The transaction's element, whole: `<…Transaction …>…</…Transaction>` or `<…Transaction/>`.
                assert!(
                    xml_text.starts_with('<') && xml_text.ends_with('>') && xml_text.contains("Transaction"),
                    "payload is not the Transaction element: {xml_text:?}"
                );
            }
            // Contract: every event, whichever way in, has a valid id and entity.
            check_events(&events);
        }
        Err(e) => {
            assert!(e.line >= 1, "lines are 1-based");
            assert!(e.line <= xml.matches('\n').count() + 1, "line {} past the end", e.line);
            // (`element` may be empty: `<>` is refused naming the element "".)
            assert!(!e.message.is_empty(), "error without a message");
        }
    }
});
