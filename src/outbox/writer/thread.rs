//! The writer thread: the only write connection, the batches of requests it
//! applies in one transaction, what each answers once committed, and what a
//! failed batch answers; room-making at the storage cap.

use std::sync::Arc;

use rusqlite::{Connection, ErrorCode as SqliteCode};
use tokio::sync::mpsc;

use super::fanout::Fanout;
use super::grouping;
use super::handoff::Flow;
use super::request::{Applying, WriteOp};
use super::sql::{self, Effects};
use crate::config::SubscriptionConfig;
use crate::event::{ErrorCode, IngestError};
use crate::outbox::Subscription;

/// Delivered events deleted per transaction when an ingest finds the outbox
/// at its cap: small, so one commit stays short.
const ROOM_CHUNK: usize = 200;
/// At most this many such transactions per writer turn, so one turn never
/// stalls the queue for long (about 1,600 events, a few tens of ms).
const ROOM_CHUNKS: usize = 8;

/// Starts the thread on an open, migrated connection.
pub(super) fn spawn(
    conn: Connection,
    fanout: Vec<Fanout>,
    flow: Arc<Flow>,
    max_db_bytes: u64,
    storage_full: Arc<tokio::sync::Notify>,
    rx: mpsc::Receiver<WriteOp>,
) -> std::thread::JoinHandle<()> {
    let mut state = WriterState {
        conn,
        flow,
        fanout,
        max_db_bytes,
        full: false,
        disk_full: false,
        nothing_to_prune: false,
        storage_full,
    };
    std::thread::Builder::new()
        .name("outbox-writer".into())
        .spawn(move || state.run(rx))
        .expect("spawning the writer thread")
}

/// The writer thread's own state.
struct WriterState {
    /// The only write connection.
    conn: Connection,
    /// Counters shared with the schedulers ([`handoff`]).
    flow: Arc<Flow>,
    /// The configured subscriptions.
    fanout: Vec<Fanout>,
    /// `storage.max_db_bytes`.
    max_db_bytes: u64,
    /// Whether ingest is currently refused for lack of space.
    full: bool,
    /// Whether the last commit failed because the disk is full (logged once).
    disk_full: bool,
    /// The last [`WriterState::make_room`] found no delivered event to
    /// delete, and none was delivered since: ingest at the cap is refused
    /// without scanning the outbox again for every batch.
    nothing_to_prune: bool,
    /// Woken when ingest is refused, so the pruner makes room.
    storage_full: Arc<tokio::sync::Notify>,
}

fn storage_error(e: &rusqlite::Error) -> IngestError {
    match e.sqlite_error_code() {
        Some(SqliteCode::DiskFull) => IngestError::new(ErrorCode::StorageFull, "the disk holding the outbox is full"),
        _ => IngestError::new(ErrorCode::Internal, format!("storage error: {e}")),
    }
}

impl WriterState {
    fn run(&mut self, mut rx: mpsc::Receiver<WriteOp>) {
        while let Some(batch) = grouping::next_batch(&mut rx, &self.flow) {
            self.process(batch);
        }
        // All senders are gone: the agent is stopping. Fold the WAL back so
        // the file is compact for a copy or an upgrade.
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    }

