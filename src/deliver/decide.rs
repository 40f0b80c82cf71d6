//! The scheduler's decisions as plain functions: what an answer means for
//! the delivery, the entity and the subscription's link, and which entity
//! goes next. No I/O, no clock of their own (the caller passes `now` and the
//! jitter), so each rule is unit-tested below. How many requests may be on
//! the wire is `super::concurrency`'s.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use super::backoff;
use super::destination::{Answer, AnswerKind};
use crate::config::RetryConfig;
use crate::outbox::read::StoredEvent;
use crate::outbox::writer::Decision;

/// Failures in a row, of any kind, after which the endpoint counts as down
/// even if it keeps answering (a receiver that fails every request).
pub const FAILURES_BEFORE_OFFLINE: u32 = 5;
/// The longest pause after outcomes that could not be committed.
pub const STORAGE_PAUSE_MAX: Duration = Duration::from_secs(30);
/// No wait these rules compute is longer (ten years): an `Instant` or a
/// millisecond timestamp plus it cannot overflow, whatever the config or an
/// endpoint says.
pub const LONGEST_WAIT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// `now + wait`, never a panic: a wait past what an `Instant` holds is
/// [`LONGEST_WAIT`] (and if even that does not fit, `now`: at once rather
/// than never).
pub fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait.min(LONGEST_WAIT)).unwrap_or(now)
}

/// Milliseconds of `d` as stored (`i64`), at most [`LONGEST_WAIT`]'s.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.min(LONGEST_WAIT).as_millis()).unwrap_or(i64::MAX)
}

/// The wait an answer asks for, or the backoff after `failures` failures:
/// a `Retry-After` is clamped to `retry.max` (an endpoint cannot pause a
/// subscription longer than its own config allows); one asking for no wait
/// at all (`0`, a date in the past) counts as none, so a throttling endpoint
/// is never hammered without a backoff.
///
/// Jittered either way, so that a fleet of stores told the same thing does
/// not come back on the same second (contract: "A fleet against one
/// central"): the backoff's last half is random (equal jitter), and a
/// `Retry-After` R becomes a random moment in the last half of a pause of
/// 2R, between R and 2R: never before R and never past `retry.max` (a
/// Retry-After at `retry.max` or above is `retry.max` itself).
pub fn wait_after(answer: &Answer, retry: &RetryConfig, failures: u32, jitter: f64) -> Duration {
    match answer.retry_after.filter(|d| !d.is_zero()) {
        Some(asked) => {
            let asked = asked.min(retry.max).min(LONGEST_WAIT);
            let jitter = if jitter.is_nan() { 0.0 } else { jitter.clamp(0.0, 1.0) };
            let spread = Duration::try_from_secs_f64(asked.as_secs_f64() * jitter).unwrap_or_default();
            asked.saturating_add(spread).min(retry.max).min(LONGEST_WAIT)
        }
        None => backoff::delay_with(retry, failures, jitter).min(LONGEST_WAIT),
    }
}

/// A place in an entity's order. `seq` and `entity_seq` grow together within
/// an entity, so either orders it; `seq` also orders entities by age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Global ingest order.
    pub seq: i64,
    /// Order within the entity.
    pub entity_seq: i64,
}

impl Position {
    /// Where a stored event stands in its entity.
    pub fn of(event: &StoredEvent) -> Self {
        Position {
            seq: event.seq,
            entity_seq: event.entity_seq,
        }
    }

    /// Where an entity goes on from after `self`: here, or back at an
    /// earlier event a resend reopened meanwhile (`rewind`).
    pub fn or_earlier(self, rewind: Option<Position>) -> Self {
        rewind.map_or(self, |r| r.min(self))
    }

    /// A lower bound of the entity's next event.
    pub fn next(self) -> Self {
        Position {
            seq: self.seq.saturating_add(1),
            entity_seq: self.entity_seq.saturating_add(1),
        }
    }
}

/// What an attempt's answer means for its delivery: the state to record and
/// how long the entity waits before its next attempt (computed once, with
/// one jitter draw, for both the stored `next_attempt_at` and the timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The state the delivery moves to.
    pub decision: Decision,
    /// The wait before the entity's next attempt (zero unless retried).
    pub wait: Duration,
}

