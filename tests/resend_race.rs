//! A resend that races a request in flight (found while writing the model
//! test): an operator resends an event while a request for it is on the wire,
//! and that request's outcome is committed after the resend. The outcome must
//! not undo the resend: the attempt is recorded, the delivery stays pending,
//! and the scheduler sends the event again.
//!
//! Driven through the library on a real database, with the writer thread and
//! `outbox::resend` exactly as the agent and `store-outbox resend` use them;
//! the interleaving is forced, which a test through the process cannot do.

mod common;

use store_outbox::event::Reply;
use store_outbox::outbox::read;
use store_outbox::outbox::resend::{resend, ResendRequest};
use store_outbox::outbox::writer::Decision;

fn state_of(db: &std::path::Path, seq: i64) -> (i64, i64, i64) {
    let conn = rusqlite::Connection::open(db).expect("open");
    conn.query_row(
        "SELECT state, resends, (SELECT COUNT(*) FROM attempts WHERE event_seq = ?1) FROM deliveries WHERE event_seq = ?1",
        [seq],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .expect("delivery row")
}

#[test]
fn an_outcome_committed_after_a_resend_does_not_undo_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, sub_id, writer, thread) =
        common::library_outbox(dir.path(), r#"retry = { give_up_after = "0s" }"#).into_parts();
    let reader = store_outbox::outbox::open_reader(&db).expect("reader");
    let rt = common::current_thread_runtime();
    let record = |seq: i64, resends: i64, status: u16, decision: Decision| {
        rt.block_on(writer.record_and_wait(common::outcome(sub_id, seq, status, decision, resends), None))
            .expect("record");
    };

    let replies = rt.block_on(writer.ingest(vec![
        common::new_event("race-1", "till:01"),
        common::new_event("race-2", "till:01"),
    ]));
    assert!(
        replies.iter().all(|r| matches!(r, Reply::Accepted { .. })),
        "{replies:?}"
    );
    let entity: i64 = rusqlite::Connection::open(&db)
        .expect("open")
        .query_row("SELECT id FROM entities WHERE entity = 'till:01'", [], |r| r.get(0))
        .expect("entity");
    let resend_now = |id: &str| {
        let mut conn = rusqlite::Connection::open(&db).expect("open");
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .expect("busy timeout");
        let out = resend(
            &mut conn,
            &ResendRequest {
                event_ids: vec![id.into()],
                parked: false,
                subscription: None,
                since_ms: None,
            },
        )
        .expect("resend");
        assert_eq!(out.queued, 1);
    };

    // The request for `id` is on the wire, the operator resends `id`, then
    // the request's outcome (`status`, `decision`) is committed: it must count
    // as an attempt and change nothing. The event goes again (before any
    // later one), and that attempt's same outcome applies; `then` is the
    // state it leaves.
    let race = |id: &str, status: u16, decision: Decision, then: i64| {
        let head = read::head(&reader, sub_id, entity, 0)
            .expect("head")
            .expect("an open event");
        assert_eq!(head.event.event_id, id);
        resend_now(id);
        record(head.event.seq, head.resends, status, decision);
        assert_eq!(
            state_of(&db, head.event.seq),
            (0, 1, 1),
            "{id}: still pending after a stale {status}, the attempt kept"
        );
        let again = read::head(&reader, sub_id, entity, 0).expect("head").expect("open");
        assert_eq!(
            again.event.event_id, id,
            "the resent event goes again, before later ones"
        );
        record(again.event.seq, again.resends, status, decision);
        assert_eq!(
            state_of(&db, again.event.seq).0,
            then,
            "{id}: the new attempt's {status} counts"
        );
    };
    // 1. A 2xx on the wire, the resend lands before its outcome's commit.
    race("race-1", 200, Decision::Delivered, 1);
    // 2. A failure on the wire that would park (give_up_after = 0): the
    //    stale failure must not park it; without a race, it parks.
    race("race-2", 500, Decision::Park, 2);
    println!("resend race: a stale 2xx and a stale park after a resend were recorded as attempts and changed nothing");

    drop(writer);
    thread.join().expect("writer thread");
}
