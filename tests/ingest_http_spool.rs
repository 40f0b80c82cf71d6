//! The other ways in (loopback HTTP, the spool directory with ARTS POSLog) and
//! the storage cap.

mod common;

use std::time::Duration;

use common::*;

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).expect("sample file")
}

fn events_of(agent: &Agent) -> Vec<(String, String, i64)> {
    let db = agent.open_db();
    let mut stmt = db
        .prepare("SELECT e.event_id, n.entity, e.entity_seq FROM events e JOIN entities n ON n.id = e.entity_id ORDER BY e.seq")
        .expect("query");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("events")
}

#[test]
fn http_takes_one_event_or_an_array_and_answers_after_commit() {
    let rx = Receiver::start();
    let mut agent = Agent::new(&subscription("erp", &rx.url(), ""));
    agent.start();
    let (status, body) =
        agent.http_post(event("h-1", "order:1", "SaleCreated", serde_json::json!({"a": 1})).as_bytes());
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"results": [{"ok": true, "event_id": "h-1", "entity_seq": 1, "duplicate": false}]})
    );

    // An array with one bad event: the others are stored (together), the bad
    // one gets its error in its place.
    let array = format!(
        "[{},{},{}]",
        event("h-2", "order:1", "SaleCreated", serde_json::json!(2)),
        r#"{"type":"SaleCreated","entity":"order:1"}"#,
        event("h-3", "order:1", "SaleCreated", serde_json::json!(3)),
    );
    let (status, body) = agent.http_post(array.as_bytes());
    assert_eq!(status, 200);
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert_eq!(
        (results[0]["ok"].clone(), results[0]["entity_seq"].clone()),
        (true.into(), 2.into())
    );
    assert_eq!(results[1]["error"]["code"], "invalid_event");
    assert_eq!(results[1]["error"]["message"], "payload: missing");
    assert_eq!(results[2]["entity_seq"], 3);
    let (status, body) = agent.http_post(b"[]");
    assert_eq!((status, body), (200, serde_json::json!({"results": []})));
    wait_until(Duration::from_secs(30), "3 delivered", || rx.delivered_ids().len() == 3);
    assert_entity_order(&rx.delivered());
    assert_eq!(agent.stored_events(), 3);
}

#[test]
fn http_status_codes_follow_the_contract() {
    let mut agent = Agent::with_ingest("max_event_bytes = \"1KiB\"\nmax_request_bytes = \"4KiB\"", "");
    agent.start();
    let (status, body) = agent.http_post(b"{\"type\": ");
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_json");
    let big_event = event("big", "order:1", "T", serde_json::json!("x".repeat(2000)));
    let (status, body) = agent.http_post(big_event.as_bytes());
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "too_large");
    let big_body = format!(
        "[{}]",
        vec![event("x", "e", "T", serde_json::json!("y".repeat(500))); 8].join(",")
    );
    let (status, body) = agent.http_post(big_body.as_bytes());
    assert_eq!(status, 413);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("max_request_bytes"));
    let (status, _) = http_request(agent.http_port.get(), "GET", "/v1/events", b"");
    assert_eq!(status, 405);
    assert_eq!(agent.stored_events(), 0, "nothing stored from refused requests");
}

