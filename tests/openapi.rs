//! The published OpenAPI document (`docs/schema/openapi.json`, served at
//! `GET /v1/openapi.json`) is checked against the live agent by
//! schemathesis (PyPI; scripts/install-test-peers installs it): generated
//! requests, valid and invalid, against the real binary's admin and ingest
//! listeners; every answer must have a documented status, content type and
//! body shape, and none may be a server error. Bounded: a few dozen
//! examples per operation.

mod common;

use std::process::Command;

use common::*;

const TOKEN: &str = "openapi-token";

/// Runs schemathesis over the operations `filter` selects, against `base`.
fn schemathesis(admin_port: u16, base: &str, filter: &[&str], exclude_checks: &str, dir: &std::path::Path) {
    let mut cmd = Command::new("schemathesis");
    cmd.arg("run")
        .arg(format!("http://127.0.0.1:{admin_port}/v1/openapi.json"))
        .arg("--url")
        .arg(base)
        .args(filter)
        .args(["--checks", "all", "--exclude-checks", exclude_checks])
        .args([
            "--max-examples",
            "25",
            "--max-failures",
            "20",
            "--request-timeout",
            "20",
        ])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--no-color", "--report-dir"])
        .arg(dir)
        .current_dir(dir)
        .env("SCHEMATHESIS_HOOKS", "");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run schemathesis ({e}): scripts/install-test-peers installs it (pip)"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found the agent and its OpenAPI document disagreeing ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Tested:"), "schemathesis tested nothing:\n{text}");
}

#[test]
fn the_live_agent_answers_as_its_openapi_document_says() {
    let rx = Receiver::start();
    let (mut agent, admin_port) = Agent::with_admin_token(TOKEN, &subscription("erp", &rx.url(), ""));
    agent.start();
    // The document's example id, so the event routes reach a stored event.
    agent.send_all(&[event(
        "sale-0042-000123",
        "order:4711",
        "SaleCreated",
        serde_json::json!({"total": 9.5}),
    )]);

    let served = http(admin_port, "GET", "/v1/openapi.json", &[], b"");
    assert_eq!(served.status, 200);
    assert_eq!(served.header("content-type"), Some("application/json"));
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/schema/openapi.json"))
        .expect("docs/schema/openapi.json");
    assert_eq!(served.text(), committed, "the served document is the committed file");
    let cli = run_ok(Command::new(binary()).args(["schema", "openapi"]), "schema openapi");
    assert_eq!(String::from_utf8_lossy(&cli.stdout), committed);

    let reports = agent.dir.path().join("schemathesis");
    std::fs::create_dir_all(&reports).expect("report dir");
    // `/v1/events` is one path on two listeners (POST on ingest, GET on
    // admin), so each listener's `Allow` names only its own method:
    // schemathesis cannot hold its `Allow` check (allow_header_conformance) there.
    schemathesis(
        admin_port,
        &format!("http://127.0.0.1:{admin_port}"),
        &["--exclude-operation-id", "ingestEvents"],
        "allow_header_conformance",
        &reports,
    );
    // Ingest answers an event refused for its content inside a 200, one
    // reply per event (the contract), so negative data is not a 4xx.
    schemathesis(
        admin_port,
        &format!("http://127.0.0.1:{}", agent.http_port.get()),
        &["--include-operation-id", "ingestEvents"],
        "allow_header_conformance,negative_data_rejection",
        &reports,
    );
    // The agent is still whole after it: the example event was delivered.
    wait_until(
        std::time::Duration::from_secs(30),
        "the example event delivered",
        || rx.delivered_ids().contains("sale-0042-000123"),
    );
}
