//! The agent's two HTTP servers against what a web page on the store PC and a
//! careless or hostile client can send (issue 24; contract "Hostile peers and
//! inputs"): a cross-site POST into ingest, DNS rebinding into admin, heads
//! and bodies that never finish, more connections than the cap. Nothing of a
//! refused request is stored, and real producers are served throughout.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn sale(id: &str) -> String {
    event(id, "order:1", "SaleCreated", serde_json::json!({"total": 1}))
}

/// The error code of a refusal's JSON body.
fn code(r: &HttpResponse) -> String {
    r.json()["error"]["code"].as_str().unwrap_or_default().to_string()
}

#[test]
fn ingest_takes_only_json_from_producers_never_from_a_web_page() {
    let mut agent = Agent::new("");
    agent.start();
    let port = agent.http_port.get();
    let body = sale("from-a-page");

    // What `fetch(url, {method: 'POST', mode: 'no-cors', body})` sends: a
    // simple request (text/plain), which needs no preflight.
    for content_type in [
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let r = http(
            port,
            "POST",
            "/v1/events",
            &[("content-type", content_type)],
            body.as_bytes(),
        );
        assert_eq!(
            (r.status, code(&r).as_str()),
            (415, "unsupported_media_type"),
            "{content_type}: {}",
            r.text()
        );
    }
    // The browser's Origin, whatever the content type.
    for origin in ["http://attacker.example", "null", &format!("http://127.0.0.1:{port}")] {
        let r = http(port, "POST", "/v1/events", &[("origin", origin)], body.as_bytes());
        assert_eq!(
            (r.status, code(&r).as_str()),
            (403, "forbidden_origin"),
            "{origin}: {}",
            r.text()
        );
    }
    // A name that resolves to loopback only for the attacker's page.
    for host in ["attacker.example:{port}", "attacker.example", "127.0.0.1:1", ""] {
        let host = host.replace("{port}", &port.to_string());
        let r = http(port, "POST", "/v1/events", &[("host", &host)], body.as_bytes());
        assert_eq!(
            (r.status, code(&r).as_str()),
            (421, "wrong_host"),
            "{host:?}: {}",
            r.text()
        );
    }
    assert_eq!(agent.stored_events(), 0, "nothing of a refused request is stored");

    // Producers: every address of the agent's own, and a charset parameter.
    for (i, host) in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
    ]
    .iter()
    .enumerate()
    {
        let r = http(
            port,
            "POST",
            "/v1/events",
            &[("host", host), ("content-type", "application/json; charset=utf-8")],
            sale(&format!("producer-{i}")).as_bytes(),
        );
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        assert_eq!(r.json()["results"][0]["ok"], true, "{}", r.text());
    }
    assert_eq!(agent.stored_events(), 3);
}

