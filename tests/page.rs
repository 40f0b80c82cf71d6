//! The status page in a real browser: headless Chromium driven through
//! chromedriver (WebDriver). Needs Debian's `chromium` and `chromium-driver`
//! (scripts/install-test-peers installs them). Screenshots are kept in
//! `target/test-artifacts/` (`status-page*.png`); the checks read the page
//! as Chromium rendered it (boxes, computed styles, visible text).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::*;

const TOKEN: &str = "page-token";

struct Driver {
    child: Child,
    port: u16,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = http_request(self.port, "DELETE", &format!("/session/{}", self.session), b"");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start(profile: &std::path::Path) -> Driver {
        Driver::start_sized(profile, "1024,768")
    }

    /// A browser window of `size` ("width,height").
    fn start_sized(profile: &std::path::Path, size: &str) -> Driver {
        Driver::start_with(profile, size, &[])
    }

    /// Like [`Driver::start_sized`], with more Chromium flags.
    fn start_with(profile: &std::path::Path, size: &str, flags: &[String]) -> Driver {
        let port = free_port();
        let child = spawn_listening(
            Command::new("chromedriver").arg(format!("--port={port}")),
            Stdio::null(),
            port,
            "chromedriver (Debian package chromium-driver; .ci/run installs it)",
        );
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.push(format!("--window-size={size}"));
        args.push(format!("--user-data-dir={}", profile.display()));
        args.extend(flags.iter().cloned());
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
        }}});
        let (status, body) = http_request(port, "POST", "/session", caps.to_string().as_bytes());
        assert_eq!(status, 200, "new session: {body}");
        let session = body["value"]["sessionId"].as_str().expect("session id").to_string();
        Driver { child, port, session }
    }

    fn call(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        let payload = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (status, reply) = http_request(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            payload.as_bytes(),
        );
        assert_eq!(status, 200, "{method} {path}: {reply}");
        reply["value"].clone()
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", serde_json::json!({ "url": url }));
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            serde_json::json!({"using": "css selector", "value": css}),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|e| e.as_str())
            .expect("element id")
            .to_string()
    }

    fn text(&self) -> String {
        let v = self.call(
            "POST",
            "/execute/sync",
            serde_json::json!({"script": "return document.body.innerText", "args": []}),
        );
        v.as_str().unwrap_or_default().to_string()
    }

    /// Runs `script` in the page and returns its value.
    fn eval(&self, script: &str) -> serde_json::Value {
        self.call(
            "POST",
            "/execute/sync",
            serde_json::json!({"script": script, "args": []}),
        )
    }

    fn screenshot(&self, name: &str) {
        let png = self.call("GET", "/screenshot", serde_json::Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64"))
            .expect("png");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
        std::fs::create_dir_all(&dir).expect("artifact dir");
        std::fs::write(dir.join(name), bytes).expect("write screenshot");
    }
}

