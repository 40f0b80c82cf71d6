//! A spool file named `*.json`: one event or an array of events
//! (`ingest::spool::parse_file`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use store_outbox::ingest::spool::parse_file;
use store_outbox_fuzz::check_events;

const NAME: &str = "f.json";

fuzz_target!(|data: &[u8]| {
    match parse_file(NAME, data, 1024 * 1024) {
        Ok(events) => check_events(&events),
        Err(e) => assert_eq!(e.file, NAME),
    }
});
