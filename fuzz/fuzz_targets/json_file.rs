//! A spool file named `*.json`: one event or an array of events
//! (`ingest::spool::parse_file`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use store_outbox::ingest::spool::parse_file;
use store_outbox_fuzz::{check_events, ijson_violation};

const NAME: &str = "f.json";

fuzz_target!(|data: &[u8]| {
    match parse_file(NAME, data, 1024 * 1024) {
        Ok(events) => {
            check_events(&events);
            // Every event of the file is I-JSON, not only its payload: no
            // field or attribute given twice.
            let text = std::str::from_utf8(data).expect("accepted input is UTF-8");
            if let Some(why) = ijson_violation(text) {
                panic!("accepted file is not I-JSON ({why}): {text:?}");
            }
        }
        Err(e) => assert_eq!(e.file, NAME),
    }
});