/// Decides a delivery's next state after an answer. `attempts` counts this
/// one; `first_failed_at_ms` is the delivery's first failure, if any;
/// `jitter` is a draw in `[0, 1)`.
pub fn after_answer(
    answer: &Answer,
    attempts: i64,
    first_failed_at_ms: Option<i64>,
    at_ms: i64,
    retry: &RetryConfig,
    jitter: f64,
) -> Plan {
    match answer.kind {
        AnswerKind::Delivered => {
            return Plan {
                decision: Decision::Delivered,
                wait: Duration::ZERO,
            }
        }
        // Not this event's failure: it waits, unchanged, for the resume.
        AnswerKind::Gone => {
            return Plan {
                decision: Decision::Hold,
                wait: Duration::ZERO,
            }
        }
        AnswerKind::Unavailable | AnswerKind::Refused | AnswerKind::Throttled => {}
    }
    let failing_since = first_failed_at_ms.unwrap_or(at_ms);
    if let Some(limit) = retry.give_up_after {
        // Saturating: a `give_up_after` of millions of years must mean
        // "not yet", not wrap negative and park on the first failure.
        let limit_ms = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
        if at_ms.saturating_sub(failing_since) >= limit_ms {
            return Plan {
                decision: Decision::Park,
                wait: Duration::ZERO,
            };
        }
    }
    let failures = attempts.clamp(1, i64::from(u32::MAX)) as u32;
    let wait = wait_after(answer, retry, failures, jitter);
    Plan {
        decision: Decision::Retry {
            next_attempt_at_ms: at_ms.saturating_add(millis(wait)),
        },
        wait,
    }
}

/// Where an entity goes after its delivery's outcome was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityNext {
    /// Its next event (looked up from `from`) may go at `due`.
    Ready {
        /// When.
        due: Instant,
        /// The cursor its next event is looked up from.
        from: Position,
    },
    /// Its head is parked at `at`: nothing of it goes until a resend.
    Parked {
        /// The parked event.
        at: Position,
    },
}

/// Decides where an entity goes on from after the outcome of `sent` was
/// committed. `rewind` is an earlier event a resend reopened while the
/// request was in flight: the entity goes on from there.
pub fn entity_after(
    decision: Decision,
    wait: Duration,
    sent: Position,
    rewind: Option<Position>,
    now: Instant,
) -> EntityNext {
    match decision {
        // The next event of this entity is strictly later.
        Decision::Delivered => EntityNext::Ready {
            due: now,
            from: sent.next().or_earlier(rewind),
        },
        Decision::Park => match rewind {
            None => EntityNext::Parked { at: sent },
            // Parked, but a resend reopened an earlier event of the entity
            // meanwhile: that one goes first.
            Some(earlier) => EntityNext::Ready {
                due: now,
                from: earlier.min(sent),
            },
        },
        Decision::Retry { .. } => EntityNext::Ready {
            due: later(now, wait),
            from: sent.or_earlier(rewind),
        },
        // The same event again, once the subscription sends again (after
        // `wait`: zero for a 410, a storage pause for an unrecorded outcome).
        Decision::Hold => EntityNext::Ready {
            due: later(now, wait),
            from: sent.or_earlier(rewind),
        },
    }
}

/// How long a subscription pauses after `in_a_row` outcomes in a row could
/// not be committed: 1 s, doubling, at most [`STORAGE_PAUSE_MAX`]. Every
/// outcome fails the same way until the writer can commit again, so the
/// endpoint must not get a flood of repeats meanwhile.
pub fn storage_pause(in_a_row: u32) -> Duration {
    Duration::from_secs(1 << in_a_row.clamp(1, 6).saturating_sub(1)).min(STORAGE_PAUSE_MAX)
}

/// What changed for the whole subscription after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkChange {
    /// Nothing to tell.
    None,
    /// The endpoint is down: probing starts.
    WentOffline,
    /// A probe got through after this long offline: every waiting entity is
    /// due at once.
    CameBack {
        /// How long the subscription was offline.
        down_for: Duration,
    },
}

/// What the endpoint's word means for the whole subscription, taken in as
/// soon as an answer is in (before its outcome is committed), so no other
/// entity starts a request meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heeded {
    /// Nothing for the whole subscription.
    Nothing,
    /// A 429 or 503 starts a pause of every entity until then (requests
    /// already on the wire finish).
    Paused {
        /// The end of the pause.
        until: Instant,
    },
    /// The pause, already running, now lasts until then.
    PauseLonger {
        /// The end of the pause.
        until: Instant,
    },
    /// A 410: the subscription stops until resumed.
    WentGone,
}

