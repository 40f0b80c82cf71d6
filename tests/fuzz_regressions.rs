//! Replays every input the fuzzers found (`fuzz/regressions/<target>/`)
//! through the parser its target drives, with the target's arguments. Each
//! file has its expected answer below (so many events, or an error whose
//! text names the file, line, field or key at fault): a panic, another
//! answer, a file without an expectation or an expectation without its file
//! fails the test. What is accepted must also meet the event contract.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use store_outbox::event::{check_entity, valid_event_id, NewEvent};

/// The `socket_framing` target's checks, the very file the target uses.
#[path = "../fuzz/src/socket_framing.rs"]
mod socket_framing;

/// The `spool_file` target's checks, the very file the target uses.
#[path = "../fuzz/src/spool_file.rs"]
mod spool_file;

/// The `http_head` target's harness and checks, the very file it uses.
#[path = "../fuzz/src/http_head.rs"]
mod http_head;

/// What a parser makes of one regression input.
#[derive(Debug)]
enum Expect {
    /// Accepted: this many events (subscriptions for `config_toml`).
    Accepted(usize),
    /// Refused, with an error whose text holds every one of these.
    Refused(&'static [&'static str]),
}

use Expect::{Accepted, Refused};

/// A parser's answer: the events (or subscriptions) it accepted, or its
/// error as text with every location it gives.
type Answer = Result<usize, String>;

/// The targets (`fuzz/fuzz_targets/<target>.rs`) and their regression
/// directories; `socket_framing`, `spool_file` and `http_head` have none
/// yet (their corpora are replayed).
const TARGETS: [&str; 8] = [
    "config_toml",
    "event_json",
    "http_head",
    "json_file",
    "ndjson_file",
    "poslog_xml",
    "socket_framing",
    "spool_file",
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut out: Vec<String> = entries
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// The files of `dir` (name, bytes), sorted.
fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    names_in(dir)
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join(&name)).unwrap_or_else(|e| panic!("{}/{name}: {e}", dir.display()));
            (name, bytes)
        })
        .collect()
}

fn assert_contract(events: &[NewEvent], name: &str) {
    for e in events {
        assert!(valid_event_id(&e.event_id), "{name}: event id {:?}", e.event_id);
        assert!(check_entity(&e.entity).is_ok(), "{name}: entity {:?}", e.entity);
        assert!(
            // One JSON value: read as raw text, any depth, numbers unparsed.
            serde_json::from_str::<&serde_json::value::RawValue>(&e.payload).is_ok(),
            "{name}: payload is JSON"
        );
        let at = time::OffsetDateTime::parse(&e.occurred_at, &time::format_description::well_known::Rfc3339);
        assert!(
            at.is_ok_and(|t| t.offset().is_utc()),
            "{name}: occurred_at {:?} is a UTC time",
            e.occurred_at
        );
    }
}

/// Gives every file of `fuzz/regressions/<target>/` to `parse` and checks its
/// answer against `expected`; reports every file that fails, not just the
/// first.
fn replay(target: &str, expected: &[(&str, Expect)], parse: impl Fn(&str, &[u8]) -> Answer) {
    let dir = fuzz_dir().join("regressions").join(target);
    let inputs = files_in(&dir);
    assert!(!inputs.is_empty(), "{}: no regression inputs", dir.display());
    let on_disk: BTreeSet<&str> = inputs.iter().map(|(name, _)| name.as_str()).collect();
    let listed: BTreeSet<&str> = expected.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        on_disk,
        listed,
        "the files in {} and their expected answers in tests/fuzz_regressions.rs",
        dir.display()
    );
    let mut failed = Vec::new();
    for (name, bytes) in &inputs {
        let expect = &expected.iter().find(|(n, _)| n == name).expect("listed").1;
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(name, bytes)));
        let fine = match (&answer, expect) {
            (Ok(Ok(n)), Accepted(want)) => n == want,
            (Ok(Err(text)), Refused(parts)) => parts.iter().all(|p| text.contains(p)),
            _ => false,
        };
        if !fine {
            let got = match answer {
                Ok(a) => format!("{a:?}"),
                Err(_) => "a panic (message above)".to_string(),
            };
            failed.push(format!("{target}/{name}: expected {expect:?}, got {got}"));
        }
    }
    assert!(failed.is_empty(), "regressions failed:\n{}", failed.join("\n"));
}

