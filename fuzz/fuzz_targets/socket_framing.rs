//! The Unix socket's NDJSON stream: `ingest::socket::read_line` frames it
//! (cut into reads of varied sizes) and `ingest::socket::parse_line` parses
//! each line, as the connection handler does. The checks are in
//! `src/socket_framing.rs`, shared with `tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store_outbox_fuzz::check_event;
use store_outbox_fuzz::socket_framing::check_stream;

fuzz_target!(|data: &[u8]| {
    check_stream(data, &mut |line, event| {
        check_event(event);
        // The payload is the producer's text, verbatim: it must occur in the line.
        let text = std::str::from_utf8(line).expect("accepted line is UTF-8");
        assert!(text.contains(&event.payload), "payload is not verbatim");
    });
});