/// The subscription's view of its endpoint: online, or offline and probed
/// one request at a time at the backoff pace; paused by a 429 or 503;
/// stopped by a 410.
#[derive(Debug, Clone)]
pub struct Link {
    /// Whether requests flow (false: probing).
    pub online: bool,
    /// Failures in a row (any kind), reset by a success.
    pub failures_in_a_row: u32,
    /// Failed probes in a row while offline, for the probe backoff.
    pub probe_failures: u32,
    /// No probe before this.
    pub next_probe_at: Instant,
    /// Since when it is offline.
    pub offline_since: Option<Instant>,
    /// No request of any entity starts before this (a 429 or 503).
    pub paused_until: Option<Instant>,
    /// 429 and 503 answers in a row, for the pause's backoff when they
    /// carry no `Retry-After`; reset by a success.
    pub throttles_in_a_row: u32,
    /// The endpoint answered 410 Gone: nothing is sent until resumed.
    pub gone: bool,
}

impl Link {
    /// Online, as a subscription starts.
    pub fn new(now: Instant) -> Self {
        Link {
            online: true,
            failures_in_a_row: 0,
            probe_failures: 0,
            next_probe_at: now,
            offline_since: None,
            paused_until: None,
            throttles_in_a_row: 0,
            gone: false,
        }
    }

    /// Takes in what an answer means for every entity, as soon as it is in:
    /// a 429 or 503 pauses them all until its `Retry-After` (clamped to
    /// `retry.max`) or the backoff of the throttles in a row without one; a
    /// 410 stops the subscription. A pause is only ever made longer by a
    /// later answer, never shorter, and never past `retry.max` from now.
    pub fn heed(&mut self, answer: &Answer, retry: &RetryConfig, jitter: f64, now: Instant) -> Heeded {
        match answer.kind {
            AnswerKind::Delivered => {
                self.throttles_in_a_row = 0;
                Heeded::Nothing
            }
            AnswerKind::Throttled => {
                self.throttles_in_a_row = self.throttles_in_a_row.saturating_add(1);
                let until = later(now, wait_after(answer, retry, self.throttles_in_a_row, jitter));
                match self.paused_until.filter(|p| *p > now) {
                    None => {
                        self.paused_until = Some(until);
                        Heeded::Paused { until }
                    }
                    Some(running) if until > running => {
                        self.paused_until = Some(until);
                        Heeded::PauseLonger { until }
                    }
                    Some(_) => Heeded::Nothing,
                }
            }
            AnswerKind::Gone if !self.gone => {
                self.gone = true;
                Heeded::WentGone
            }
            AnswerKind::Gone | AnswerKind::Unavailable | AnswerKind::Refused => Heeded::Nothing,
        }
    }

    /// The pause of a 429 or 503, while it lasts.
    pub fn paused_at(&self, now: Instant) -> Option<Instant> {
        self.paused_until.filter(|until| *until > now)
    }

    /// After `store-outbox resume` (or a changed config): online, every
    /// count reset, nothing paused.
    pub fn resume(&mut self, now: Instant) {
        *self = Link::new(now);
    }

    /// Takes an answer in; `was_probe` if it answered a probe.
    pub fn on_answer(
        &mut self,
        answer: &Answer,
        was_probe: bool,
        retry: &RetryConfig,
        jitter: f64,
        now: Instant,
    ) -> LinkChange {
        // A 410 is the endpoint's last word (`heed`), not a failure to count.
        if answer.kind == AnswerKind::Gone {
            return LinkChange::None;
        }
        if answer.kind == AnswerKind::Delivered {
            self.failures_in_a_row = 0;
            if self.online {
                return LinkChange::None;
            }
            let down_for = self
                .offline_since
                .map(|t| now.saturating_duration_since(t))
                .unwrap_or_default();
            self.online = true;
            self.probe_failures = 0;
            self.offline_since = None;
            return LinkChange::CameBack { down_for };
        }
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        let endpoint_down = matches!(answer.kind, AnswerKind::Unavailable | AnswerKind::Throttled)
            || self.failures_in_a_row >= FAILURES_BEFORE_OFFLINE;
        // While offline only a probe's answer moves the probe clock: an
        // answer to a request sent before the link went down says nothing new.
        if !endpoint_down || !(self.online || was_probe) {
            return LinkChange::None;
        }
        let mut change = LinkChange::None;
        if self.online {
            self.online = false;
            self.offline_since = Some(now);
            self.probe_failures = 0;
            change = LinkChange::WentOffline;
        }
        self.probe_failures = self.probe_failures.saturating_add(1);
        let wait = wait_after(answer, retry, self.probe_failures, jitter);
        self.next_probe_at = self.next_probe_at.max(later(now, wait));
        change
    }
}

