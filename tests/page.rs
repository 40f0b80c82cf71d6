//! The status page in a real browser: headless Chromium driven through
//! chromedriver (WebDriver). Needs Debian's `chromium` and `chromium-driver`
//! (.ci/run installs them). The screenshot is kept in
//! `target/test-artifacts/status-page.png`.

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
        let port = free_port();
        let child = spawn_listening(
            Command::new("chromedriver").arg(format!("--port={port}")),
            Stdio::null(),
            port,
            "chromedriver (Debian package chromium-driver; .ci/run installs it)",
        );
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--window-size=1024,768",
                format!("--user-data-dir={}", profile.display()),
            ]}
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
