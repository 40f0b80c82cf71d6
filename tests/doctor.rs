//! `doctor` against real endpoints: a loopback receiver, a closed port, and a
//! TLS server (openssl s_server) whose CA is unknown, then configured.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// A TLS server (`openssl s_server`) on `port` with the server certificate
/// in `dir` (see [`ca_and_server_cert`]).
fn tls_server(dir: &Path, port: u16) -> Process {
    let accept = format!("127.0.0.1:{port}");
    let args = [
        "s_server",
        "-accept",
        &accept,
        "-cert",
        "server.pem",
        "-key",
        "server.key",
        "-www",
        "-quiet",
    ];
    Process(spawn_listening(
        Command::new("openssl").args(args).current_dir(dir),
        Stdio::null(),
        port,
        "openssl s_server",
    ))
}

fn doctor(agent: &Agent) -> (i32, String) {
    let out = agent.cli(&["doctor"]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_live_receiver_passes_every_step() {
    let rx = Receiver::start();
    let agent = Agent::new(&subscription("erp", &rx.url(), ""));
    let (code, out) = doctor(&agent);
    assert_eq!(code, 0, "{out}");
    for line in ["ok    dns", "ok    tcp", "skip  tls", "ok    http", "ok    clock"] {
        assert!(out.contains(line), "{line} in\n{out}");
    }
    let json = agent.cli(&["doctor", "--json"]);
    let reports: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(reports[0]["subscription"], "erp");
    assert_eq!(reports[0]["steps"][1]["verdict"], "ok");
}

#[test]
fn a_closed_port_fails_at_tcp_with_a_hint() {
    let url = format!("http://127.0.0.1:{}/hooks", free_port());
    let agent = Agent::new(&subscription("erp", &url, ""));
    let (code, out) = doctor(&agent);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  tcp") && out.contains("hint: the endpoint is down"),
        "{out}"
    );
    assert!(out.contains("skip  http"), "{out}");
}

#[test]
fn an_unknown_ca_fails_at_tls_and_passes_with_ca_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    ca_and_server_cert(dir.path());
    let port = free_port();
    let _server = tls_server(dir.path(), port);
    let url = format!("https://127.0.0.1:{port}/");
    let agent = Agent::new(&subscription("erp", &url, ""));
    let (code, out) = doctor(&agent);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ok    tcp") && out.contains("FAIL  tls"), "{out}");
    assert!(out.contains("set ca_file"), "{out}");

    let ca = dir.path().join("ca.pem");
    agent.write_config(&subscription("erp", &url, &format!("ca_file = \"{}\"", ca.display())));
    let (code, out) = doctor(&agent);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok    tls") && out.contains("ok    http"), "{out}");
}