#[test]
fn admin_answers_only_to_its_own_address_and_a_page_cannot_post_to_it() {
    let rx = Receiver::start();
    let (mut agent, port) = Agent::with_admin_token("admin-token", &subscription("erp", &rx.url(), ""));
    agent.start();
    agent.send_all(&[event(
        "secret-sale",
        "order:7",
        "SaleCreated",
        serde_json::json!({"card_holder": "J. Doe"}),
    )]);
    let rebound = format!("attacker.example:{port}");
    for path in [
        "/",
        "/v1/status",
        "/v1/events",
        "/v1/events/secret-sale",
        "/metrics",
        "/healthz",
        "/v1/history",
    ] {
        let r = http(port, "GET", path, &[("host", &rebound)], b"");
        assert_eq!(
            (r.status, code(&r).as_str()),
            (421, "wrong_host"),
            "{path}: {}",
            r.text()
        );
        assert!(
            !r.text().contains("J. Doe") && !r.text().contains("secret-sale"),
            "{path}: {}",
            r.text()
        );
        let own = http(port, "GET", path, &[], b"");
        assert!(
            own.status == 200 || (path == "/healthz" && own.status == 503),
            "{path}: {}",
            own.status
        );
    }
    assert!(http(port, "GET", "/v1/events/secret-sale", &[], b"")
        .text()
        .contains("J. Doe"));

    // A mutation from another origin is refused even with the token; the
    // page's own form (same origin) goes through.
    let resend = "/v1/events/secret-sale/resend";
    let bearer = ("authorization", "Bearer admin-token");
    let r = http(
        port,
        "POST",
        resend,
        &[bearer, ("origin", "http://attacker.example")],
        b"",
    );
    assert_eq!((r.status, code(&r).as_str()), (403, "forbidden_origin"), "{}", r.text());
    let r = http(port, "POST", resend, &[bearer, ("host", &rebound)], b"");
    assert_eq!(r.status, 421, "{}", r.text());
    let own_origin = format!("http://127.0.0.1:{port}");
    let r = http(port, "POST", resend, &[bearer, ("origin", &own_origin)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["queued"], 1, "{}", r.text());
}

#[test]
fn admin_off_loopback_needs_allow_remote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[admin]\nlisten = \"0.0.0.0:7391\"\n").expect("write");
    let out = cli_with_config("check-config", &config);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains("line 2") && text.contains("admin.listen") && text.contains("admin.allow_remote = true"),
        "{text}"
    );
    std::fs::write(&config, "[admin]\nlisten = \"0.0.0.0:7391\"\nallow_remote = true\n").expect("write");
    let out = cli_with_config("check-config", &config);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Open TCP sockets of process `pid` (its fds that are sockets).
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|t| t.to_string_lossy().starts_with("socket:"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

/// Whether the server closed `stream` (EOF or reset) within `wait`.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // A 408 or similar before the close is fine.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn half_sent_heads_are_closed_and_the_connection_cap_holds_while_producers_are_served() {
    let mut agent = Agent::new("");
    agent.start();
    let pid = agent.child.as_ref().expect("running").id();
    let (ingest, admin) = (agent.http_port.get(), agent.admin_port.get());
    let baseline = open_sockets(pid);

    // 300 clients on each server that send half a head and then nothing.
    let mut slow: Vec<TcpStream> = Vec::new();
    for port in [ingest, admin] {
        for _ in 0..300 {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect (the backlog takes it)");
            s.write_all(b"POST /v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-ty")
                .expect("half a head");
            slow.push(s);
        }
    }
    let started = Instant::now();
    // The agent holds at most 256 of each server's at once.
    let mut most = 0;
    while started.elapsed() < Duration::from_secs(4) {
        most = most.max(open_sockets(pid).saturating_sub(baseline));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        most <= 2 * 256,
        "{most} client connections open at once, the cap is 256 per server"
    );
    assert!(most >= 256, "the connections were accepted up to the cap ({most})");

    // A producer on the socket is not held up at all; one over HTTP waits
    // in the backlog until the slow heads are closed, then is served.
    let reply = agent.send_all(&[sale("during-the-flood")]);
    assert_eq!(reply[0]["ok"], true, "{reply:?}");
    let (status, answer) = http_request(ingest, "POST", "/v1/events", sale("after-the-flood").as_bytes());
    assert_eq!(status, 200, "{answer}");

    // Every slow client is closed by the server: none is left to hold a
    // slot (10 s for each head, twice over for those that waited).
    for s in slow.iter_mut() {
        assert!(
            closed_within(s, Duration::from_secs(60)),
            "a half-sent head was never closed"
        );
    }
    wait_until(Duration::from_secs(30), "the slow connections gone", || {
        open_sockets(pid) <= baseline + 2
    });
    assert_eq!(agent.stored_events(), 2);
    let log = agent.log();
    assert!(log.contains("connection limit reached"), "{log}");
}

#[test]
fn a_body_that_stalls_is_given_up_and_nothing_of_it_is_stored() {
    let mut agent = Agent::new("");
    agent.start();
    let port = agent.http_port.get();
    let body = format!("[{},{}]", sale("stalled-1"), sale("stalled-2"));
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(&body.as_bytes()[..body.len() / 2]).expect("half the body");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.contains("invalid_json") && text.contains("nothing more arrived"),
        "{text}"
    );
    assert_eq!(agent.stored_events(), 0);
}
