//! Adaptive request concurrency (`concurrency = "adaptive"`): how many
//! requests a subscription keeps on the wire, learnt from its answers' round
//! trips and backpressure. Fixed concurrency (the default) is the same type
//! with a limit that never moves. The scheduler asks it before each request
//! and tells it every answer.

use std::time::Duration;

// tokio's clock, the scheduler's (so a paused test clock drives it too).
use tokio::time::Instant;

use super::destination::AnswerKind;

/// Adaptive request concurrency (`concurrency = "adaptive"`), after
/// Vector's ARC: additive increase, multiplicative decrease of the requests
/// a subscription keeps on the wire, between 1 and `max_in_flight`. Answers
/// are taken in windows of about one round trip; at the end of a window the
/// limit shrinks (×0.9) after any backpressure (429/503, timeouts, connection
/// errors) or when the window's mean round trip rose clearly above the
/// long-run mean, and grows by one when the limit was reached and the round
/// trip stayed flat. Fixed concurrency (the default) is a limit that stays at
/// `max_in_flight`.
#[derive(Debug, Clone)]
pub struct Concurrency {
    /// Whether it adapts; fixed: always `max`.
    adaptive: bool,
    /// The current limit.
    limit: usize,
    /// `max_in_flight`.
    max: usize,
    /// Long-run mean round trip (exponentially weighted), seconds.
    mean_rtt: Option<f64>,
    /// Long-run mean absolute deviation of the round trip, seconds.
    deviation: f64,
    /// The current window: since when, sum and count of its round trips.
    window_start: Instant,
    window_sum: f64,
    window_count: u32,
    /// Whether the window saw backpressure.
    window_backpressure: bool,
    /// Whether the limit was reached during the window (only then may it grow).
    window_saturated: bool,
}

/// The weight of a window's mean in the long-run mean.
const ARC_EWMA_ALPHA: f64 = 0.4;
/// A window's mean above `mean + ARC_DEVIATION_SCALE × deviation` counts as
/// rising latency.
const ARC_DEVIATION_SCALE: f64 = 2.5;
/// Multiplicative decrease.
const ARC_DECREASE: f64 = 0.9;

impl Concurrency {
    /// Fixed at `max`, or adaptive starting at 1.
    pub fn new(adaptive: bool, max: usize, now: Instant) -> Self {
        Concurrency {
            adaptive,
            limit: if adaptive { 1 } else { max.max(1) },
            max: max.max(1),
            mean_rtt: None,
            deviation: 0.0,
            window_start: now,
            window_sum: 0.0,
            window_count: 0,
            window_backpressure: false,
            window_saturated: false,
        }
    }

    /// Requests that may be on the wire now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The long-run mean round trip, seconds (adaptive; once answers came).
    pub fn mean_rtt(&self) -> Option<f64> {
        self.mean_rtt
    }

    /// Notes that a request started with `on_wire` requests on the wire
    /// (counting it).
    pub fn on_start(&mut self, on_wire: usize) {
        if on_wire >= self.limit {
            self.window_saturated = true;
        }
    }

    /// Takes an answer in (`rtt`: how long its request took) and, at the
    /// end of a window, adjusts the limit.
    pub fn on_answer(&mut self, kind: AnswerKind, rtt: Duration, now: Instant) {
        if !self.adaptive {
            return;
        }
        match kind {
            AnswerKind::Delivered | AnswerKind::Refused => {
                self.window_sum += rtt.as_secs_f64();
                self.window_count += 1;
            }
            AnswerKind::Throttled | AnswerKind::Unavailable => self.window_backpressure = true,
            AnswerKind::Gone => {}
        }
        let window = Duration::from_secs_f64(self.mean_rtt.unwrap_or(0.0).max(0.001));
        if now.saturating_duration_since(self.window_start) < window {
            return;
        }
        let current = (self.window_count > 0).then(|| self.window_sum / f64::from(self.window_count));
        let rising = match (current, self.mean_rtt) {
            (Some(c), Some(mean)) => c > mean + ARC_DEVIATION_SCALE * self.deviation.max(mean * 0.05),
            _ => false,
        };
        if self.window_backpressure || rising {
            self.limit = ((self.limit as f64 * ARC_DECREASE) as usize).max(1);
        } else if self.window_saturated && current.is_some() {
            self.limit = (self.limit + 1).min(self.max);
        }
        if let Some(c) = current {
            let mean = self.mean_rtt.map_or(c, |m| m + ARC_EWMA_ALPHA * (c - m));
            self.deviation += ARC_EWMA_ALPHA * ((c - mean).abs() - self.deviation);
            self.mean_rtt = Some(mean);
        }
        self.window_start = now;
        self.window_sum = 0.0;
        self.window_count = 0;
        self.window_backpressure = false;
        self.window_saturated = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(c: &mut Concurrency, kind: AnswerKind, rtt: Duration, rounds: u32, now: &mut Instant) {
        for _ in 0..rounds {
            c.on_start(c.limit());
            *now += rtt.max(Duration::from_millis(1));
            c.on_answer(kind, rtt, *now);
        }
    }

    #[test]
    fn adaptive_concurrency_grows_by_one_per_window_while_answers_stay_fast_up_to_max_in_flight() {
        let mut now = Instant::now();
        let mut c = Concurrency::new(true, 16, now);
        assert_eq!(c.limit(), 1, "starts at one");
        feed(&mut c, AnswerKind::Delivered, Duration::from_millis(50), 5, &mut now);
        assert_eq!(c.limit(), 6);
        feed(&mut c, AnswerKind::Delivered, Duration::from_millis(50), 40, &mut now);
        assert_eq!(c.limit(), 16, "never above max_in_flight");
        let fixed = Concurrency::new(false, 16, now);
        assert_eq!(fixed.limit(), 16);
    }

    #[test]
    fn adaptive_concurrency_shrinks_on_backpressure_and_on_rising_latency_never_below_one() {
        let mut now = Instant::now();
        let mut c = Concurrency::new(true, 16, now);
        feed(&mut c, AnswerKind::Delivered, Duration::from_millis(50), 30, &mut now);
        assert_eq!(c.limit(), 16);
        feed(&mut c, AnswerKind::Throttled, Duration::from_millis(50), 1, &mut now);
        assert_eq!(c.limit(), 14, "×0.9 on a 429");
        feed(&mut c, AnswerKind::Delivered, Duration::from_millis(400), 1, &mut now);
        assert_eq!(c.limit(), 12, "×0.9 when the round trip rises");
        feed(&mut c, AnswerKind::Unavailable, Duration::from_millis(50), 60, &mut now);
        assert_eq!(c.limit(), 1, "timeouts take it down to one, not zero");
    }
}
