//! Every duration, size and count key of the config at its extremes (0, 1,
//! the largest the agent takes, one more, negative, nonsense): `check-config`
//! exits 0 and the agent then runs and answers events as the contract says,
//! or it exits 2 naming the line and the key. Never a panic, never a value
//! that wraps (a `give_up_after` of 300,000,000 years used to wrap negative
//! and park on the first 500; a `retain_delivered` of 584 million years
//! pruned everything).

mod common;

use std::time::Duration;

use common::*;

/// Where a key goes: `[agent]`, `[ingest]`, `[storage]` or the subscription.
#[derive(Clone, Copy, Debug)]
enum Section {
    Agent,
    Ingest,
    Storage,
    Subscription,
}

/// (section, key as written, key as errors name it)
const DURATIONS: [(Section, &str, &str); 7] = [
    (Section::Agent, "heartbeat", "agent.heartbeat"),
    (Section::Storage, "retain_delivered", "storage.retain_delivered"),
    (Section::Subscription, "timeout", "timeout"),
    (Section::Subscription, "retry = { initial = {} }", "retry.initial"),
    (Section::Subscription, "retry = { max = {} }", "retry.max"),
    (
        Section::Subscription,
        "retry = { give_up_after = {} }",
        "retry.give_up_after",
    ),
    (Section::Subscription, "batch = { linger = {} }", "batch.linger"),
];

const SIZES: [(Section, &str, &str); 4] = [
    (Section::Ingest, "max_event_bytes", "ingest.max_event_bytes"),
    (Section::Ingest, "max_request_bytes", "ingest.max_request_bytes"),
    (Section::Storage, "max_db_bytes", "storage.max_db_bytes"),
    (Section::Subscription, "batch = { max_bytes = {} }", "batch.max_bytes"),
];

const COUNTS: [(Section, &str, &str); 2] = [
    (Section::Subscription, "max_in_flight", "max_in_flight"),
    (Section::Subscription, "batch = { max_events = {} }", "batch.max_events"),
];

const DURATION_VALUES: [&str; 9] = [
    "\"0s\"",
    "\"1ns\"",
    "\"1s\"",
    "\"36525d\"",
    "\"36526d\"",
    "\"300000000years\"",
    "\"18446744073709551615s\"",
    "\"-1s\"",
    "\"soon\"",
];

const SIZE_VALUES: [&str; 12] = [
    "0",
    "\"0B\"",
    "1",
    "\"1B\"",
    "9223372036854775807",
    "\"8EiB\"",
    "\"1PiB\"",
    "\"9223372036854775808B\"",
    "\"16EiB\"",
    "-1",
    "\"-1KiB\"",
    "\"lots\"",
];

const COUNT_VALUES: [&str; 5] = ["0", "1", "-1", "9223372036854775807", "99999999999999999999"];

/// `key = value` as written in the file.
fn assignment(key: &str, value: &str) -> String {
    if key.contains("{}") {
        key.replace("{}", value)
    } else {
        format!("{key} = {value}")
    }
}

/// An agent whose config has `key = value` in its section.
fn agent_with(section: Section, key: &str, value: &str, url: &str) -> Agent {
    let assignment = assignment(key, value);
    match section {
        Section::Agent => Agent::with_agent_keys(&assignment, ""),
        Section::Ingest => Agent::with_ingest(&assignment, ""),
        Section::Storage => Agent::new(&format!("[storage]\n{assignment}\n")),
        Section::Subscription => Agent::new(&subscription("erp", url, &assignment)),
    }
}

/// The config's line number (1-based) holding `needle`.
fn line_of(config: &str, needle: &str) -> usize {
    config
        .lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in\n{config}"))
}