/// A spool file's error as text: `<file>[ line N][ index N][ field F][ element E] <code>: <message>`.
fn file_error(e: &store_outbox::ingest::spool::FileError) -> String {
    let mut out = e.file.clone();
    if let Some(line) = e.line {
        out += &format!(" line {line}");
    }
    if let Some(index) = e.index {
        out += &format!(" index {index}");
    }
    if let Some(field) = &e.field {
        out += &format!(" field {field}");
    }
    if let Some(element) = &e.element {
        out += &format!(" element {element}");
    }
    let code = serde_json::to_value(e.code).expect("code");
    format!("{out} {}: {}", code.as_str().unwrap_or_default(), e.message)
}

fn spool_file(file: &str, name: &str, bytes: &[u8]) -> Answer {
    match store_outbox::ingest::spool::parse_file(file, bytes, 1 << 20) {
        Ok(events) => {
            assert_contract(&events, name);
            Ok(events.len())
        }
        Err(e) => {
            assert_eq!(e.file, file, "{name}: the error names the file");
            Err(file_error(&e))
        }
    }
}

#[test]
fn every_target_has_its_replay_and_every_regression_directory_a_target() {
    let targets: Vec<String> = names_in(&fuzz_dir().join("fuzz_targets"))
        .into_iter()
        .filter_map(|n| n.strip_suffix(".rs").map(str::to_string))
        .collect();
    assert_eq!(targets, TARGETS, "fuzz/fuzz_targets and the replays here");
    for dir in names_in(&fuzz_dir().join("regressions")) {
        assert!(
            TARGETS.contains(&dir.as_str()),
            "fuzz/regressions/{dir}: not a target, so nothing replays it"
        );
    }
}

#[test]
fn event_json_regressions() {
    replay(
        "event_json",
        &[
            (
                "occurred-at-past-year-9999.json",
                Refused(&["invalid_event", "occurred_at"]),
            ),
            // I-JSON (RFC 7493): each refusal names the path.
            (
                "field-given-twice.json",
                Refused(&["invalid_event: entity: duplicate key"]),
            ),
            (
                "payload-duplicate-key.json",
                Refused(&["invalid_event: payload.items[0].sku: duplicate key"]),
            ),
            (
                "payload-lone-surrogate.json",
                Refused(&["invalid_event: payload.name[1]: lone surrogate"]),
            ),
            (
                "payload-number-out-of-range.json",
                Refused(&["invalid_event: payload.lines[3].price: number out of range"]),
            ),
            (
                "top-level-key-lone-surrogate.json",
                Refused(&["invalid_event: event: key with a lone surrogate"]),
            ),
            ("within-double-range-accepted.json", Accepted(1)),
            // 1.7976931348623158e308 rounds to the largest double: within
            // range (found by fuzzing once the walk parsed numbers exactly;
            // serde_json's fast parser called it infinite).
            ("rounds-to-the-largest-double-accepted.json", Accepted(1)),
            // Depth: 128 levels are taken, deeper is refused whatever it
            // holds (a number beyond range went through unchecked before).
            ("payload-128-levels-accepted.json", Accepted(1)),
            (
                "payload-130-levels-refused.json",
                Refused(&["invalid_event: payload: nested deeper than 128 levels"]),
            ),
        ],
        |name, bytes| match store_outbox::event::parse_event(bytes, 1 << 20) {
            Ok(e) => {
                assert_contract(std::slice::from_ref(&e), name);
                Ok(1)
            }
            Err(e) => {
                let code = serde_json::to_value(e.code).expect("code");
                Err(format!("{}: {}", code.as_str().unwrap_or_default(), e.message))
            }
        },
    );
}