/// A ready entity in the order it may go: (due, its head's `seq`, entity id).
pub type ReadyKey = (Instant, i64, i64);

/// Picks the entity to send next, if one may go now. Nothing while the
/// subscription is gone or paused by a 429/503. Online: the earliest due, if
/// a request slot is free. Offline: one probe at a time once `next_probe_at`
/// passed, with the oldest waiting event whatever its own backoff.
pub fn next_pick(
    ready: &BTreeSet<ReadyKey>,
    link: &Link,
    slot_free: bool,
    probe_in_flight: bool,
    now: Instant,
) -> Option<ReadyKey> {
    if !slot_free || link.gone || link.paused_at(now).is_some() {
        return None;
    }
    if link.online {
        return ready.first().copied().filter(|key| key.0 <= now);
    }
    if probe_in_flight || now < link.next_probe_at {
        return None;
    }
    ready.iter().min_by_key(|(_, seq, _)| *seq).copied()
}

/// When the scheduler should look again if nothing wakes it first.
/// `more_backlog`: the window has room and the backlog scan has more to
/// take in, so it goes on at once (unless paused). `paused_until` is the
/// storage pause; a 429/503's pause is the link's. Gone, only the resume
/// (seen at the periodic tick) or the backlog scan wakes it.
pub fn next_wake(
    ready: &BTreeSet<ReadyKey>,
    link: &Link,
    slot_free: bool,
    probe_in_flight: bool,
    paused_until: Option<Instant>,
    more_backlog: bool,
    now: Instant,
) -> Option<Instant> {
    let paused = match (paused_until.filter(|until| *until > now), link.paused_at(now)) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    if let Some(until) = paused.filter(|_| !link.gone || more_backlog) {
        return Some(until);
    }
    if more_backlog {
        return Some(now);
    }
    if !slot_free || link.gone {
        return None;
    }
    if link.online {
        ready.first().map(|(due, _, _)| *due)
    } else if probe_in_flight || ready.is_empty() {
        None
    } else {
        Some(link.next_probe_at)
    }
}