    fn process(&mut self, mut batch: Vec<WriteOp>) {
        // A reconfiguration runs alone: what was queued before it is fanned
        // out with the old subscriptions, what came after with the new.
        if let Some(at) = batch.iter().position(|op| op.runs_alone()) {
            let after = batch.split_off(at + 1);
            if let Some(alone) = batch.pop() {
                if !batch.is_empty() {
                    self.process(batch);
                }
                alone.run_alone(&mut |configs| self.reconfigure(configs));
            }
            if !after.is_empty() {
                self.process(after);
            }
            return;
        }
        let ingests = batch.iter().any(|op| op.brings_events());
        let full = ingests && self.over_cap() && !self.make_room();
        if ingests && full != self.full {
            self.full = full;
            if full {
                tracing::warn!(
                    max_db_bytes = self.max_db_bytes,
                    "outbox is full (storage.max_db_bytes): new events are refused with storage_full until room is made"
                );
            } else {
                tracing::info!("outbox has room again: taking new events");
            }
        }
        if full {
            self.storage_full.notify_one();
        }
        match self.apply_all(&mut batch, full) {
            Ok(effects) => {
                self.set_disk_full(false);
                self.finish(batch, effects)
            }
            Err(e) if e.sqlite_error_code() == Some(SqliteCode::DiskFull) => {
                // Every request would fail the same way: answer them all now.
                self.set_disk_full(true);
                self.fail(batch, &e);
                // The WAL only grows between checkpoints: fold what it holds
                // into the main file (PASSIVE: never waits for readers), so
                // the next commit can write it again from its beginning, which
                // often makes room by itself. Then let the pruner make more.
                if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
                    tracing::debug!(error = %e, "checkpoint on a full disk failed");
                }
                self.storage_full.notify_one();
            }
            Err(e) => {
                // Something in the batch failed: retry each request on its own
                // so one failure cannot take the others down with it.
                tracing::warn!(error = %e, requests = batch.len(), "batch failed, retrying requests one by one");
                for op in batch {
                    let mut one = vec![op];
                    match self.apply_all(&mut one, full) {
                        Ok(effects) => self.finish(one, effects),
                        Err(e) => self.fail(one, &e),
                    }
                }
            }
        }
    }

    /// Registers a reloaded list of subscriptions and fans out to it from
    /// now on.
    fn reconfigure(&mut self, configs: &[SubscriptionConfig]) -> Result<Vec<Subscription>, String> {
        let running: Vec<Subscription> = self
            .fanout
            .iter()
            .map(|f| Subscription {
                id: f.id,
                config: f.config.clone(),
                inbox: f.inbox.clone(),
            })
            .collect();
        let subs = crate::outbox::reconfigure_subscriptions(&mut self.conn, &running, configs).map_err(|e| {
            tracing::error!(error = %e, "could not record the reloaded subscriptions");
            format!("cannot record the subscriptions: {e}")
        })?;
        self.fanout = subs.iter().map(Fanout::of).collect();
        Ok(subs)
    }

    /// Whether the database's used size reached `storage.max_db_bytes`.
    fn over_cap(&self) -> bool {
        crate::outbox::read::used_bytes(&self.conn).unwrap_or(0) >= self.max_db_bytes
    }

    /// The outbox is at its cap and a batch brings events: deletes delivered
    /// events, oldest first, in short transactions of [`ROOM_CHUNK`] events
    /// right before the batch, until the cap is kept. The contract lets
    /// delivered events go before a new one is refused, so the refusal must
    /// not wait for the pruner task. Returns whether the batch may be
    /// stored: true once under the cap, and also when the turn's budget
    /// ([`ROOM_CHUNKS`]) ran out with delivered events still left (the cap
    /// is checked per batch, so it may be passed by one batch; the next turn
    /// and the woken pruner go on deleting). False only when nothing
    /// delivered is left, or the deletion itself failed.
    fn make_room(&mut self) -> bool {
        if self.nothing_to_prune {
            return false;
        }
        let mut pruned = 0;
        for _ in 0..ROOM_CHUNKS {
            let chunk = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .and_then(|tx| {
                    let n = sql::prune(&tx, None, ROOM_CHUNK)?;
                    tx.commit()?;
                    Ok(n)
                });
            let n = match chunk {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "could not prune delivered events to make room");
                    return false;
                }
            };
            pruned += n;
            // Freed pages go to the freelist at once, so the used size
            // drops as soon as whole pages are empty.
            if !self.over_cap() {
                // Debug: at the cap this happens on every ingest batch.
                tracing::debug!(
                    events = pruned,
                    "outbox at storage.max_db_bytes: pruned delivered events to make room"
                );
                return true;
            }
            if n < ROOM_CHUNK {
                // Nothing delivered is left: refuse, and do not look again
                // before something is delivered.
                self.nothing_to_prune = true;
                return false;
            }
        }
        tracing::info!(
            events = pruned,
            "outbox at storage.max_db_bytes: pruned delivered events, more go in the next turns"
        );
        self.storage_full.notify_one();
        true
    }

    /// Logs a change of the disk-full state once, not once per batch.
    fn set_disk_full(&mut self, disk_full: bool) {
        if disk_full != self.disk_full {
            self.disk_full = disk_full;
            if disk_full {
                tracing::error!("the disk holding the outbox is full: new events are refused with storage_full and delivery outcomes cannot be recorded until space is freed");
            } else {
                tracing::info!("the outbox takes writes again after a full disk");
            }
        }
    }

    /// Runs the whole batch in one transaction and commits it; each request
    /// keeps its own answer. On an error nothing is committed and the
    /// answers are not sent.
    fn apply_all(&mut self, batch: &mut [WriteOp], full: bool) -> rusqlite::Result<Effects> {
        let mut effects = Effects::default();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut at = Applying {
            tx: &tx,
            fanout: &self.fanout,
            effects: &mut effects,
            full,
            max_db_bytes: self.max_db_bytes,
        };
        for op in batch.iter_mut() {
            op.apply(&mut at)?;
        }
        let sub_ids: Vec<i64> = self.fanout.iter().map(|f| f.id).collect();
        sql::add_totals(&tx, &effects, &sub_ids)?;
        tx.commit()?;
        Ok(effects)
    }

    /// Sends the answers of a committed batch and wakes the schedulers.
    fn finish(&mut self, batch: Vec<WriteOp>, effects: Effects) {
        // A committed delivery may have made an event prunable.
        if !effects.delivered_by_sub.is_empty() {
            self.nothing_to_prune = false;
            // Refusing for lack of room: the pruner makes it now, so that
            // `status` stops saying full once the backlog drained, not at
            // its next round a minute later.
            if self.full {
                self.storage_full.notify_one();
            }
        }
        for op in batch {
            op.answer();
        }
        let mut per_sub: Vec<Vec<(i64, i64, i64)>> = vec![Vec::new(); self.fanout.len()];
        for (index, entity, seq, entity_seq) in effects.touched {
            per_sub[index].push((entity, seq, entity_seq));
        }
        for (fan, entities) in self.fanout.iter().zip(per_sub) {
            if !entities.is_empty() {
                fan.inbox.push(entities);
            }
        }
    }

    /// Answers requests that could not be committed.
    fn fail(&self, batch: Vec<WriteOp>, e: &rusqlite::Error) {
        let err = storage_error(e);
        if !self.disk_full {
            tracing::error!(error = %e, "could not commit to the outbox");
        }
        for op in batch {
            op.fail(&err);
        }
    }
}