#[test]
fn ndjson_file_regressions() {
    replay(
        "ndjson_file",
        &[
            (
                "occurred-at-past-year-9999.ndjson",
                Refused(&["f.ndjson line 2 field occurred_at invalid_event"]),
            ),
            (
                "payload-number-out-of-range.ndjson",
                Refused(&["f.ndjson line 2 field payload invalid_event: payload.price: number out of range"]),
            ),
        ],
        |name, bytes| spool_file("f.ndjson", name, bytes),
    );
}

#[test]
fn json_file_regressions() {
    replay(
        "json_file",
        &[
            ("array-in-an-array.json", Refused(&["f.json index 0 invalid_event"])),
            (
                "attributes-duplicate-key.json",
                Refused(&["f.json index 1 field attributes invalid_event: attributes.terminal: duplicate key"]),
            ),
            // A byte-order mark is not JSON: the file is refused at its first byte.
            (
                "bom-then-array.json",
                Refused(&["f.json invalid_json", "line 1 column 1"]),
            ),
            (
                "entity-258-bytes-of-2-byte-chars.json",
                Refused(&["f.json index 0 field entity invalid_event"]),
            ),
            (
                "occurred-at-past-year-9999.json",
                Refused(&["f.json index 1 field occurred_at invalid_event"]),
            ),
            ("truncated-array.json", Refused(&["f.json invalid_json", "line 2"])),
        ],
        |name, bytes| spool_file("f.json", name, bytes),
    );
}

#[test]
fn poslog_regressions() {
    replay(
        "poslog_xml",
        &[
            ("bom-payload-shifted.xml", Accepted(1)),
            ("bom-sale-with-accent.xml", Accepted(2)),
            ("bom-then-text.xml", Refused(&["line 1"])),
            // A time without a UTC form is not trusted: the time of ingest is used.
            ("end-date-time-past-year-9999.xml", Accepted(1)),
            ("ids-longer-than-128.xml", Refused(&["RetailStoreID"])),
            ("two-byte-order-marks.xml", Refused(&["line 1"])),
        ],
        |name, bytes| match store_outbox::ingest::poslog::parse(&String::from_utf8_lossy(bytes)) {
            Ok(events) => {
                assert_contract(&events, name);
                for e in &events {
                    let xml: String = serde_json::from_str(&e.payload).expect("payload is a JSON string");
                    assert!(
                        xml.starts_with("<Transaction") && xml.trim_end().ends_with("</Transaction>"),
                        "{name}: the whole transaction: {xml:?}"
                    );
                }
                Ok(events.len())
            }
            Err(e) => Err(format!("line {} element {}: {}", e.line, e.element, e.message)),
        },
    );
}

#[test]
fn config_toml_regressions() {
    const PATH: &str = "/nonexistent/c.toml";
    replay(
        "config_toml",
        &[
            (
                "error-after-multibyte-text.toml",
                Refused(&[PATH, "line 5", "invalid size \"viel\""]),
            ),
            // Lossy UTF-8 makes the bytes U+FFFD, which a bare key cannot hold.
            (
                "invalid-utf8-in-a-key.toml",
                Refused(&[PATH, "line 3", "expected `.`, `=`"]),
            ),
            ("relative-secret-file.toml", Refused(&[PATH, "line 4", "erp.secret"])),
            (
                "retry-initial-above-max.toml",
                Refused(&[PATH, "subscription[0].retry", "need 0 < initial <= max"]),
            ),
            (
                "unknown-key-in-subscription.toml",
                Refused(&[PATH, "line 5", "max_inflight"]),
            ),
        ],
        |_, bytes| match store_outbox::deliver::destinations::parse_config(
            &String::from_utf8_lossy(bytes),
            Some(Path::new(PATH)),
        ) {
            Ok(config) => Ok(config.subscriptions.len()),
            Err(e) => {
                assert!(e.0.starts_with(PATH), "the message starts with the file: {}", e.0);
                Err(e.0)
            }
        },
    );
}

