//! The writer groups delivery outcomes while requests are on the wire
//! (`writer::OUTCOME_GROUP_WAIT`). That wait must never hold anything for
//! good: a request that hangs (an endpoint that never answers, a long
//! timeout) keeps its count until it gives up, and meanwhile the outcomes of
//! other requests, ingest and the state of the database all go on.
//!
//! Driven through the library on a real database with the real writer
//! thread. Nothing here asserts on time; a wait that never ended would hang
//! the test (cargo flags a test that runs for over 60 s).

mod common;

use store_outbox::event::Reply;
use store_outbox::outbox::writer::{Decision, Outcome};

fn delivered(db: &std::path::Path) -> Vec<(i64, i64)> {
    let conn = rusqlite::Connection::open(db).expect("open");
    let mut stmt = conn
        .prepare("SELECT event_seq, state FROM deliveries ORDER BY event_seq")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    rows
}

/// A 2xx for event `seq`.
fn outcome(sub_id: i64, seq: i64) -> Outcome {
    common::outcome(sub_id, seq, 200, Decision::Delivered, 0)
}

#[test]
fn a_request_that_never_answers_holds_back_no_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, sub_id, writer, thread) = common::library_outbox(dir.path(), "").into_parts();
    let rt = common::multi_thread_runtime();
    let events: Vec<_> = (1..=40)
        .map(|i| common::new_event(&format!("ev-{i}"), &format!("till:{:02}", i % 8)))
        .collect();
    let replies = rt.block_on(writer.ingest(events));
    assert!(
        replies.iter().all(|r| matches!(r, Reply::Accepted { .. })),
        "{replies:?}"
    );

    // A request on the wire that will never report.
    let hung = writer.expect_outcome();

    // 1. One outcome, alone: committed although the hung request still counts.
    rt.block_on(writer.record_and_wait(outcome(sub_id, 1), Some(writer.expect_outcome())))
        .expect("recorded");
    assert_eq!(delivered(&db)[0], (1, 1), "committed while another request hangs");

    // 2. Many outcomes at once, as a drain produces them: every one is
    //    committed, each record returns only after its commit.
    let tasks: Vec<_> = (2..=30)
        .map(|seq| {
            let writer = writer.clone();
            let expected = writer.expect_outcome();
            rt.spawn(async move { writer.record_and_wait(outcome(sub_id, seq), Some(expected)).await })
        })
        .collect();
    for task in tasks {
        rt.block_on(task).expect("task").expect("recorded");
    }
    let states = delivered(&db);
    assert!(
        states.iter().take(30).all(|(_, state)| *state == 1),
        "outcomes 1-30 delivered: {states:?}"
    );
    assert!(
        states.iter().skip(30).all(|(_, state)| *state == 0),
        "31-40 untouched: {states:?}"
    );

    // 3. Ingest goes on meanwhile, and outcomes recorded without a count
    //    (a test, a tool) as well.
    let more = rt.block_on(writer.ingest(vec![common::new_event("late-1", "till:01")]));
    assert!(matches!(more[0], Reply::Accepted { .. }), "{more:?}");
    rt.block_on(writer.record_and_wait(outcome(sub_id, 31), None))
        .expect("recorded");

    // 4. Requests abandoned without an outcome (a shutdown aborting them)
    //    stop counting too: the hung one is dropped here.
    drop(hung);
    rt.block_on(writer.record_and_wait(outcome(sub_id, 32), Some(writer.expect_outcome())))
        .expect("recorded");
    let states = delivered(&db);
    assert_eq!(states.len(), 41);
    assert_eq!(states.iter().filter(|(_, state)| *state == 1).count(), 32, "{states:?}");

    drop(writer);
    thread.join().expect("writer thread");
}
