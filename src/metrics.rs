//! Prometheus metrics (`/metrics`), names prefixed `store_outbox_`.
//!
//! Two sources: figures the database already holds (ingest counters, backlog
//! per subscription, size), read at each scrape so they are right across
//! restarts and agree with `status`; and figures only the running agent sees
//! (attempts by result, request duration, ingest-to-delivery latency), kept
//! in memory here.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rusqlite::Connection;

use crate::outbox::read;
use crate::outbox::state::SubscriptionState;

/// `subscription` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubLabel {
    /// Subscription name.
    pub subscription: String,
}

/// `subscription` and `result` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// Subscription name.
    pub subscription: String,
    /// delivered, refused (non-2xx answer) or unreachable (no answer, 429, 5xx gateway).
    pub result: String,
}

/// `code` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    /// The error code of a refused event.
    code: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn latency_buckets() -> Histogram {
    // 10 ms to about 45 h: an outage of days shows in the top buckets.
    Histogram::new(exponential_buckets(0.01, 4.0, 13))
}

/// What only the running agent knows.
#[derive(Clone)]
pub struct Metrics {
    /// Delivery attempts by subscription and result.
    attempts: Family<AttemptLabels, Counter>,
    /// Duration of one webhook request, per subscription.
    request_seconds: HistogramFamily<SubLabel>,
    /// Time from ingest to the endpoint's 2xx, per subscription.
    latency_seconds: HistogramFamily<SubLabel>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            attempts: Family::default(),
            request_seconds: Family::new_with_constructor(request_buckets),
            latency_seconds: Family::new_with_constructor(latency_buckets),
        }
    }
}

impl Metrics {
    /// Records one delivery attempt.
    pub fn attempt(&self, subscription: &str, result: &str, request_seconds: f64) {
        self.attempts
            .get_or_create(&AttemptLabels {
                subscription: subscription.to_string(),
                result: result.to_string(),
            })
            .inc();
        self.request_seconds
            .get_or_create(&SubLabel {
                subscription: subscription.to_string(),
            })
            .observe(request_seconds);
    }

    /// Records the time from ingest to a 2xx.
    pub fn delivered_after(&self, subscription: &str, seconds: f64) {
        self.delivered_after_each(subscription, [seconds]);
    }

    /// [`Self::delivered_after`] for every event of a batch, with one
    /// lookup of the subscription's histogram.
    pub fn delivered_after_each(&self, subscription: &str, seconds: impl IntoIterator<Item = f64>) {
        let histogram = self.latency_seconds.get_or_create(&SubLabel {
            subscription: subscription.to_string(),
        });
        for s in seconds {
            histogram.observe(s);
        }
    }