/// The socket stream's regressions, and its seed corpus too (edge cases of
/// framing: blank lines, CRLF, an over-long line, no final newline, a BOM), so
/// the framing checks run in `cargo test` even while no crash is recorded.
#[test]
fn socket_framing_regressions() {
    let regressions = fuzz_dir().join("regressions/socket_framing");
    let recorded = if regressions.exists() {
        files_in(&regressions)
    } else {
        vec![]
    };
    let seeds = files_in(&fuzz_dir().join("corpus/socket_framing"))
        .into_iter()
        .map(|(name, bytes)| (format!("corpus/{name}"), bytes));
    let all: Vec<(String, Vec<u8>)> = recorded.into_iter().chain(seeds).collect();
    assert!(all.len() >= 5, "the socket framing inputs are there");
    let mut events = 0;
    let failed: Vec<&str> = all
        .iter()
        .filter(|(name, bytes)| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                socket_framing::check_stream(bytes, &mut |_line, e| {
                    assert_contract(std::slice::from_ref(e), name);
                    events += 1;
                })
            }))
            .is_err()
        })
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "socket framing checks failed for {failed:?} (messages above)"
    );
    assert!(events > 0, "the good lines of the corpus were parsed as events");
}

/// The HTTP servers' inputs: recorded crashes (a `Host` port with a leading
/// zero, which RFC 3986 allows, or a `+`, which it does not) and the seed corpus
/// (a good post, a text/plain one, an `Origin`, a rebound `Host`, two
/// `Host`s, the admin routes, a half-sent head), each served as one
/// connection by the real routers behind their guard.
#[test]
fn http_head_regressions() {
    let regressions = fuzz_dir().join("regressions/http_head");
    let recorded = if regressions.exists() {
        files_in(&regressions)
    } else {
        vec![]
    };
    let seeds = files_in(&fuzz_dir().join("corpus/http_head"))
        .into_iter()
        .map(|(name, bytes)| (format!("corpus/{name}"), bytes));
    let all: Vec<(String, Vec<u8>)> = recorded.into_iter().chain(seeds).collect();
    assert!(all.len() >= 10, "the HTTP inputs are there");
    let failed: Vec<&str> = all
        .iter()
        .filter(|(_, bytes)| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| http_head::check_connection(bytes))).is_err()
        })
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(failed.is_empty(), "HTTP checks failed for {failed:?} (messages above)");
}

/// The seeds of the `spool_file` target (each kind of name, good and bad
/// files, a file past a stop check) through the target's own checks, with
/// the answer each must get; it has no crash recorded yet.
#[test]
fn spool_file_regressions() {
    let expected: [(&str, Result<usize, &[&str]>); 12] = [
        ("array.json", Ok(2)),
        (
            "bad-item.json",
            Err(&["bad.json index 1 invalid_event: event must be a JSON object"]),
        ),
        (
            "bad-second-line.ndjson",
            Err(&["bad.ndjson line 2 field entity invalid_event: entity: missing"]),
        ),
        ("content-not-utf8.json", Err(&["latin1.json invalid_json: not UTF-8"])),
        ("crlf.ndjson", Ok(2)),
        ("past-a-stop-check.ndjson", Ok(1)),
        (
            "poslog-missing-sequence.xml",
            Err(&["line 8", "Transaction[2]/SequenceNumber"]),
        ),
        ("poslog-sale.xml", Ok(2)),
        ("prefixed-two-transactions.xml", Ok(2)),
        ("single.json", Ok(1)),
        ("three-events.ndjson", Ok(3)),
        (
            "unknown-kind.csv",
            Err(&["export.csv invalid_event: unknown file type"]),
        ),
    ];
    let dir = fuzz_dir().join("corpus/spool_file");
    let on_disk: Vec<String> = names_in(&dir);
    let listed: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    assert_eq!(on_disk, listed, "the seeds and their answers here");
    let mut failed = Vec::new();
    for (seed, want) in expected {
        let data = std::fs::read(dir.join(seed)).expect("seed");
        let mut accepted = 0;
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            spool_file::check_file(&data, &mut |_, _, events| accepted += events.len())
        }));
        let fine = match (&answer, want) {
            (Ok(Ok(n)), Ok(m)) => *n == m && accepted == m,
            (Ok(Err(e)), Err(parts)) => {
                let text = file_error(e);
                parts.iter().all(|p| text.contains(p))
            }
            _ => false,
        };
        if !fine {
            failed.push(format!("{seed}: expected {want:?}, got {answer:?}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