/// Checks one case; returns whether it was accepted.
fn check(section: Section, key: &str, value: &str, named: &str, rx: &Receiver) -> bool {
    let mut agent = agent_with(section, key, value, &rx.url());
    let config = std::fs::read_to_string(&agent.config).expect("config");
    let out = agent.cli(&["check-config"]);
    let err = stderr(&out);
    let case = format!("{named} = {value}");
    assert!(!err.contains("panicked"), "{case}: {err}");
    match out.status.code() {
        Some(0) => {}
        Some(2) => {
            // The line of the value, or of a key it conflicts with.
            // The key, or for a value TOML itself cannot hold inside an
            // inline table, the table's key (`batch`).
            let short = named.rsplit('.').next().unwrap_or(named);
            let table = named.split('.').next().unwrap_or(named);
            assert!(
                err.contains(short) || err.contains(&format!(".{table}:")),
                "{case}: the error names the key: {err}"
            );
            let line = line_of(&config, &assignment(key, value));
            assert!(
                err.contains(&format!("line {line}"))
                    || err.contains("max_request_bytes")
                    || err.contains("max_event_bytes"),
                "{case}: the error names line {line}: {err}\n{config}"
            );
            return false;
        }
        other => panic!("{case}: check-config exited {other:?}: {err}"),
    }
    // Accepted: the agent runs on it, answers an event by the contract,
    // and stops cleanly.
    agent.start();
    let reply = &send_lines(
        &agent.socket(),
        &[event("x-1", "till:1", "SaleCreated", serde_json::json!({"n": 1}))],
    )[0];
    let code = reply["error"]["code"].as_str().unwrap_or("");
    assert!(
        reply["ok"] == true || ["too_large", "storage_full"].contains(&code),
        "{case}: {reply}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let pid = agent.child.as_ref().expect("running").id();
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "{case}: the agent died:\n{}",
        agent.log()
    );
    let status = agent.stop();
    assert!(status.success(), "{case}: exit {status}:\n{}", agent.log());
    assert!(!agent.log().contains("panicked"), "{case}:\n{}", agent.log());
    true
}

/// Runs every value of `values` through every key of `keys`; returns the
/// accepted cases.
fn sweep(keys: &[(Section, &str, &str)], values: &[&str], rx: &Receiver) -> Vec<String> {
    let mut accepted = Vec::new();
    for (section, key, named) in keys {
        for value in values {
            if check(*section, key, value, named, rx) {
                accepted.push(format!("{named} = {value}"));
            }
        }
    }
    accepted
}

#[test]
fn every_duration_key_at_its_extremes_is_taken_and_behaves_or_refused_naming_its_line() {
    let rx = Receiver::start();
    let accepted = sweep(&DURATIONS, &DURATION_VALUES, &rx);
    for refused in [
        "\"36526d\"",
        "\"300000000years\"",
        "\"18446744073709551615s\"",
        "\"-1s\"",
        "\"soon\"",
    ] {
        assert!(
            !accepted.iter().any(|c| c.ends_with(&format!("= {refused}"))),
            "{refused} must be refused: accepted {accepted:?}"
        );
    }
    for taken in [
        "storage.retain_delivered = \"36525d\"",
        "retry.give_up_after = \"36525d\"",
        "retry.max = \"36525d\"",
        "timeout = \"1ns\"",
    ] {
        assert!(accepted.iter().any(|c| c == taken), "{taken} is taken: {accepted:?}");
    }
}

#[test]
fn every_size_and_count_key_at_its_extremes_is_taken_and_behaves_or_refused_naming_its_line() {
    let rx = Receiver::start();
    let mut accepted = sweep(&SIZES, &SIZE_VALUES, &rx);
    accepted.extend(sweep(&COUNTS, &COUNT_VALUES, &rx));
    for refused in [
        "ingest.max_event_bytes = 0",
        "ingest.max_event_bytes = \"0B\"",
        "storage.max_db_bytes = 0",
        "storage.max_db_bytes = \"0B\"",
        "storage.max_db_bytes = \"16EiB\"",
        "storage.max_db_bytes = \"9223372036854775808B\"",
        "max_in_flight = 0",
        "max_in_flight = -1",
    ] {
        assert!(
            !accepted.iter().any(|c| c == refused),
            "{refused} must be refused: {accepted:?}"
        );
    }
    for taken in [
        "storage.max_db_bytes = 1",
        "storage.max_db_bytes = \"1PiB\"",
        "ingest.max_event_bytes = 1",
    ] {
        assert!(accepted.iter().any(|c| c == taken), "{taken} is taken: {accepted:?}");
    }
}

#[test]
fn a_give_up_after_of_a_century_never_parks_on_the_first_failure() {
    // 300,000,000 years used to wrap to a negative number of milliseconds
    // and park every delivery on its first 500. The longest taken now
    // behaves as a century.
    let rx = Receiver::start();
    rx.answer_with(|_| Answer::status(500));
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        "retry = { initial = \"100ms\", max = \"200ms\", give_up_after = \"36525d\" }",
    ));
    agent.start();
    agent.send_events(&Events::new("p", 0..3, "SaleCreated").entity("till:1"));
    wait_until(Duration::from_secs(30), "several failed attempts", || {
        rx.request_count() >= 4
    });
    let sub = agent.sub_status("erp");
    assert_eq!(sub["parked"], 0, "{sub}");
    assert_eq!(sub["pending"], 3, "{sub}");
}
