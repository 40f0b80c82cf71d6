//! One event's JSON text, as it arrives on the socket, over HTTP, or as a line
//! of a spool file: `event::parse_event` with the default 1 MiB limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store_outbox::event::{parse_event, ErrorCode};
use store_outbox_fuzz::{check_event, ijson_violation, nesting_depth, IJSON_MARK, MAX_PAYLOAD_DEPTH, TOO_DEEP_MARK};

const MAX_EVENT_BYTES: u64 = 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    match parse_event(data, MAX_EVENT_BYTES) {
        Ok(event) => {
            check_event(&event);
            // The payload is the producer's text, verbatim: it must occur in the input.
            let text = std::str::from_utf8(data).expect("accepted input is UTF-8");
            assert!(text.contains(&event.payload), "payload is not verbatim");
            // The whole event is I-JSON too (no field given twice).
            if let Some(why) = ijson_violation(text) {
                panic!("accepted event is not I-JSON ({why}): {text:?}");
            }
        }
        Err(e) => {
            assert!(!e.message.is_empty(), "error without a message");
            // Refused as not I-JSON only when it is not.
            if e.message.ends_with(IJSON_MARK) {
                assert_eq!(e.code, ErrorCode::InvalidEvent, "{}", e.message);
                let text = String::from_utf8_lossy(data);
                assert!(
                    ijson_violation(&text).is_some(),
                    "refused as not I-JSON but it is ({}): {text:?}",
                    e.message
                );
            }
            // Refused as too deep only when something is: the payload
            // (inside the event, one level more) past the limit.
            if e.message.ends_with(TOO_DEEP_MARK) {
                assert_eq!(e.code, ErrorCode::InvalidEvent, "{}", e.message);
                let text = String::from_utf8_lossy(data);
                assert!(
                    nesting_depth(&text) > MAX_PAYLOAD_DEPTH + 1,
                    "refused as too deep but nests {} levels: {text:?}",
                    nesting_depth(&text)
                );
            }
            assert!(
                matches!(
                    e.code,
                    ErrorCode::InvalidJson | ErrorCode::InvalidEvent | ErrorCode::TooLarge
                ),
                "unexpected error code {:?}",
                e.code
            );
        }
    }
});
