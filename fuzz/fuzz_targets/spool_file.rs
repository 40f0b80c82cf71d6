//! A spool file by name and bytes (`ingest::spool::parse_file`), whichever
//! kind its name gives it: `*.json`, `*.ndjson`, `*.xml` or none. The input is
//! `<name>\n<content>`; the checks are in `src/spool_file.rs`, shared with the
//! main crate's replays.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store_outbox_fuzz::{check_events, ijson_violation};

#[path = "../src/spool_file.rs"]
mod spool_file;

use spool_file::{check_file, Kind};

fuzz_target!(|data: &[u8]| {
    let _ = check_file(data, &mut |kind, text, events| {
        // Every event meets the contract, and what was taken is I-JSON as a
        // whole (no field or attribute given twice), not only its payloads.
        check_events(events);
        let whole: Vec<&str> = match kind {
            Kind::Json => vec![text],
            Kind::Ndjson => text.lines().filter(|l| !l.trim().is_empty()).collect(),
            Kind::Xml | Kind::Unknown => vec![],
        };
        for part in whole {
            if let Some(why) = ijson_violation(part) {
                panic!("accepted spool file is not I-JSON ({why}): {part:?}");
            }
        }
    });
});
