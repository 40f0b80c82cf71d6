//! Batches (`batch = { max_events, max_bytes, linger }`): the rules that
//! say when one is formed and what fits in it, and its id. Plain functions,
//! no I/O and no clock of their own, unit-tested below; the scheduler holds
//! the batches and sends them.
//!
//! The order rule they keep, with the scheduler: an entity's events in a
//! batch are consecutive, in `entity_seq` order, and an entity is in at most
//! one batch at a time; its next events are looked up only after that
//! batch's outcome is committed. So event n+1 goes in the same batch as n
//! (after it), or in a batch sent after n's batch got its 2xx.

use std::time::Duration;

use sha2::Digest;
use tokio::time::Instant;

use super::decide::Link;
use crate::config::BatchConfig;

/// Whether a new batch may be formed now, or when to look again: at once
/// when it will be full, because enough entities are ready to fill it (each
/// brings at least one event) or one of them is `backlogged` (its last
/// batch filled up before its events ran out: a backlog being drained),
/// else once the entity that became ready first has waited `linger` for
/// company.
pub fn may_form(
    first_ready_at: Instant,
    ready_now: usize,
    backlogged: bool,
    config: &BatchConfig,
    now: Instant,
) -> Result<(), Instant> {
    let until = first_ready_at + config.linger;
    if backlogged || ready_now >= config.max_events || now >= until {
        Ok(())
    } else {
        Err(until)
    }
}

/// Whether one more event of `event_bytes` fits in a batch that holds
/// `events` events in `bytes` bytes. The first event always fits (an event
/// larger than `max_bytes` goes alone).
pub fn fits(events: usize, bytes: u64, event_bytes: u64, config: &BatchConfig) -> bool {
    events == 0 || (events < config.max_events && bytes.saturating_add(event_bytes) <= config.max_bytes)
}

/// A batch's `webhook-id`: `batch~` and 32 hex digits of a digest of the
/// subscription and its events' ids, in order. The same events in the same
/// order always get the same id (so a retry keeps it, even one formed again
/// after a restart), and no event id can be one: `~` is not in the event id
/// alphabet (`[A-Za-z0-9._:-]`); it is safe in URLs and headers.
pub fn batch_id<'a>(subscription: &str, event_ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut digest = sha2::Sha256::new();
    digest.update(subscription.as_bytes());
    for id in event_ids {
        digest.update(b"\n");
        digest.update(id.as_bytes());
    }
    let hex: String = digest.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("batch~{hex}")
}

/// When a batch waiting for its retry (due the earliest at `earliest_due`)
/// next needs a look: online at its due time, offline at the next probe,
/// never before a 429/503's pause ends; `None` while gone, while no request
/// may start, or while the probe is out.
pub fn held_wake(
    earliest_due: Option<Instant>,
    link: &Link,
    slot_free: bool,
    probe_in_flight: bool,
    now: Instant,
) -> Option<Instant> {
    let due = earliest_due?;
    if link.gone || !slot_free || (!link.online && probe_in_flight) {
        return None;
    }
    let at = if link.online { due } else { link.next_probe_at };
    Some(link.paused_at(now).map_or(at, |until| until.max(at)))
}

/// Whether a batch waiting for its retry may go now: online once due,
/// offline as the probe (once the probe is due, whatever its own backoff).
pub fn held_may_go(due: Instant, link: &Link, probe_in_flight: bool, now: Instant) -> bool {
    if link.gone || link.paused_at(now).is_some() {
        return false;
    }
    if link.online {
        due <= now
    } else {
        !probe_in_flight && now >= link.next_probe_at
    }
}

/// The default `linger`, for people reading the config's documentation.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(20);

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BatchConfig {
        BatchConfig {
            max_events: 3,
            max_bytes: 1000,
            linger: Duration::from_millis(20),
        }
    }

    #[test]
    fn a_batch_forms_at_once_when_full_enough_else_after_linger() {
        let now = Instant::now();
        assert_eq!(
            may_form(now, 3, false, &config(), now),
            Ok(()),
            "enough entities to fill it"
        );
        assert_eq!(
            may_form(now, 1, false, &config(), now),
            Err(now + Duration::from_millis(20))
        );
        assert_eq!(
            may_form(now, 1, true, &config(), now),
            Ok(()),
            "a backlogged entity fills it"
        );
        let later = now + Duration::from_millis(20);
        assert_eq!(
            may_form(now, 1, false, &config(), later),
            Ok(()),
            "lingered long enough"
        );
    }

    #[test]
    fn events_fit_by_count_and_bytes_and_the_first_always_fits() {
        assert!(fits(0, 0, 5_000, &config()), "an oversized event goes alone");
        assert!(fits(1, 400, 600, &config()));
        assert!(!fits(1, 401, 600, &config()), "over max_bytes");
        assert!(!fits(3, 10, 10, &config()), "over max_events");
    }

    #[test]
    fn the_id_depends_on_the_events_and_their_order_and_is_no_event_id() {
        let a = batch_id("erp", ["e-1", "e-2"]);
        assert_eq!(a, batch_id("erp", ["e-1", "e-2"]), "stable");
        assert_ne!(a, batch_id("erp", ["e-2", "e-1"]), "order matters");
        assert_ne!(a, batch_id("erp", ["e-1"]), "composition matters");
        assert_ne!(a, batch_id("oms", ["e-1", "e-2"]), "per subscription");
        assert!(a.starts_with("batch~") && a.len() == 38, "{a}");
        let as_event = format!(r#"{{"event_id":"{a}","type":"T","entity":"e","payload":1}}"#);
        assert!(crate::event::parse_event(as_event.as_bytes(), 1 << 20).is_err(), "{a}");
    }

    #[test]
    fn a_held_batch_goes_when_due_online_and_as_the_probe_offline() {
        let now = Instant::now();
        let mut link = Link::new(now);
        let later = now + Duration::from_secs(2);
        assert!(!held_may_go(later, &link, false, now));
        assert!(held_may_go(later, &link, false, later));
        assert_eq!(held_wake(Some(later), &link, true, false, now), Some(later));
        link.online = false;
        link.next_probe_at = now + Duration::from_secs(5);
        assert!(!held_may_go(now, &link, false, later), "probe not due");
        assert!(held_may_go(
            now + Duration::from_secs(60),
            &link,
            false,
            now + Duration::from_secs(5)
        ));
        assert!(
            !held_may_go(now, &link, true, now + Duration::from_secs(5)),
            "a probe is out"
        );
        assert_eq!(held_wake(Some(now), &link, true, false, now), Some(link.next_probe_at));
        link.online = true;
        link.paused_until = Some(now + Duration::from_secs(9));
        assert!(!held_may_go(now, &link, false, now), "paused by a 429");
        assert_eq!(
            held_wake(Some(now), &link, true, false, now),
            Some(now + Duration::from_secs(9)),
            "never before the pause ends"
        );
        link.gone = true;
        assert_eq!(held_wake(Some(now), &link, true, false, now), None);
    }
}