    /// The Prometheus text: database figures read now, plus the in-memory ones.
    pub fn render(&self, conn: &Connection, config: &crate::config::Config) -> rusqlite::Result<String> {
        let max_db_bytes = config.storage.max_db_bytes;
        let mut registry = Registry::with_prefix("store_outbox");
        let counters = read::ingest_counters(conn)?;
        registry.register(
            "events_ingested",
            "Events stored since the database was created",
            ConstCounter::new(counters.accepted_total.max(0) as u64),
        );
        registry.register(
            "events_duplicate",
            "Events acknowledged again as duplicates (same event_id)",
            ConstCounter::new(counters.duplicate_total.max(0) as u64),
        );
        let rejected: Family<CodeLabel, Counter> = Family::default();
        for (code, n) in read::rejected_by_code(conn)? {
            rejected.get_or_create(&CodeLabel { code }).inc_by(n.max(0) as u64);
        }
        registry.register("events_rejected", "Events refused, by error code", rejected);

        let subs = read::subscriptions(conn)?;
        let pending: Family<SubLabel, Gauge> = Family::default();
        let parked: Family<SubLabel, Gauge> = Family::default();
        let in_flight: Family<SubLabel, Gauge> = Family::default();
        let limit: Family<SubLabel, Gauge> = Family::default();
        let rate: Family<SubLabel, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
        let up: Family<SubLabel, Gauge> = Family::default();
        let gone: Family<SubLabel, Gauge> = Family::default();
        let oldest: Family<SubLabel, Gauge> = Family::default();
        let delivered: Family<SubLabel, Counter> = Family::default();
        for s in subs.iter().filter(|s| s.configured) {
            let label = SubLabel {
                subscription: s.name.clone(),
            };
            pending.get_or_create(&label).set(s.pending);
            parked.get_or_create(&label).set(s.parked);
            in_flight.get_or_create(&label).set(s.in_flight);
            // Only while a scheduler runs it (none, for a moment, during a
            // reload): a missing sample, not a made-up 0.
            if let Some(l) = s.concurrency_limit {
                limit.get_or_create(&label).set(l);
            }
            if let Some(r) = config
                .subscriptions
                .iter()
                .find(|c| c.name == s.name)
                .and_then(|c| c.max_rate)
            {
                rate.get_or_create(&label).set(r);
            }
            up.get_or_create(&label)
                .set(i64::from(s.state == SubscriptionState::Online));
            gone.get_or_create(&label)
                .set(i64::from(s.state == SubscriptionState::Gone));
            oldest.get_or_create(&label).set(s.oldest_pending_age_s.unwrap_or(0));
            delivered.get_or_create(&label).inc_by(s.delivered_total.max(0) as u64);
        }
        registry.register(
            "deliveries_pending",
            "Deliveries waiting to be sent, per subscription",
            pending,
        );
        registry.register(
            "deliveries_parked",
            "Deliveries parked after retry.give_up_after",
            parked,
        );
        registry.register("deliveries_in_flight", "Requests in flight", in_flight);
        registry.register(
            "concurrency_limit",
            "Requests the subscription may keep on the wire now: max_in_flight, or between 1 and it when concurrency is adaptive",
            limit,
        );
        registry.register(
            "max_rate_requests_per_second",
            "max_rate: most requests a second the subscription sends (only for those that set it)",
            rate,
        );
        registry.register("deliveries_delivered", "Deliveries that got a 2xx", delivered);
        registry.register(
            "oldest_pending_age_seconds",
            "Age of the oldest pending event (0 when none)",
            oldest,
        );
        registry.register(
            "subscription_up",
            "1 while the endpoint answers, 0 while it is probed",
            up,
        );
        registry.register(
            "subscription_gone",
            "1 while the endpoint's 410 Gone stops the subscription (until resumed or reconfigured)",
            gone,
        );
        registry.register(
            "db_bytes",
            "Bytes used by the outbox database",
            gauge(read::used_bytes(conn)? as i64),
        );
        registry.register("db_max_bytes", "storage.max_db_bytes", gauge(max_db_bytes as i64));
        registry.register(
            "delivery_attempts",
            "Delivery attempts by result",
            self.attempts.clone(),
        );
        registry.register(
            "delivery_request_seconds",
            "Duration of one webhook request",
            self.request_seconds.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Time from ingest to the endpoint's 2xx",
            self.latency_seconds.clone(),
        );
        let mut out = String::new();
        encode(&mut out, &registry).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(out)
    }
}

/// A gauge holding one value read at scrape time.
fn gauge(value: i64) -> Gauge {
    let g = Gauge::default();
    g.set(value);
    g
}

/// The same metrics in the Prometheus text format 0.0.4, for scrapers and
/// tools that do not ask for OpenMetrics (Debian's promtool 2.42 among them).
///
/// The two formats differ in one point that matters here: OpenMetrics names a
/// counter family `x` and its sample `x_total`, the 0.0.4 format names both
/// `x_total`. So HELP/TYPE lines of counters get the suffix, and the `# EOF`
/// terminator goes.
pub fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{kind}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_suffix_in_the_classic_format() {
        let om = "# HELP a_events Events.\n# TYPE a_events counter\na_events_total 3\n# HELP b Bytes.\n# TYPE b gauge\nb 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus_text(om),
            "# HELP a_events_total Events.\n# TYPE a_events_total counter\na_events_total 3\n# HELP b Bytes.\n# TYPE b gauge\nb 1\n"
        );
    }
}
