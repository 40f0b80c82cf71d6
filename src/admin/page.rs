//! The status page for people: plain server-rendered HTML and CSS, readable
//! on a small store PC screen, refreshing itself.

use std::fmt::Write;

use crate::outbox::report::DeliveryRow;
use crate::outbox::state::ConcurrencyMode;
use crate::status::StatusReport;
use crate::timefmt::human_duration;

use super::html::esc;

/// What the page shows.
pub struct View<'a> {
    /// The status report.
    pub report: &'a StatusReport,
    /// Parked deliveries (at most 50).
    pub parked: &'a [DeliveryRow],
    /// Result of the last action.
    pub message: Option<&'a str>,
    /// Whether the page reloads itself.
    pub refresh: bool,
    /// Whether resend is possible (a token file is configured).
    pub mutations: bool,
    /// Per configured subscription, its history (oldest first).
    pub history: &'a [crate::outbox::history::Series],
    /// The history's sample period, ms.
    pub period_ms: i64,
    /// Now, wall-clock ms (the charts end here).
    pub now_ms: i64,
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330;font-size:15px}
header{background:#1d2330;color:#fff;padding:10px 16px;display:flex;flex-wrap:wrap;gap:16px;align-items:baseline}
header h1{font-size:18px;margin:0}
main{padding:12px 16px;max-width:1100px}
section{background:#fff;border-radius:6px;padding:10px 14px;margin-bottom:12px;box-shadow:0 1px 2px #0002}
h2{font-size:16px;margin:4px 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e3e5ea;vertical-align:top}
th{font-size:13px;color:#5a6275}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.state{display:inline-block;padding:2px 8px;border-radius:10px;font-weight:600;font-size:13px;color:#fff}
.online{background:#1f8a4c}.offline{background:#c4302b}.gone{background:#8a4b08}.stopped,.unconfigured{background:#7a8194}
.warn{color:#c4302b;font-weight:600}
.msg{background:#fff7d6;border:1px solid #e6c200;padding:8px 12px;border-radius:6px;margin-bottom:12px}
.bar{height:10px;background:#e3e5ea;border-radius:5px;overflow:hidden;max-width:300px}
.bar span{display:block;height:100%;background:#3b6fd4}
.full .bar span{background:#c4302b}
button{padding:4px 10px}
.past{color:#7a8194}
.past b{font-weight:600}
svg.history{display:block;max-width:720px;font-size:11px;margin:4px 0 2px}
svg.history .label,svg.history .tick{fill:#5a6275}
svg.history .axis{stroke:#c9ccd4;stroke-width:1}
svg.history .pending rect{fill:#e08a00}
svg.history .delivered rect{fill:#1f8a4c}
svg.history .ingested rect{fill:#3b6fd4}
svg.history rect.outage{fill:#c4302b;fill-opacity:.16}
svg.history rect.gap{fill:#7a8194;fill-opacity:.14}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;vertical-align:-1px}
small{color:#5a6275}
small.limit{white-space:nowrap}
";

/// Under the requests in flight, how many the subscription may have on the
/// wire now, while the agent runs it: "of 16" (fixed), or "limit 3 of 16,
/// adaptive".
fn limit_note(s: &crate::outbox::report::SubscriptionStatus) -> String {
    let mut note = match (s.concurrency, s.concurrency_limit, s.max_in_flight) {
        (Some(ConcurrencyMode::Adaptive), Some(limit), Some(max)) => {
            format!("<br><small class=limit>limit {limit} of {max}, adaptive</small>")
        }
        (Some(ConcurrencyMode::Fixed), Some(_), Some(max)) => format!("<br><small class=limit>of {max}</small>"),
        _ => String::new(),
    };
    if let Some(rate) = s.max_rate {
        note += &format!(
            "<br><small class=limit>at most {} requests/s</small>",
            crate::outbox::report::rate_text(rate)
        );
    }
    note
}

/// Renders the page.
pub fn render(v: &View<'_>) -> String {
    let r = v.report;
    let mut h = String::new();
    let _ = write!(h, "<!doctype html><html lang=en><head><meta charset=utf-8>");
    let _ = write!(
        h,
        "<meta name=viewport content=\"width=device-width, initial-scale=1\">"
    );
    if v.refresh {
        let _ = write!(h, "<meta http-equiv=refresh content=10>");
    }
    let _ = write!(
        h,
        "<title>store-outbox {}</title><style>{STYLE}</style></head><body>",
        esc(&r.store_id)
    );
    let running = match r.uptime_s {
        Some(up) => format!("running, up {}", human_duration(up)),
        None if r.agent_running => "running".into(),
        None => "NOT RUNNING".into(),
    };
    let _ = write!(
        h,
        "<header><h1>store-outbox</h1><span>store <b>{}</b></span><span>agent <b>{}</b></span><span>{}</span><span>v{}</span></header><main>",
        esc(&r.store_id),
        esc(&r.agent_id),
        esc(&running),
        esc(&r.version)
    );
    if let Some(m) = v.message {
        let _ = write!(h, "<div class=msg>{}</div>", esc(m));
    }
    if let Some(failed) = &r.reload_failed {
        let _ = write!(
            h,
            "<div class=msg><span class=warn>Reload failed at {}: {}</span> (the agent runs on its previous config)</div>",
            esc(&failed.at),
            esc(&failed.error)
        );
    }

    let _ = write!(h, "<section><h2>Subscriptions</h2><table><tr><th>Name</th><th>State</th><th>Pending</th><th>In flight</th><th>Parked</th><th>Oldest pending</th><th>Delivered</th><th>Last success</th><th>Last error</th></tr>");
    if r.subscriptions.is_empty() {
        let _ = write!(
            h,
            "<tr><td colspan=9>No subscriptions configured: events are stored and wait for one.</td></tr>"
        );
    }
    for s in &r.subscriptions {
        let parked_class = if s.parked > 0 { " warn" } else { "" };
        let _ = write!(
            h,
            "<tr><td><b>{}</b><br><small>{}</small></td><td><span class=\"state {}\">{}</span></td><td class=num>{}</td><td class=num>{}{}</td><td class=\"num{parked_class}\">{}</td><td>{}</td><td class=num>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.name),
            esc(s.url.as_deref().unwrap_or("")),
            s.state,
            s.state,
            s.pending,
            s.in_flight,
            limit_note(s),
            s.parked,
            s.oldest_pending_age_s.map(human_duration).unwrap_or_else(|| "-".into()),
            s.delivered_total,
            esc(s.last_success_at.as_deref().unwrap_or("-")),
            last_error_cell(s),
        );
    }
    let _ = write!(h, "</table></section>");
    history_section(&mut h, v);

    let _ = write!(h, "<section><h2>Parked events</h2>");
    if v.parked.is_empty() {
        let _ = write!(h, "<p>None. Parked events are deliveries an endpoint refused for longer than <code>retry.give_up_after</code>; later events of the same entity wait behind them.</p>");
    } else if !v.mutations {
        let _ = write!(
            h,
            "<p class=warn>Resend is off: set <code>admin.token_file</code> in the config.</p>"
        );
    } else if v.refresh {
        let _ = write!(h, "<p><a href=\"/?pause=1\">Stop auto-refresh to resend</a></p>");
    }
    if !v.parked.is_empty() {
        let form = v.mutations && !v.refresh;
        if form {
            let _ = write!(h, "<form method=post action=/ui/resend><p><label>Token <input type=password name=token required autocomplete=off></label> <button name=parked value=1>Resend all parked</button></p>");
        }
        let _ = write!(h, "<table><tr><th>Event</th><th>Type</th><th>Entity</th><th>Subscription</th><th>Attempts</th><th>Last error</th><th></th></tr>");
        for p in v.parked {
            let button = if form {
                // "<subscription>:<event id>": names cannot hold ':', so the split is unambiguous.
                format!(
                    "<button name=delivery value=\"{}:{}\">Resend</button>",
                    esc(&p.subscription),
                    esc(&p.event_id)
                )
            } else {
                String::new()
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{} #{}</td><td>{}</td><td class=num>{}</td><td>{}</td><td>{button}</td></tr>",
                esc(&p.event_id),
                esc(&p.event_type),
                esc(&p.entity),
                p.entity_seq,
                esc(&p.subscription),
                p.attempts,
                esc(p.last_error.as_deref().unwrap_or("-"))
            );
        }
        let _ = write!(h, "</table>");
        if form {
            let _ = write!(h, "</form>");
        }
    }
    let _ = write!(h, "</section>");

    let pct = if r.db.max_bytes > 0 {
        (r.db.bytes as f64 / r.db.max_bytes as f64 * 100.0).min(100.0)
    } else {
        0.0
    };
    let full = if r.db.full { " class=full" } else { "" };
    let _ = write!(
        h,
        "<section{full}><h2>Storage and ingest</h2><p>Database {} of {} ({pct:.0}%){}</p><div class=bar><span style=\"width:{pct:.1}%\"></span></div>",
        bytesize::ByteSize(r.db.bytes).to_string_as(true),
        bytesize::ByteSize(r.db.max_bytes).to_string_as(true),
        if r.db.disk_full {
            " <span class=warn>FULL: the disk is full, new events are refused</span>"
        } else if r.db.full {
            " <span class=warn>FULL: new events are refused</span>"
        } else {
            ""
        }
    );
    let _ = write!(
        h,
        "<p>Accepted {} · duplicates {} · rejected {} · spool waiting {} · spool failed <span class=\"{}\">{}</span></p></section>",
        r.ingest.accepted_total,
        r.ingest.duplicate_total,
        r.ingest.rejected_total,
        r.spool.incoming,
        if r.spool.failed > 0 { "warn" } else { "" },
        r.spool.failed
    );
    let _ = write!(
        h,
        "<p><small>{} · JSON: <a href=/v1/status>/v1/status</a> · <a href=/metrics>/metrics</a> · <a href=/healthz>/healthz</a></small></p></main></body></html>",
        if v.refresh { "Refreshes every 10 s" } else { "Auto-refresh paused: <a href=/>resume</a>" }
    );
    h
}

/// The last error with its age; marked as past once a delivery succeeded
/// after it (the subscription recovered since).
fn last_error_cell(s: &crate::outbox::report::SubscriptionStatus) -> String {
    let Some(error) = s.last_error.as_deref() else {
        return "-".into();
    };
    let age = s
        .last_error_age_s
        .map(|a| format!("{} ago", human_duration(a)))
        .unwrap_or_default();
    if s.last_error_past {
        format!(
            "<span class=past title=\"a delivery succeeded after it\"><b>past</b>, {age}: {}</span>",
            esc(error)
        )
    } else {
        format!("<span class=warn>{age}</span>: {}", esc(error))
    }
}

/// Per configured subscription: the last outage in words and the chart.
fn history_section(h: &mut String, v: &View<'_>) {
    if v.history.is_empty() {
        return;
    }
    let span = super::chart::span_label(crate::outbox::history::KEPT_PERIODS * v.period_ms / 1000);
    let _ = write!(
        h,
        "<section><h2>History, last {span}</h2><p class=legend><small><span style=\"background:#e08a00\"></span>pending<span style=\"background:#1f8a4c\"></span>delivered / min<span style=\"background:#3b6fd4\"></span>ingest / min<span style=\"background:#c4302b55\"></span>offline<span style=\"background:#7a819433\"></span>no samples (agent not running)</small></p>"
    );
    for series in v.history {
        let _ = write!(h, "<h3>{}</h3>", esc(&series.subscription));
        let current = v.report.subscriptions.iter().find(|s| s.name == series.subscription);
        let now = super::chart::Now {
            at_ms: v.now_ms,
            online: !current.is_some_and(|s| s.state == crate::outbox::state::SubscriptionState::Offline),
            pending: current.map(|s| s.pending).unwrap_or(0),
        };
        let summary = super::chart::outage_summary(&series.samples, v.period_ms, now)
            .unwrap_or_else(|| format!("No outage in the last {span}."));
        let _ = write!(h, "<p class=outage-summary>{}</p>", esc(&summary));
        if series.samples.is_empty() {
            let _ = write!(h, "<p><small>No samples yet: one is taken every minute.</small></p>");
        }
        h.push_str(&super::chart::render(
            &series.subscription,
            &series.samples,
            v.period_ms,
            v.now_ms,
        ));
    }
    let _ = write!(
        h,
        "<p><small>JSON: <a href=/v1/history>/v1/history</a></small></p></section>"
    );
}

#[cfg(test)]
mod tests {
    use super::{limit_note, ConcurrencyMode};

    #[test]
    fn the_limit_shows_under_in_flight_while_the_agent_runs_the_subscription() {
        let mut s = crate::outbox::report::SubscriptionStatus::example("erp");
        assert_eq!(limit_note(&s), "", "not running: nothing");
        s.concurrency = Some(ConcurrencyMode::Adaptive);
        s.max_in_flight = Some(16);
        s.concurrency_limit = Some(3);
        assert_eq!(limit_note(&s), "<br><small class=limit>limit 3 of 16, adaptive</small>");
        s.concurrency = Some(ConcurrencyMode::Fixed);
        s.concurrency_limit = Some(16);
        assert_eq!(limit_note(&s), "<br><small class=limit>of 16</small>");
        s.concurrency_limit = None;
        assert_eq!(limit_note(&s), "", "not running: nothing");
    }
}