#[test]
fn http_ingest_can_be_turned_off_and_refuses_remote_addresses_by_default() {
    let mut agent = Agent::with_ingest("", "");
    let text = std::fs::read_to_string(&agent.config).expect("config");
    let port = agent.http_port.get();
    std::fs::write(
        &agent.config,
        text.replace(&format!("127.0.0.1:{port}"), "0.0.0.0:7390"),
    )
    .expect("config");
    let out = agent.cli(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http_allow_remote"));
    std::fs::write(&agent.config, text.replace(&format!("127.0.0.1:{port}"), "off")).expect("config");
    agent.start();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn spool_files_present_at_start_are_taken_in_name_order() {
    let mut agent = Agent::new("");
    let nd = format!(
        "{}\n\n{}\n",
        event("a-1", "till:1", "SaleCreated", serde_json::json!(1)),
        event("a-2", "till:1", "SaleCreated", serde_json::json!(2))
    );
    agent.drop_file(
        "b.json",
        event("b-1", "till:1", "SaleCreated", serde_json::json!(3)).as_bytes(),
    );
    agent.drop_file("a.ndjson", nd.as_bytes());
    agent.drop_file(
        "c.json",
        format!("[{}]", event("c-1", "till:1", "SaleCreated", serde_json::json!(4))).as_bytes(),
    );
    agent.start();
    wait_until(Duration::from_secs(30), "3 files taken", || {
        agent.status()["ingest"]["accepted_total"] == 4
    });
    let ids: Vec<(String, i64)> = events_of(&agent).into_iter().map(|(id, _, seq)| (id, seq)).collect();
    assert_eq!(
        ids,
        vec![
            ("a-1".into(), 1),
            ("a-2".into(), 2),
            ("b-1".into(), 3),
            ("c-1".into(), 4)
        ]
    );
    wait_until(Duration::from_secs(10), "incoming empty", || {
        agent.status()["spool"]["incoming"] == 0
    });
}

#[test]
fn spool_files_renamed_in_while_running_are_taken_and_temporary_names_ignored() {
    let mut agent = Agent::new("");
    agent.start();
    let incoming = agent.spool().join("incoming");
    std::fs::write(incoming.join(".being-written.json"), b"{").expect("write");
    std::fs::write(incoming.join("also-being-written.json.tmp"), b"{").expect("write");
    agent.drop_file(
        "x.json",
        event("x-1", "till:2", "SaleCreated", serde_json::json!(1)).as_bytes(),
    );
    wait_until(Duration::from_secs(30), "x taken", || !incoming.join("x.json").exists());
    assert_eq!(agent.stored_events(), 1);
    assert!(incoming.join(".being-written.json").exists() && incoming.join("also-being-written.json.tmp").exists());
    assert_eq!(agent.status()["spool"]["failed"], 0);
}

#[test]
fn a_burst_of_a_thousand_small_files() {
    let rx = Receiver::start();
    let mut agent = Agent::new(&subscription("erp", &rx.url(), ""));
    agent.start();
    for i in 0..1000 {
        let ev = serde_json::json!({"type": "StockMovementCreated", "entity": format!("sku:{}", i % 20), "payload": {"i": i}});
        agent.drop_file(&format!("mv-{i:04}.json"), ev.to_string().as_bytes());
    }
    wait_until(Duration::from_secs(120), "1000 stored", || {
        agent.stored_events() == 1000
    });
    wait_until(Duration::from_secs(30), "incoming empty", || {
        agent.status()["spool"]["incoming"] == 0
    });
    wait_until(Duration::from_secs(120), "1000 delivered", || {
        rx.delivered_ids().len() == 1000
    });
    assert_entity_order(&rx.delivered());
    // Files were taken in name order: per SKU the payload counter increases.
    for r in rx.delivered() {
        let i = r.json["data"]["i"].as_i64().expect("i");
        assert_eq!(r.entity_seq, i / 20 + 1, "{}", r.json);
    }
}

#[test]
fn a_file_failing_in_the_middle_is_moved_aside_and_nothing_of_it_enqueued() {
    let mut agent = Agent::new("");
    agent.start();
    let lines = [
        event("f-1", "till:1", "SaleCreated", serde_json::json!(1)),
        event("f-2", "till:1", "SaleCreated", serde_json::json!(2)),
        r#"{"type":"SaleCreated","entity":"till:1","payload":3,"colour":"red"}"#.to_string(),
        event("f-4", "till:1", "SaleCreated", serde_json::json!(4)),
    ];
    agent.drop_file("bad.ndjson", lines.join("\n").as_bytes());
    let failed = agent.spool().join("failed");
    wait_until(Duration::from_secs(30), "moved to failed/", || {
        failed.join("bad.ndjson").exists()
    });
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(failed.join("bad.ndjson.error.json")).expect("error report"))
            .expect("json");
    assert_eq!(report["file"], "bad.ndjson");
    assert_eq!(report["line"], 3);
    assert_eq!(report["field"], "colour");
    assert_eq!(report["code"], "invalid_event");
    assert_eq!(agent.stored_events(), 0, "all or nothing");
    assert_eq!(agent.status()["spool"]["failed"], 1);
    // Good files after it still go in.
    agent.drop_file("good.ndjson", lines[..2].join("\n").as_bytes());
    wait_until(Duration::from_secs(30), "good taken", || agent.stored_events() == 2);
}

#[test]
fn poslog_files_become_one_event_per_transaction() {
    let rx = Receiver::start();
    let mut agent = Agent::new(&subscription("erp", &rx.url(), ""));
    agent.start();
    agent.drop_file("0001-sale.xml", &data("poslog-sale.xml"));
    agent.drop_file("0002-return-void.xml", &data("poslog-return-void.xml"));
    wait_until(Duration::from_secs(30), "4 delivered", || rx.delivered_ids().len() == 4);
    let delivered = rx.delivered();
    let ids: Vec<&str> = delivered.iter().map(|r| r.id.as_str()).collect();
    for id in [
        "poslog:0042:03:10231",
        "poslog:0042:03:10232",
        "poslog:0042:05:877",
        "poslog:0042:05:878",
    ] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    let sale = delivered.iter().find(|r| r.id == "poslog:0042:03:10231").expect("sale");
    assert_eq!(sale.event_type, "PosLog");
    assert_eq!(sale.entity, "pos:0042/03");
    assert_eq!(sale.json["timestamp"], "2026-11-22T09:15:00Z");
    let xml = sale.json["data"].as_str().expect("payload is the XML as a string");
    assert!(
        xml.starts_with("<Transaction>")
            && xml.contains("<ItemID>5449000000996</ItemID>")
            && xml.ends_with("</Transaction>")
    );
    assert!(!xml.contains("10232"), "only its own transaction");
    let void = delivered.iter().find(|r| r.id == "poslog:0042:05:878").expect("void");
    assert!(void.json["data"].as_str().expect("xml").contains("CancelFlag=\"true\""));
    assert_entity_order(&delivered);

    agent.drop_file("0003-missing.xml", &data("poslog-missing-sequence.xml"));
    let report_path = agent.spool().join("failed/0003-missing.xml.error.json");
    wait_until(Duration::from_secs(30), "refused", || report_path.exists());
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path).expect("read")).expect("json");
    assert_eq!(report["element"], "Transaction[2]/SequenceNumber");
    assert_eq!(report["line"], 8);
    assert!(report["message"].as_str().unwrap_or("").contains("missing"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent.stored_events(), 4, "nothing of the failing file");
}