#[test]
fn the_page_shows_a_parked_event_and_resend_with_the_token_queues_it_again() {
    let rx = Receiver::start();
    rx.refuse_event("sale-0042-000123", 422);
    let (mut agent, admin_port) = Agent::with_admin_token(
        TOKEN,
        &format!(
            "{}{}",
            subscription("erp", &rx.url(), PARK_FAST),
            subscription("oms", &rx.url(), "")
        ),
    );
    agent.start();
    agent.send_all(&[
        event(
            "sale-0042-000123",
            "order:4711",
            "SaleCreated",
            serde_json::json!({"total": 9.5}),
        ),
        event(
            "sale-0042-000124",
            "order:4712",
            "SaleCreated",
            serde_json::json!({"total": 3.2}),
        ),
    ]);
    wait_until(Duration::from_secs(30), "parked", || {
        agent.status()["subscriptions"][0]["parked"] == 1
    });

    let profile = agent.dir.path().join("chromium-profile");
    let driver = Driver::start(&profile);
    driver.open(&format!("http://127.0.0.1:{admin_port}/"));
    let text = driver.text();
    assert!(
        text.contains("Parked events") && text.contains("sale-0042-000123"),
        "{text}"
    );
    assert!(text.contains("erp") && text.contains("oms"), "{text}");
    assert!(text.contains("store 0042"), "{text}");
    driver.screenshot("status-page.png");

    // Resend from the page: pause the refresh, give the token, press the button.
    rx.answer_with(|_| Answer::ok());
    driver.open(&format!("http://127.0.0.1:{admin_port}/?pause=1"));
    let token = driver.find("input[name=token]");
    driver.call(
        "POST",
        &format!("/element/{token}/value"),
        serde_json::json!({"text": TOKEN}),
    );
    let button = driver.find("button[name=delivery][value=\"erp:sale-0042-000123\"]");
    driver.call("POST", &format!("/element/{button}/click"), serde_json::json!({}));
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !last.contains("queued 1 deliveries again") {
        assert!(
            std::time::Instant::now() < deadline,
            "no confirmation on the page:\n{last}"
        );
        std::thread::sleep(Duration::from_millis(100));
        last = driver.text();
    }
    driver.screenshot("status-page-after-resend.png");
    wait_until(Duration::from_secs(30), "delivered after the resend", || {
        rx.delivered().iter().filter(|r| r.id == "sale-0042-000123").count() >= 1
    });
    wait_until(Duration::from_secs(30), "nothing parked", || {
        agent.status()["subscriptions"][0]["parked"] == 0
    });
}

const MINUTE_MS: i64 = 60_000;

/// Stores a made-up history of `minutes` minutes ending now for `sub`, as
/// the sampler would have (cumulative totals; `at(i)` gives pending,
/// delivered, ingested and offline seconds of the minute `i` minutes ago).
/// The agent runs meanwhile: its own samples join these.
fn seed_history(agent: &Agent, sub: &str, minutes: i64, at: impl Fn(i64) -> (i64, i64, i64, i64)) {
    let db = rusqlite::Connection::open(agent.db()).expect("open db");
    db.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
    let sub_id: i64 = db
        .query_row("SELECT id FROM subscriptions WHERE name = ?1", [sub], |r| r.get(0))
        .expect("subscription row");
    let now_minute = store_outbox::outbox::now_ms() / MINUTE_MS;
    let (mut delivered_total, mut ingested_total) = (0, 0);
    for ago in (1..=minutes).rev() {
        let (pending, delivered, ingested, offline_s) = at(ago);
        delivered_total += delivered;
        ingested_total += ingested;
        db.execute(
            "INSERT OR REPLACE INTO history(sub_id, at, period_ms, pending, parked, delivered_total, ingested_total, offline_ms)
             VALUES (?1, ?2, 60000, ?3, 0, ?4, ?5, ?6)",
            rusqlite::params![
                sub_id,
                (now_minute - ago) * MINUTE_MS,
                pending,
                delivered_total,
                ingested_total,
                offline_s * 1000
            ],
        )
        .expect("sample");
    }
}

/// A store's day: a few sales a minute, more around midday.
fn traffic(ago: i64) -> i64 {
    4 + (ago * 7 % 5) + if (200..500).contains(&(ago % 1440)) { 8 } else { 0 }
}

/// What Chromium drew of each history chart: its box, its outage bands
/// (position within the chart, width, painted fill) and its bars.
fn charts(driver: &Driver) -> Vec<serde_json::Value> {
    driver
        .eval(
            "return [...document.querySelectorAll('svg.history')].map(svg => {
               const b = svg.getBoundingClientRect();
               const band = r => { const rb = r.getBoundingClientRect(); const st = getComputedStyle(r);
                 return {x: rb.x - b.x, w: rb.width, fill: st.fill, opacity: Number(st.fillOpacity)}; };
               return {sub: svg.dataset.subscription, w: b.width, h: b.height,
                 outages: [...svg.querySelectorAll('rect.outage')].map(band),
                 bars: [...svg.querySelectorAll('.series rect')].filter(r => r.getBoundingClientRect().height > 0).length};
             })",
        )
        .as_array()
        .expect("charts")
        .clone()
}