/// When a waiting subscription plans its next attempt, for people: while
/// offline the next probe; online, with nothing on the wire, the earliest
/// backoff of its entities. `None` while requests are out or something is
/// ready now.
pub fn planned_attempt(ready: &BTreeSet<ReadyKey>, link: &Link, in_flight: bool, now: Instant) -> Option<Instant> {
    if in_flight || ready.is_empty() || link.gone {
        return None;
    }
    let at = if link.online {
        ready.first().map(|(due, _, _)| *due)?
    } else {
        link.next_probe_at
    };
    let at = link.paused_at(now).map_or(at, |until| until.max(at));
    (at > now).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(give_up_after: Option<Duration>) -> RetryConfig {
        RetryConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            give_up_after,
        }
    }

    fn answer(kind: AnswerKind, retry_after: Option<Duration>) -> Answer {
        Answer {
            kind,
            status: None,
            error: (kind != AnswerKind::Delivered).then(|| "no".to_string()),
            retry_after,
        }
    }

    const fn at(seq: i64, entity_seq: i64) -> Position {
        Position { seq, entity_seq }
    }

    #[test]
    fn a_failure_is_retried_after_one_delay_used_for_both_the_record_and_the_timer() {
        let plan = after_answer(
            &answer(AnswerKind::Refused, None),
            3,
            Some(0),
            10_000,
            &retry(None),
            0.5,
        );
        // Third failure: base 4 s, equal jitter: 2 s + 0.5 * 2 s.
        assert_eq!(plan.wait, Duration::from_secs(3));
        assert_eq!(
            plan.decision,
            Decision::Retry {
                next_attempt_at_ms: 13_000
            }
        );
    }

    #[test]
    fn retry_after_wins_over_the_backoff() {
        let plan = after_answer(
            &answer(AnswerKind::Unavailable, Some(Duration::from_secs(120))),
            1,
            None,
            0,
            &retry(None),
            0.0,
        );
        assert_eq!(plan.wait, Duration::from_secs(120));
    }

    #[test]
    fn a_delivery_failing_past_give_up_after_is_parked_and_a_success_never_is() {
        let limit = Some(Duration::from_secs(60));
        let failing = answer(AnswerKind::Refused, None);
        assert_eq!(
            after_answer(&failing, 9, Some(0), 60_000, &retry(limit), 0.0).decision,
            Decision::Park
        );
        assert!(matches!(
            after_answer(&failing, 9, Some(0), 59_999, &retry(limit), 0.0).decision,
            Decision::Retry { .. }
        ));
        // The first failure starts the clock; a zero limit parks it at once.
        assert!(matches!(
            after_answer(&failing, 1, None, 59_999, &retry(Some(Duration::ZERO)), 0.0).decision,
            Decision::Park
        ));
        let ok = answer(AnswerKind::Delivered, None);
        assert_eq!(
            after_answer(&ok, 9, Some(0), 90_000, &retry(limit), 0.0).decision,
            Decision::Delivered
        );
    }

    #[test]
    fn after_a_delivery_the_entity_goes_on_after_the_event_or_back_to_a_resent_one() {
        let now = Instant::now();
        assert_eq!(
            entity_after(Decision::Delivered, Duration::ZERO, at(10, 4), None, now),
            EntityNext::Ready {
                due: now,
                from: at(11, 5)
            }
        );
        assert_eq!(
            entity_after(Decision::Delivered, Duration::ZERO, at(10, 4), Some(at(3, 2)), now),
            EntityNext::Ready {
                due: now,
                from: at(3, 2)
            }
        );
    }

    #[test]
    fn a_retry_waits_and_a_park_blocks_unless_a_resend_reopened_an_earlier_event() {
        let now = Instant::now();
        let retry = Decision::Retry { next_attempt_at_ms: 0 };
        assert_eq!(
            entity_after(retry, Duration::from_secs(4), at(10, 4), None, now),
            EntityNext::Ready {
                due: now + Duration::from_secs(4),
                from: at(10, 4)
            }
        );
        assert_eq!(
            entity_after(Decision::Park, Duration::ZERO, at(10, 4), None, now),
            EntityNext::Parked { at: at(10, 4) }
        );
        assert_eq!(
            entity_after(Decision::Park, Duration::ZERO, at(10, 4), Some(at(3, 2)), now),
            EntityNext::Ready {
                due: now,
                from: at(3, 2)
            }
        );
    }

    #[test]
    fn a_410_holds_the_delivery_as_it_was_and_never_parks_it() {
        let gone = answer(AnswerKind::Gone, None);
        let plan = after_answer(&gone, 9, Some(0), 90_000, &retry(Some(Duration::ZERO)), 0.0);
        assert_eq!(plan.decision, Decision::Hold);
        let now = Instant::now();
        assert_eq!(
            entity_after(Decision::Hold, plan.wait, at(10, 4), None, now),
            EntityNext::Ready {
                due: now,
                from: at(10, 4)
            }
        );
    }

    #[test]
    fn a_429_pauses_every_entity_until_retry_after_and_a_later_one_only_lengthens_it() {
        let now = Instant::now();
        let mut link = Link::new(now);
        let ready = BTreeSet::from([(now, 1, 1), (now, 2, 2)]);
        let throttled = answer(AnswerKind::Throttled, Some(Duration::from_secs(30)));
        let until = now + Duration::from_secs(30);
        assert_eq!(link.heed(&throttled, &retry(None), 0.0, now), Heeded::Paused { until });
        assert_eq!(next_pick(&ready, &link, true, false, now), None, "no entity goes");
        assert_eq!(next_wake(&ready, &link, true, false, None, false, now), Some(until));
        assert_eq!(planned_attempt(&ready, &link, false, now), Some(until));
        // An answer with a shorter Retry-After leaves the pause as it is.
        let shorter = answer(AnswerKind::Throttled, Some(Duration::from_secs(5)));
        assert_eq!(link.heed(&shorter, &retry(None), 0.0, now), Heeded::Nothing);
        let longer = answer(AnswerKind::Throttled, Some(Duration::from_secs(60)));
        assert_eq!(
            link.heed(&longer, &retry(None), 0.0, now),
            Heeded::PauseLonger {
                until: now + Duration::from_secs(60)
            }
        );
        // A success that was on the wire does not end the pause.
        assert_eq!(
            link.heed(&answer(AnswerKind::Delivered, None), &retry(None), 0.0, now),
            Heeded::Nothing
        );
        let after = now + Duration::from_secs(60);
        assert_eq!(next_pick(&ready, &link, true, false, after), Some((now, 1, 1)));
    }

    #[test]
    fn a_retry_after_resumes_at_a_random_moment_between_it_and_twice_it_never_past_retry_max() {
        let now = Instant::now();
        let throttled = |secs| answer(AnswerKind::Throttled, Some(Duration::from_secs(secs)));
        // retry.max is 300 s: 10 s becomes 10 s to 20 s, by the draw.
        for (draw, want) in [
            (0.0, 10_000),
            (0.5, 15_000),
            (0.999, 19_990),
            (f64::NAN, 10_000),
            (7.0, 20_000),
        ] {
            let wait = wait_after(&throttled(10), &retry(None), 1, draw);
            assert_eq!(wait, Duration::from_millis(want), "draw {draw}");
        }
        // Near retry.max the spread stops there; at or past it, retry.max.
        assert_eq!(
            wait_after(&throttled(200), &retry(None), 1, 0.999),
            Duration::from_secs(300)
        );
        assert_eq!(
            wait_after(&throttled(900), &retry(None), 1, 0.5),
            Duration::from_secs(300)
        );
        // A fleet's pauses for the same answer spread over all of it.
        let untils: Vec<Instant> = (0..100)
            .map(|i| {
                let mut link = Link::new(now);
                link.heed(&throttled(10), &retry(None), f64::from(i) / 100.0, now);
                link.paused_at(now).expect("paused")
            })
            .collect();
        let (first, last) = (untils.iter().min().expect("some"), untils.iter().max().expect("some"));
        assert!(*first >= now + Duration::from_secs(10), "never before the Retry-After");
        assert!(*last - *first >= Duration::from_millis(9_800), "spread over 10 s");
    }

    #[test]
    fn a_huge_retry_after_pauses_no_longer_than_retry_max_and_never_panics() {
        let now = Instant::now();
        let max = Duration::from_secs(300);
        for asked in [
            Duration::from_secs(u64::MAX),
            Duration::MAX,
            Duration::from_secs(10_000_000_000),
        ] {
            let throttled = answer(AnswerKind::Throttled, Some(asked));
            let mut link = Link::new(now);
            assert_eq!(
                link.heed(&throttled, &retry(None), 0.0, now),
                Heeded::Paused { until: now + max },
                "{asked:?}"
            );
            // The probe clock and the delivery's own retry are clamped too.
            link.on_answer(&throttled, false, &retry(None), 0.0, now);
            assert_eq!(link.next_probe_at, now + max);
            let plan = after_answer(&throttled, 1, None, 1_000, &retry(None), 0.0);
            assert_eq!(plan.wait, max);
            assert_eq!(
                plan.decision,
                Decision::Retry {
                    next_attempt_at_ms: 301_000
                }
            );
            assert_eq!(
                entity_after(plan.decision, plan.wait, at(1, 1), None, now),
                EntityNext::Ready {
                    due: now + max,
                    from: at(1, 1)
                }
            );
        }
        // A Retry-After asking for no wait (0, a date in the past) is no
        // Retry-After: the backoff of the throttles in a row.
        let mut link = Link::new(now);
        let zero = answer(AnswerKind::Throttled, Some(Duration::ZERO));
        assert_eq!(
            link.heed(&zero, &retry(None), 0.0, now),
            Heeded::Paused {
                until: now + Duration::from_secs(1)
            }
        );
        assert_eq!(
            after_answer(&zero, 3, None, 0, &retry(None), 0.0).wait,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn extreme_config_durations_never_overflow_an_instant_or_a_timestamp() {
        let now = Instant::now();
        let endless = RetryConfig {
            initial: Duration::from_secs(1),
            max: Duration::MAX,
            give_up_after: Some(Duration::MAX),
        };
        let asked = answer(AnswerKind::Throttled, Some(Duration::MAX));
        let mut link = Link::new(now);
        assert_eq!(
            link.heed(&asked, &endless, 0.0, now),
            Heeded::Paused {
                until: now + LONGEST_WAIT
            }
        );
        link.on_answer(&asked, false, &endless, 0.0, now);
        assert_eq!(link.next_probe_at, now + LONGEST_WAIT);
        let failing = answer(AnswerKind::Refused, None);
        let plan = after_answer(&failing, i64::MAX, Some(0), 1_000, &endless, 0.999);
        assert_eq!(plan.wait, LONGEST_WAIT);
        assert_eq!(
            plan.decision,
            Decision::Retry {
                next_attempt_at_ms: 1_000 + LONGEST_WAIT.as_millis() as i64
            },
            "a give_up_after of ~584 billion years does not wrap into parking"
        );
        let late = after_answer(&failing, 1, Some(i64::MAX - 10), i64::MAX - 5, &endless, 0.0);
        assert_eq!(
            late.decision,
            Decision::Retry {
                next_attempt_at_ms: i64::MAX
            },
            "saturates"
        );
        // `give_up_after = "300000000years"` (past i64 milliseconds): not
        // parked on the first failure.
        let years = RetryConfig {
            give_up_after: Some(Duration::from_secs(300_000_000 * 365 * 24 * 3600)),
            ..retry(None)
        };
        assert!(matches!(
            after_answer(&failing, 1, None, 1_000, &years, 0.0).decision,
            Decision::Retry { .. }
        ));
        for wait in [Duration::MAX, LONGEST_WAIT, Duration::from_secs(u64::MAX)] {
            assert!(matches!(
                entity_after(Decision::Hold, wait, at(1, 1), None, now),
                EntityNext::Ready { due, .. } if due == now + LONGEST_WAIT
            ));
        }
        assert_eq!(later(now, Duration::MAX), now + LONGEST_WAIT);
    }

    #[test]
    fn a_503_without_retry_after_pauses_for_the_backoff_of_throttles_in_a_row() {
        let now = Instant::now();
        let mut link = Link::new(now);
        let throttled = answer(AnswerKind::Throttled, None);
        // Equal jitter with a draw of 0: half the doubling base, never below 1 s.
        for (n, secs) in [(1, 1), (2, 1), (3, 2), (4, 4)] {
            let t = now + Duration::from_secs(100 * n);
            assert_eq!(
                link.heed(&throttled, &retry(None), 0.0, t),
                Heeded::Paused {
                    until: t + Duration::from_secs(secs)
                },
                "throttle {n}"
            );
        }
        // It also takes the link offline: after the pause, one probe first.
        assert_eq!(
            link.on_answer(&throttled, false, &retry(None), 0.0, now),
            LinkChange::WentOffline
        );
        link.heed(&answer(AnswerKind::Delivered, None), &retry(None), 0.0, now);
        assert_eq!(link.throttles_in_a_row, 0);
    }

    #[test]
    fn a_410_stops_the_subscription_until_resumed_and_counts_no_failure() {
        let now = Instant::now();
        let mut link = Link::new(now);
        let ready = BTreeSet::from([(now, 1, 1)]);
        let gone = answer(AnswerKind::Gone, None);
        assert_eq!(link.heed(&gone, &retry(None), 0.0, now), Heeded::WentGone);
        assert_eq!(link.heed(&gone, &retry(None), 0.0, now), Heeded::Nothing, "once");
        assert_eq!(link.on_answer(&gone, false, &retry(None), 0.0, now), LinkChange::None);
        assert_eq!(link.failures_in_a_row, 0);
        assert!(link.online, "gone is not offline: nothing is probed");
        assert_eq!(next_pick(&ready, &link, true, false, now), None);
        assert_eq!(next_wake(&ready, &link, true, false, None, false, now), None);
        assert_eq!(planned_attempt(&ready, &link, false, now), None);
        link.resume(now);
        assert_eq!(next_pick(&ready, &link, true, false, now), Some((now, 1, 1)));
    }

    /// Feeds `rounds` windows of saturated answers taking `rtt` each.
    #[test]
    fn storage_pauses_double_from_one_second_to_thirty() {
        let secs: Vec<u64> = (1..=8).map(|n| storage_pause(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn an_unreachable_endpoint_takes_the_link_offline_and_a_success_brings_it_back() {
        let start = Instant::now();
        let mut link = Link::new(start);
        let down = answer(AnswerKind::Unavailable, None);
        assert_eq!(
            link.on_answer(&down, false, &retry(None), 0.0, start),
            LinkChange::WentOffline
        );
        assert!(!link.online);
        // First probe failure: 1 s (equal jitter never below `initial`).
        assert_eq!(link.next_probe_at, start + Duration::from_secs(1));
        let later = start + Duration::from_secs(1);
        assert_eq!(link.on_answer(&down, true, &retry(None), 0.0, later), LinkChange::None);
        assert_eq!(link.probe_failures, 2);
        assert_eq!(link.next_probe_at, later + Duration::from_secs(1));
        let back = start + Duration::from_secs(30);
        assert_eq!(
            link.on_answer(&answer(AnswerKind::Delivered, None), true, &retry(None), 0.0, back),
            LinkChange::CameBack {
                down_for: Duration::from_secs(30)
            }
        );
        assert!(link.online);
        assert_eq!(link.probe_failures, 0);
    }

    #[test]
    fn refusals_take_the_link_down_only_after_five_in_a_row() {
        let now = Instant::now();
        let mut link = Link::new(now);
        let refused = answer(AnswerKind::Refused, None);
        for _ in 1..FAILURES_BEFORE_OFFLINE {
            assert_eq!(
                link.on_answer(&refused, false, &retry(None), 0.0, now),
                LinkChange::None
            );
        }
        assert_eq!(
            link.on_answer(&refused, false, &retry(None), 0.0, now),
            LinkChange::WentOffline
        );
    }

    #[test]
    fn while_offline_only_a_probe_moves_the_probe_clock() {
        let now = Instant::now();
        let mut link = Link::new(now);
        let down = answer(AnswerKind::Unavailable, Some(Duration::from_secs(10)));
        link.on_answer(&down, false, &retry(None), 0.0, now);
        let planned = link.next_probe_at;
        // A request sent before the link went down answers late.
        link.on_answer(&down, false, &retry(None), 0.0, now + Duration::from_secs(5));
        assert_eq!(link.next_probe_at, planned);
        assert_eq!(link.probe_failures, 1);
    }

    #[test]
    fn online_the_earliest_due_goes_when_a_slot_is_free() {
        let now = Instant::now();
        let link = Link::new(now);
        let mut ready = BTreeSet::new();
        ready.insert((now + Duration::from_secs(5), 1, 100));
        ready.insert((now, 9, 200));
        assert_eq!(next_pick(&ready, &link, true, false, now), Some((now, 9, 200)));
        assert_eq!(next_pick(&ready, &link, false, false, now), None, "no slot");
        ready.remove(&(now, 9, 200));
        assert_eq!(next_pick(&ready, &link, true, false, now), None, "not due yet");
        assert_eq!(
            next_wake(&ready, &link, true, false, None, false, now),
            Some(now + Duration::from_secs(5))
        );
    }

    #[test]
    fn offline_one_probe_at_a_time_with_the_oldest_event_once_the_probe_is_due() {
        let now = Instant::now();
        let mut link = Link::new(now);
        link.online = false;
        link.next_probe_at = now + Duration::from_secs(2);
        let mut ready = BTreeSet::new();
        ready.insert((now, 9, 200));
        ready.insert((now + Duration::from_secs(60), 1, 100));
        assert_eq!(next_pick(&ready, &link, true, false, now), None, "probe not due");
        assert_eq!(
            next_wake(&ready, &link, true, false, None, false, now),
            Some(link.next_probe_at)
        );
        let later = now + Duration::from_secs(2);
        assert_eq!(
            next_pick(&ready, &link, true, false, later),
            Some((now + Duration::from_secs(60), 1, 100)),
            "the oldest event, whatever its own backoff"
        );
        assert_eq!(next_pick(&ready, &link, true, true, later), None, "a probe is out");
    }

    #[test]
    fn a_storage_pause_is_the_next_wake() {
        let now = Instant::now();
        let link = Link::new(now);
        let ready = BTreeSet::from([(now, 1, 1)]);
        let until = now + Duration::from_secs(3);
        assert_eq!(
            next_wake(&ready, &link, true, false, Some(until), true, now),
            Some(until)
        );
    }

    #[test]
    fn more_backlog_to_scan_is_taken_in_at_once_when_not_paused() {
        let now = Instant::now();
        let link = Link::new(now);
        let ready = BTreeSet::from([(now + Duration::from_secs(9), 1, 1)]);
        assert_eq!(next_wake(&ready, &link, false, false, None, true, now), Some(now));
        assert_eq!(
            next_wake(&ready, &link, false, false, None, false, now),
            None,
            "no slot"
        );
        let over = Some(now);
        assert_eq!(
            next_wake(&ready, &link, false, false, over, true, now),
            Some(now),
            "pause over"
        );
    }

    #[test]
    fn the_planned_attempt_is_the_next_probe_offline_and_the_first_backoff_online() {
        let now = Instant::now();
        let mut link = Link::new(now);
        let later = now + Duration::from_secs(40);
        let ready = BTreeSet::from([(later, 1, 1)]);
        assert_eq!(planned_attempt(&ready, &link, false, now), Some(later));
        assert_eq!(planned_attempt(&ready, &link, true, now), None, "requests are out");
        assert_eq!(
            planned_attempt(&BTreeSet::new(), &link, false, now),
            None,
            "nothing waits"
        );
        link.online = false;
        link.next_probe_at = now + Duration::from_secs(8);
        assert_eq!(planned_attempt(&ready, &link, false, now), Some(link.next_probe_at));
        link.next_probe_at = now;
        assert_eq!(planned_attempt(&ready, &link, false, now), None, "due now");
    }
}
