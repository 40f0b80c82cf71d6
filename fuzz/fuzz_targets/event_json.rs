//! One event's JSON text, as it arrives on the socket, over HTTP, or as a line
//! of a spool file: `event::parse_event` with the default 1 MiB limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store_outbox::event::{parse_event, ErrorCode};
use store_outbox_fuzz::check_event;

const MAX_EVENT_BYTES: u64 = 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    match parse_event(data, MAX_EVENT_BYTES) {
        Ok(event) => {
            check_event(&event);
            // The payload is the producer's text, verbatim: it must occur in the input.
            let text = std::str::from_utf8(data).expect("accepted input is UTF-8");
            assert!(text.contains(&event.payload), "payload is not verbatim");
        }
        Err(e) => {
            assert!(!e.message.is_empty(), "error without a message");
            assert!(
                matches!(e.code, ErrorCode::InvalidJson | ErrorCode::InvalidEvent | ErrorCode::TooLarge),
                "unexpected error code {:?}",
                e.code
            );
        }
    }
});