fn chart<'a>(charts: &'a [serde_json::Value], sub: &str) -> &'a serde_json::Value {
    charts
        .iter()
        .find(|c| c["sub"] == sub)
        .unwrap_or_else(|| panic!("no chart for {sub}: {charts:?}"))
}

/// Asserts a chart was drawn, with at least one painted outage band;
/// returns the bands.
fn drawn_with_outage(c: &serde_json::Value) -> Vec<serde_json::Value> {
    assert!(
        c["w"].as_f64() > Some(300.0) && c["h"].as_f64() > Some(100.0),
        "chart not drawn: {c}"
    );
    assert!(c["bars"].as_u64() > Some(100), "bars drawn: {c}");
    let bands = c["outages"].as_array().expect("outages").clone();
    assert!(!bands.is_empty(), "no shaded outage: {c}");
    for b in &bands {
        assert!(b["w"].as_f64() > Some(1.0), "band has width: {b}");
        assert!(
            b["fill"] != "none" && b["opacity"].as_f64() > Some(0.05),
            "band painted: {b}"
        );
    }
    bands
}

#[test]
fn chromium_shows_health_an_outage_with_its_growing_backlog_and_parked_events() {
    let mut erp_rx = Receiver::start();
    let oms_rx = Receiver::start();
    let (mut agent, admin_port) = Agent::with_admin_token(
        TOKEN,
        &format!(
            "{}{}",
            subscription("erp", &erp_rx.url(), "retry = { initial = \"200ms\", max = \"1s\" }"),
            subscription("oms", &oms_rx.url(), PARK_FAST)
        ),
    );
    agent.start();
    let profile = agent.dir.path().join("chromium-profile");
    let driver = Driver::start_sized(&profile, "1200,1340");
    let page = format!("http://127.0.0.1:{admin_port}/?pause=1");

    // 1. Healthy: traffic delivered; the day's history has one outage in
    // the morning, drained since.
    agent.send_events(&Events::new("sale", 0..40, "SaleCreated").spread_over("order", 8));
    wait_until(Duration::from_secs(30), "delivered to both", || {
        erp_rx.delivered_count() == 40 && oms_rx.delivered_count() == 40
    });
    seed_history(&agent, "erp", 1439, |ago| {
        let down = (270..420).contains(&ago); // 7 h to 4.5 h ago
        let pending = if down {
            (420 - ago) * 9
        } else if (250..270).contains(&ago) {
            (ago - 250) * 60
        } else {
            0
        };
        let delivered = if down {
            0
        } else if (250..270).contains(&ago) {
            90
        } else {
            traffic(ago)
        };
        (pending, delivered, traffic(ago), if down { 60 } else { 0 })
    });
    seed_history(&agent, "oms", 1439, |ago| (0, traffic(ago), traffic(ago), 0));
    driver.open(&page);
    let text = driver.text();
    assert!(text.contains("History, last 24 h"), "{text}");
    assert!(text.contains("Last outage ") && text.contains("drained by"), "{text}");
    assert!(text.contains("No outage in the last 24 h."), "oms had none:\n{text}");
    let drawn = charts(&driver);
    let bands = drawn_with_outage(chart(&drawn, "erp"));
    let w = chart(&drawn, "erp")["w"].as_f64().expect("width");
    assert!(
        bands[0]["x"].as_f64().expect("x") < w * 0.9,
        "the morning's outage is not at the end: {bands:?}"
    );
    assert!(chart(&drawn, "oms")["outages"].as_array().expect("bands").is_empty());
    driver.screenshot("status-page-healthy.png");

    // 2. The erp endpoint goes away: offline, the backlog grows, the last
    // error is current and has an age; the outage band reaches now.
    erp_rx.shut();
    agent.send_events(&Events::new("down", 0..25, "SaleCreated").spread_over("order", 8));
    wait_until(Duration::from_secs(30), "erp offline with a backlog", || {
        let s = agent.sub_status("erp");
        s["state"] == "offline" && s["pending"] == 25
    });
    seed_history(&agent, "erp", 35, |ago| {
        let down = ago <= 30;
        // Growing towards the 25 events really waiting.
        let pending = if down { (31 - ago) * 24 / 30 } else { 0 };
        (
            pending,
            if down { 0 } else { traffic(ago) },
            traffic(ago),
            if down { 60 } else { 0 },
        )
    });
    driver.open(&page);
    let text = driver.text();
    assert!(text.contains("Offline since "), "{text}");
    assert!(text.contains(" ago: cannot connect"), "the error's age:\n{text}");
    assert!(!text.contains("past, "), "the error is not past yet:\n{text}");
    let drawn = charts(&driver);
    let bands = drawn_with_outage(chart(&drawn, "erp"));
    let last = bands.last().expect("band");
    let end = last["x"].as_f64().expect("x") + last["w"].as_f64().expect("w");
    let w = chart(&drawn, "erp")["w"].as_f64().expect("width");
    assert!(end > w * 0.97, "the current outage reaches now: {last} of {w}");
    driver.screenshot("status-page-outage.png");

    // 3. The link is back and drains; meanwhile oms refuses one event for
    // good: it is parked, listed with its Resend button, and the erp error
    // is shown as past.
    oms_rx.refuse_event("sale-0042-000123", 422);
    erp_rx.restart();
    agent.send_all(&[event(
        "sale-0042-000123",
        "order:4711",
        "SaleCreated",
        serde_json::json!({"total": 9.5}),
    )]);
    wait_until(Duration::from_secs(60), "erp drained and oms parked", || {
        let erp = agent.sub_status("erp");
        erp["pending"] == 0 && erp["last_error_past"] == true && agent.sub_status("oms")["parked"] == 1
    });
    driver.open(&page);
    let text = driver.text();
    assert!(
        text.contains("Parked events") && text.contains("sale-0042-000123"),
        "{text}"
    );
    assert!(text.contains("HTTP 422"), "{text}");
    assert!(
        text.contains("past, ") && text.contains(" ago: cannot connect"),
        "{text}"
    );
    assert!(
        text.contains("Last outage ") && text.contains("drained by"),
        "the outage ended and drained:\n{text}"
    );
    let buttons = driver.eval("return document.querySelectorAll('button[name=delivery]').length");
    assert_eq!(buttons, 1, "one Resend button for the parked event");
    drawn_with_outage(chart(&charts(&driver), "erp"));
    driver.screenshot("status-page-parked.png");
}

