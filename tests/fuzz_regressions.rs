//! Replays every input the fuzzers found (`fuzz/regressions/<target>/`)
//! through the parser its target drives: none may panic, and what is accepted
//! must satisfy the contract's limits.

use std::path::Path;

use store_outbox::event::{check_entity, valid_event_id, NewEvent};

/// The `socket_framing` target's checks, the very file the target uses.
#[path = "../fuzz/src/socket_framing.rs"]
mod socket_framing;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return vec![];
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read input"),
            )
        })
        .collect();
    out.sort();
    out
}

fn assert_contract(events: &[NewEvent], name: &str) {
    for e in events {
        assert!(valid_event_id(&e.event_id), "{name}: event id {:?}", e.event_id);
        assert!(check_entity(&e.entity).is_ok(), "{name}: entity {:?}", e.entity);
        assert!(
            serde_json::from_str::<serde_json::Value>(&e.payload).is_ok(),
            "{name}: payload is JSON"
        );
    }
}

#[test]
fn event_json_regressions() {
    for (name, bytes) in inputs("event_json") {
        if let Ok(e) = store_outbox::event::parse_event(&bytes, 1 << 20) {
            assert_contract(&[e], &name);
        }
    }
}

#[test]
fn ndjson_and_json_file_regressions() {
    for (target, file) in [("ndjson_file", "f.ndjson"), ("json_file", "f.json")] {
        for (name, bytes) in inputs(target) {
            if let Ok(events) = store_outbox::ingest::spool::parse_file(file, &bytes, 1 << 20) {
                assert_contract(&events, &name);
            }
        }
    }
}

#[test]
fn poslog_regressions() {
    let all = inputs("poslog_xml");
    assert!(!all.is_empty(), "the POSLog regressions are there");
    for (name, bytes) in all {
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(events) = store_outbox::ingest::poslog::parse(&text) {
            assert_contract(&events, &name);
            for e in &events {
                let xml: String = serde_json::from_str(&e.payload).expect("payload is a JSON string");
                assert!(
                    xml.contains("Transaction") && xml.trim_end().ends_with('>'),
                    "{name}: whole transaction: {xml:?}"
                );
            }
        }
    }
}

#[test]
fn config_toml_regressions() {
    for (name, bytes) in inputs("config_toml") {
        let _ = store_outbox::config::parse(&String::from_utf8_lossy(&bytes), Some(Path::new("/nonexistent/c.toml")));
        let _ = name;
    }
}

/// The socket stream's regressions, and its seed corpus too (edge cases of
/// framing: blank lines, CRLF, an over-long line, no final newline, a BOM), so
/// the framing checks run in `cargo test` even while no crash is recorded.
#[test]
fn socket_framing_regressions() {
    let seeds = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/socket_framing"))
        .expect("fuzz/corpus/socket_framing")
        .filter_map(Result::ok)
        .map(|e| {
            (
                format!("corpus/{}", e.file_name().to_string_lossy()),
                std::fs::read(e.path()).expect("read input"),
            )
        });
    let mut all: Vec<(String, Vec<u8>)> = inputs("socket_framing").into_iter().chain(seeds).collect();
    all.sort();
    assert!(all.len() >= 5, "the socket framing inputs are there");
    let failed: Vec<&str> = all
        .iter()
        .filter(|(name, bytes)| {
            std::panic::catch_unwind(|| {
                socket_framing::check_stream(bytes, &mut |_line, e| assert_contract(std::slice::from_ref(e), name))
            })
            .is_err()
        })
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "socket framing checks failed for {failed:?} (messages above)"
    );
}