#[test]
fn a_file_read_again_after_its_commit_is_not_enqueued_twice() {
    // The agent dies between commit and delete: on restart the same file is
    // there again. Events without event_id get ids derived from the file.
    let mut agent = Agent::new("");
    agent.start();
    let content = (1..=5)
        .map(|i| serde_json::json!({"type": "SaleCreated", "entity": "till:7", "payload": i}).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    agent.drop_file("sales.ndjson", content.as_bytes());
    wait_until(Duration::from_secs(30), "taken", || agent.stored_events() == 5);
    agent.kill9();
    agent.drop_file("sales.ndjson", content.as_bytes());
    agent.start();
    wait_until(Duration::from_secs(30), "taken again", || {
        !agent.spool().join("incoming/sales.ndjson").exists()
    });
    assert_eq!(agent.stored_events(), 5, "recognised as duplicates");
    assert_eq!(agent.status()["ingest"]["duplicate_total"], 5);
}

#[test]
fn spool_files_survive_sigkill_loops_without_duplicates() {
    let mut agent = Agent::new("");
    agent.start();
    let mut expected = 0;
    for round in 0..4 {
        for f in 0..25 {
            let content = (0..4)
                .map(|i| {
                    serde_json::json!({"type": "SaleCreated", "entity": format!("till:{f}"), "payload": [round, f, i]})
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join("\n");
            agent.drop_file(&format!("r{round}-{f:02}.ndjson"), content.as_bytes());
            expected += 4;
        }
        std::thread::sleep(Duration::from_millis(60));
        agent.kill9();
        agent.start();
    }
    wait_until(Duration::from_secs(60), "all files taken", || {
        agent.status()["spool"]["incoming"] == 0
    });
    assert_eq!(agent.stored_events(), expected, "every event once");
}

#[test]
fn a_full_outbox_refuses_new_events_keeps_the_acknowledged_and_recovers() {
    let mut rx = Receiver::start();
    rx.shut();
    let sub = subscription("erp", &rx.url(), "retry = { initial = \"100ms\", max = \"300ms\" }");
    let mut agent = Agent::new(&format!("[storage]\nmax_db_bytes = \"400KiB\"\n{sub}"));
    agent.start();
    let (acked, refused) = agent.fill_until_refused("full", 5, |_| serde_json::json!("p".repeat(800)));
    assert!(refused >= 3 && acked.len() > 50, "filled up: {} acked", acked.len());
    let status = agent.status();
    assert_eq!(status["db"]["full"], true, "{status}");
    let (code, _) = agent.http_post(event("full-http", "till:9", "SaleCreated", serde_json::json!(1)).as_bytes());
    assert_eq!(code, 507);
    agent.drop_file(
        "waits.json",
        event("full-spool", "till:9", "SaleCreated", serde_json::json!(1)).as_bytes(),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        agent.spool().join("incoming/waits.json").exists(),
        "the spool file waits in incoming/"
    );
    assert!(agent.log().contains("outbox is full"));

    // The endpoint comes back: everything acknowledged is delivered, then
    // delivered events are pruned and ingest resumes by itself.
    rx.restart();
    wait_until(Duration::from_secs(120), "all acknowledged delivered", || {
        acked.is_subset(&rx.delivered_ids())
    });
    assert_entity_order(&rx.delivered());
    wait_until(Duration::from_secs(60), "ingest resumes", || {
        send_lines(
            &agent.socket(),
            &[event("after", "till:1", "SaleCreated", serde_json::json!(1))],
        )[0]["ok"]
            == true
    });
    wait_until(Duration::from_secs(30), "the spool file goes in", || {
        !agent.spool().join("incoming/waits.json").exists()
    });
    wait_until(Duration::from_secs(30), "delivered", || {
        rx.delivered_ids().contains("full-spool")
    });
}
