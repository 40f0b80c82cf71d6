//! The crash loop of the reliability suite: producers on all three ways in
//! (socket, HTTP, spool) send continuously while the agent is SIGKILLed at
//! random moments and restarted. An independent check at the end: every
//! acknowledged event reached the receiver, nothing arrived that was never
//! sent, and per-entity order never went backwards.
//!
//! CI size: 10 kills. Soak: `STORE_OUTBOX_SOAK_KILLS=100 cargo test --release --test crash_loop -- --nocapture`.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

type Acked = Arc<Mutex<HashSet<String>>>;

fn socket_chunk(socket: &PathBuf, lines: &[(String, String)]) -> Vec<String> {
    let Ok(stream) = UnixStream::connect(socket) else {
        return vec![];
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let Ok(mut writer) = stream.try_clone() else {
        return vec![];
    };
    for (_, l) in lines {
        if writer.write_all(format!("{l}\n").as_bytes()).is_err() {
            break;
        }
    }
    let mut reader = BufReader::new(stream);
    let mut acked = Vec::new();
    for (id, _) in lines {
        let mut reply = String::new();
        if reader.read_line(&mut reply).unwrap_or(0) == 0 {
            break;
        }
        if reply.contains("\"ok\":true") {
            acked.push(id.clone());
        }
    }
    acked
}

fn http_chunk(port: u16, lines: &[(String, String)]) -> Vec<String> {
    let body = format!(
        "[{}]",
        lines.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join(",")
    );
    match try_http_request(port, "POST", "/v1/events", body.as_bytes()) {
        Ok((200, reply)) => lines
            .iter()
            .zip(reply["results"].as_array().cloned().unwrap_or_default())
            .filter(|(_, r)| r["ok"] == true)
            .map(|((id, _), _)| id.clone())
            .collect(),
        _ => vec![],
    }
}

/// A producer that resends what was not acknowledged before going on, the way
/// a POS must.
fn producer(
    name: &'static str,
    stop: Arc<AtomicBool>,
    acked: Acked,
    send: impl Fn(&[(String, String)]) -> Vec<String>,
) -> usize {
    let mut chunk_no = 0;
    while !stop.load(Ordering::Relaxed) {
        let chunk: Vec<(String, String)> = (0..10)
            .map(|i| {
                let id = format!("{name}-{chunk_no}-{i}");
                let entity = format!("{name}:{}", i % 4);
                (
                    id.clone(),
                    event(&id, &entity, "SaleCreated", serde_json::json!({"c": chunk_no, "i": i})),
                )
            })
            .collect();
        let mut missing: HashSet<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !missing.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{name}: could not get chunk {chunk_no} acknowledged"
            );
            let got = send(&chunk);
            for id in got {
                missing.remove(&id);
                acked.lock().unwrap().insert(id);
            }
            if !missing.is_empty() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        chunk_no += 1;
    }
    chunk_no * 10
}

