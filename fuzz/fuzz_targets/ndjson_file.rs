//! A spool file named `*.ndjson`: one event a line (`ingest::spool::parse_file`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use store_outbox::ingest::spool::parse_file;
use store_outbox_fuzz::{check_events, ijson_violation};

const NAME: &str = "f.ndjson";

fuzz_target!(|data: &[u8]| {
    match parse_file(NAME, data, 1024 * 1024) {
        Ok(events) => {
            check_events(&events);
            let lines = std::str::from_utf8(data)
                .expect("accepted input is UTF-8")
                .lines()
                .count();
            assert!(events.len() <= lines, "{} events from {lines} lines", events.len());
            // Every line taken is I-JSON as a whole (the spool skips blank ones).
            let text = std::str::from_utf8(data).expect("accepted input is UTF-8");
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                if let Some(why) = ijson_violation(line) {
                    panic!("accepted line is not I-JSON ({why}): {line:?}");
                }
            }
        }
        Err(e) => {
            assert_eq!(e.file, NAME);
            if let Some(line) = e.line {
                assert!(line >= 1, "lines are 1-based");
            }
        }
    }
});
