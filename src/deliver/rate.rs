//! `max_rate`: at most so many requests a second from one subscription, a
//! token bucket (contract: "A fleet against one central"). Central IT sets
//! it so that hundreds of stores draining at once stay within central's
//! capacity, whatever each store's concurrency. The bucket holds a tenth of
//! a second's worth (at least one request): a store never sends a burst
//! above its rate for longer than that.

use std::time::Duration;

// tokio's clock, the scheduler's (so a paused test clock drives it too).
use tokio::time::Instant;

/// How far under a whole token still counts as one (float rounding).
const ROUNDING: f64 = 1e-9;

/// The bucket of one subscription's scheduler.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// Requests per second.
    per_second: f64,
    /// Most tokens it holds.
    burst: f64,
    /// Tokens at `at`.
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// A full bucket of `per_second` requests a second (more than 0).
    pub fn new(per_second: f64, now: Instant) -> RateLimit {
        let burst = (per_second / 10.0).max(1.0);
        RateLimit {
            per_second,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Tokens at `now`.
    fn tokens_at(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * self.per_second).min(self.burst)
    }

    /// Whether a request may start at `now`. A hair under one token counts
    /// as one: at the moment `next_at` names, float rounding may leave the
    /// bucket at 0.999..., and waiting again for nothing would spin.
    pub fn may_send(&self, now: Instant) -> bool {
        self.tokens_at(now) >= 1.0 - ROUNDING
    }

    /// A request started at `now`.
    pub fn take(&mut self, now: Instant) {
        self.tokens = (self.tokens_at(now) - 1.0).max(-self.burst);
        self.at = now;
    }

    /// When the next request may start, if not at `now`.
    pub fn next_at(&self, now: Instant) -> Option<Instant> {
        if self.may_send(now) {
            return None;
        }
        let missing = 1.0 - self.tokens_at(now);
        // Rounded up, and never less than a microsecond: a wake-up before
        // the token is there would find the bucket still empty.
        let wait = Duration::try_from_secs_f64(missing / self.per_second)
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_micros(1))
            + Duration::from_nanos(1);
        Some(now.checked_add(wait).unwrap_or(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests a greedy sender gets through in `seconds` of virtual time.
    fn sent_in(rate: f64, seconds: u64) -> usize {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(rate, t0);
        let mut now = t0;
        let end = t0 + Duration::from_secs(seconds);
        let mut sent = 0;
        while now < end {
            if limit.may_send(now) {
                limit.take(now);
                sent += 1;
            } else {
                now = limit.next_at(now).expect("a next time when empty");
            }
        }
        sent
    }

    #[test]
    fn a_greedy_sender_gets_the_rate_and_at_most_a_tenth_of_a_second_more() {
        for (rate, seconds) in [(50.0, 10), (0.5, 20), (1.0, 10), (1000.0, 5), (3.3, 30)] {
            let sent = sent_in(rate, seconds) as f64;
            let want = rate * seconds as f64;
            let burst = (rate / 10.0).max(1.0);
            assert!(
                sent >= want.floor() && sent <= want + burst + 1.0,
                "rate {rate}: {sent} in {seconds} s"
            );
        }
    }

    #[test]
    fn the_bucket_refills_only_up_to_its_burst() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(50.0, t0);
        let later = t0 + Duration::from_secs(3600);
        let mut burst = 0;
        while limit.may_send(later) {
            limit.take(later);
            burst += 1;
        }
        assert_eq!(burst, 5, "a tenth of a second's worth after an hour idle");
        let next = limit.next_at(later).expect("empty");
        assert_eq!((next - later).as_micros(), 20_000, "a fiftieth of a second, rounded up");
    }
}