#[test]
fn crash_loop_on_every_way_in() {
    let kills: usize = std::env::var("STORE_OUTBOX_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let rx = Receiver::start();
    rx.answer_with(|r| Answer::ok().after(Duration::from_millis((r.entity_seq % 3) as u64 * 3)));
    let mut agent = Agent::new(&subscription(
        "erp",
        &rx.url(),
        "max_in_flight = 8\nretry = { initial = \"50ms\", max = \"300ms\" }",
    ));
    agent.start();
    let acked: Acked = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    {
        let (socket, stop, acked) = (agent.socket(), stop.clone(), acked.clone());
        threads.push(std::thread::spawn(move || {
            producer("sock", stop, acked, |c| socket_chunk(&socket, c))
        }));
    }
    {
        let (port, stop, acked) = (agent.http_port.get(), stop.clone(), acked.clone());
        threads.push(std::thread::spawn(move || {
            producer("http", stop, acked, |c| http_chunk(port, c))
        }));
    }
    // The spool: a file renamed into incoming/ is durable on disk, so it
    // counts as acknowledged as soon as the rename is done.
    let spool_files = {
        let (incoming, stop, acked) = (agent.spool().join("incoming"), stop.clone(), acked.clone());
        std::thread::spawn(move || {
            std::fs::create_dir_all(&incoming).expect("incoming");
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let ids: Vec<String> = (0..5).map(|i| format!("file-{n}-{i}")).collect();
                let body: Vec<String> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| {
                        event(
                            id,
                            &format!("file:{}", i % 2),
                            "StockMovementCreated",
                            serde_json::json!(n),
                        )
                    })
                    .collect();
                let tmp = incoming.join(format!(".f{n:05}.tmp"));
                std::fs::write(&tmp, body.join("\n")).expect("write");
                std::fs::rename(&tmp, incoming.join(format!("f{n:05}.ndjson"))).expect("rename");
                acked.lock().unwrap().extend(ids);
                n += 1;
                std::thread::sleep(Duration::from_millis(40));
            }
            n
        })
    };
    let mut rng_state = 0x2545F4914F6CDD1Du64;
    for _ in 0..kills {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        std::thread::sleep(Duration::from_millis(100 + rng_state % 300));
        agent.kill9();
        agent.start();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for t in threads {
        sent += t.join().expect("producer");
    }
    let files = spool_files.join().expect("spool producer");
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        sent + files * 5,
        "every sent event was acknowledged in the end"
    );
    // The backlog left by the kills can be large (a release build takes
    // events much faster than this receiver, with its delays, answers): wait
    // as long as deliveries go on, and fail only when they stall.
    let stall_limit = Duration::from_secs(60);
    let (mut last_count, mut last_progress) = (0, Instant::now());
    loop {
        let delivered = rx.delivered_ids();
        if acked.is_subset(&delivered) {
            break;
        }
        if delivered.len() > last_count {
            (last_count, last_progress) = (delivered.len(), Instant::now());
        } else if last_progress.elapsed() > stall_limit {
            report_undelivered(&agent, &acked, &delivered);
            panic!("deliveries stalled for {stall_limit:?} before every acknowledged event was delivered");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let delivered = rx.delivered();
    let unique = rx.delivered_ids();
    assert!(
        unique.is_subset(&acked),
        "delivered only what was sent and acknowledged"
    );
    let duplicates = assert_entity_order(&delivered);
    let status = agent.status();
    assert_eq!(
        status["ingest"]["accepted_total"],
        acked.len() as i64,
        "stored once each"
    );
    println!(
        "crash loop: {kills} kills survived; {} events acknowledged (socket+http {sent}, spool {}), {} delivered, {duplicates} duplicates, 0 order violations",
        acked.len(),
        files * 5,
        unique.len()
    );
}

/// What a failed wait needs to be understood: the events acknowledged and
/// not delivered, their rows, the agent's log; the directory is kept.
fn report_undelivered(agent: &Agent, acked: &HashSet<String>, delivered: &HashSet<String>) {
    let missing: Vec<&String> = acked.difference(delivered).collect();
    eprintln!("{} acknowledged events not delivered; the first ones:", missing.len());
    let conn = agent.open_db();
    for id in missing.iter().take(10) {
        let row: Result<String, _> = conn.query_row(
            "SELECT format('seq %d, entity %s #%d, state %d, attempts %d, last error %s',
                           e.seq, n.entity, e.entity_seq, d.state, d.attempts, d.last_error)
             FROM events e JOIN entities n ON n.id = e.entity_id JOIN deliveries d ON d.event_seq = e.seq
             WHERE e.event_id = ?1",
            [id.as_str()],
            |r| r.get(0),
        );
        eprintln!("  {id}: {row:?}");
    }
    let log = agent.log();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    eprintln!(
        "agent log, last lines:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    let keep = std::env::temp_dir().join(format!("store-outbox-crash-loop-{}", std::process::id()));
    if std::fs::create_dir_all(&keep).is_ok() {
        let db = agent.db();
        for suffix in ["", "-wal"] {
            let from = PathBuf::from(format!("{}{suffix}", db.display()));
            let _ = std::fs::copy(&from, keep.join(format!("outbox.db{suffix}")));
        }
        let _ = std::fs::write(keep.join("agent.log"), &log);
        eprintln!("database and log copied to {}", keep.display());
    }
}