/// Serves `html` to every request on a free loopback port, on a thread, for
/// as long as the test runs: a web site of its own, another origin.
fn serve_page(html: String) -> u16 {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let mut out = &stream;
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                html.len()
            );
        }
    });
    port
}

#[test]
fn a_web_page_in_chromium_can_neither_post_events_nor_read_or_resend_through_admin() {
    // The attacks of issue 24 from a real browser on the store PC: a page
    // of another origin posts a forged sale with fetch(no-cors) (a simple
    // request: no preflight), tries a JSON fetch and a cross-origin read,
    // and submits the page's resend form; then DNS rebinding, with
    // Chromium's resolver mapping attacker.example to 127.0.0.1.
    let rx = Receiver::start();
    let (mut agent, admin_port) = Agent::with_admin_token(TOKEN, &subscription("erp", &rx.url(), PARK_FAST));
    agent.start();
    rx.refuse_event("secret-sale", 422);
    agent.send_all(&[event(
        "secret-sale",
        "order:7",
        "SaleCreated",
        serde_json::json!({"card_holder": "J. Doe"}),
    )]);
    wait_until(Duration::from_secs(30), "parked", || {
        agent.status()["subscriptions"][0]["parked"] == 1
    });
    let ingest = agent.http_port.get();
    let forged = |id: &str| {
        serde_json::json!({"event_id": id, "type": "SaleCreated", "entity": "order:666", "payload": {"total": -1000}})
            .to_string()
    };
    let html = format!(
        r#"<!doctype html><title>loading</title>
<form id="f" method="POST" action="http://127.0.0.1:{admin_port}/ui/resend" target="sink">
<input name="token" value="{TOKEN}"><input name="parked" value="1"></form>
<iframe name="sink"></iframe>
<script>
const results = {{}};
const ingest = "http://127.0.0.1:{ingest}/v1/events";
async function attempt(name, f) {{
  try {{ results[name] = await f(); }} catch (e) {{ results[name] = "blocked: " + e; }}
}}
async function go() {{
  await attempt("no_cors", async () => (await fetch(ingest, {{method: "POST", mode: "no-cors", body: {f1}}})).type);
  await attempt("no_cors_text", async () => (await fetch(ingest, {{method: "POST", mode: "no-cors",
      headers: {{"content-type": "text/plain"}}, body: {f2}}})).type);
  await attempt("json", async () => (await fetch(ingest, {{method: "POST",
      headers: {{"content-type": "application/json"}}, body: {f3}}})).status);
  await attempt("read", async () => await (await fetch("http://127.0.0.1:{admin_port}/v1/events/secret-sale")).text());
  document.getElementById("f").submit();
  await new Promise(r => setTimeout(r, 1500));
  window.results = results;
  document.title = "done";
}}
go();
</script>"#,
        f1 = serde_json::to_string(&forged("forged-1")).expect("js"),
        f2 = serde_json::to_string(&forged("forged-2")).expect("js"),
        f3 = serde_json::to_string(&forged("forged-3")).expect("js"),
    );
    let site = serve_page(html);

    let profile = agent.dir.path().join("chromium-profile");
    let driver = Driver::start_with(
        &profile,
        "1024,768",
        &["--host-resolver-rules=MAP attacker.example 127.0.0.1".to_string()],
    );
    driver.open(&format!("http://127.0.0.1:{site}/"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while driver.eval("return document.title") != "done" {
        assert!(std::time::Instant::now() < deadline, "the page's script did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let results = driver.eval("return JSON.stringify(window.results)");
    let results: serde_json::Value = serde_json::from_str(results.as_str().unwrap_or("{}")).expect("results");
    // The browser sent the no-cors posts (opaque answers), nothing else got through.
    assert_eq!(results["no_cors"], "opaque", "{results}");
    assert!(
        results["read"].as_str().is_some_and(|r| r.starts_with("blocked")),
        "{results}"
    );
    assert!(!results.to_string().contains("J. Doe"), "{results}");

    // DNS rebinding: the page's own name now resolves to loopback.
    driver.open(&format!("http://attacker.example:{admin_port}/v1/events/secret-sale"));
    let rebound = driver.text();
    assert!(
        rebound.contains("wrong_host") && !rebound.contains("J. Doe"),
        "{rebound}"
    );
    driver.open(&format!("http://attacker.example:{admin_port}/"));
    assert!(driver.text().contains("wrong_host"), "{}", driver.text());
    drop(driver);

    // Nothing forged was stored or delivered; the form's resend was refused.
    let db = agent.open_db();
    let forged_stored: i64 = db
        .query_row("SELECT COUNT(*) FROM events WHERE event_id LIKE 'forged-%'", [], |r| {
            r.get(0)
        })
        .expect("count");
    assert_eq!(forged_stored, 0);
    assert_eq!(agent.stored_events(), 1);
    assert_eq!(
        agent.status()["subscriptions"][0]["parked"],
        1,
        "the page's resend was refused"
    );
    assert!(rx.requests().iter().all(|r| !r.id.starts_with("forged")));
}
