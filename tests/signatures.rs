//! Our signatures, checked by code we did not write: the official Standard
//! Webhooks library for Python (PyPI `standardwebhooks`, installed by .ci/run).

mod common;

use std::time::Duration;

use common::*;

const NEW_SECRET: &str = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=";

#[test]
fn the_official_standard_webhooks_library_verifies_our_signatures() {
    let rx = Receiver::start();
    let mut agent = Agent::new(&subscription("erp", &rx.url(), ""));
    agent.start();
    let mut lines = Events::new("sw", 0..5, "SaleCreated")
        .entity("order:1")
        .payload(|i| serde_json::json!({"unicode": "Grüße €", "i": i}))
        .lines();
    lines.push(r#"{"type":"PosLog","entity":"pos:1/2","payload":"<Transaction/>"}"#.to_string());
    agent.send_all(&lines);
    wait_until(Duration::from_secs(30), "6 delivered", || rx.delivered_ids().len() == 6);
    assert_eq!(
        verify_with_python(Verifier::OneEventEach, &rx.delivered(), agent.dir.path(), &[SECRET]),
        "verified 6"
    );
}

#[test]
fn during_rotation_each_secret_verifies() {
    let rx = Receiver::start();
    let sub = format!(
        "[[subscription]]\nname = \"erp\"\nurl = \"{}\"\nsecret = [\"{NEW_SECRET}\", \"{SECRET}\"]\n",
        rx.url()
    );
    let mut agent = Agent::new(&sub);
    agent.start();
    send_lines(
        &agent.socket(),
        &[event("rot-1", "order:1", "SaleCreated", serde_json::json!({}))],
    );
    wait_until(Duration::from_secs(30), "delivered", || rx.delivered_ids().len() == 1);
    let header = &rx.delivered()[0].headers["webhook-signature"];
    assert_eq!(header.split(' ').count(), 2, "one signature per secret: {header}");
    assert_eq!(
        verify_with_python(
            Verifier::OneEventEach,
            &rx.delivered(),
            agent.dir.path(),
            &[SECRET, NEW_SECRET]
        ),
        "verified 1"
    );
}

#[test]
fn the_receive_command_verifies_and_checks_order() {
    let receive = Receive::start(&["--secret", SECRET, "--json"]);
    let mut agent = Agent::new(&subscription("erp", &receive.url(), ""));
    agent.start();
    agent.send_events(&Events::new("rc", 0..10, "SaleCreated").spread_over("till", 2));
    wait_until(Duration::from_secs(30), "delivered", || {
        agent.status()["subscriptions"][0]["delivered_total"] == 10
    });
    agent.stop();
    let events = receive.stop_json();
    assert_eq!(events.len(), 10);
    for e in &events {
        assert_eq!(e["signature_valid"], true);
        assert_eq!(e["order"], "in_order", "{e}");
    }
}

#[test]
fn the_receive_command_refuses_a_wrong_signature() {
    let receive = Receive::start(&["--secret", NEW_SECRET]);
    let mut agent = Agent::new(&subscription(
        "erp",
        &receive.url(),
        "retry = { initial = \"5s\", max = \"5s\" }",
    ));
    agent.start();
    send_lines(
        &agent.socket(),
        &[event("w-1", "till:1", "SaleCreated", serde_json::json!(1))],
    );
    wait_until(Duration::from_secs(30), "refused", || {
        agent.status()["subscriptions"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("401"))
    });
}
