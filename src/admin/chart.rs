//! The status page's history charts: one server-rendered SVG per
//! subscription (pending, delivered per minute, ingest per minute over the
//! last 1,440 periods, offline periods shaded, periods without samples
//! marked as "agent not running"), and a one-line account of the latest
//! outage for people (when it began, how long it lasted, the backlog's peak,
//! when it drained). No script, nothing fetched.

use std::fmt::Write;

use crate::outbox::history::{Point, KEPT_PERIODS};
use crate::timefmt::{human_duration, ms_to_rfc3339};

const WIDTH: f64 = 720.0;
const PANEL: f64 = 44.0;
const GAP: f64 = 16.0;
const LEFT: f64 = 0.0;

/// A run of periods: first and last period start, wall-clock ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Start of the first period.
    pub from_ms: i64,
    /// End of the last period.
    pub to_ms: i64,
}

/// Consecutive offline periods, merged.
pub fn outages(points: &[Point], period_ms: i64) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for p in points.iter().filter(|p| p.offline_s > 0) {
        match runs.last_mut() {
            Some(run) if run.to_ms == p.at_ms => run.to_ms = p.at_ms + period_ms,
            _ => runs.push(Run {
                from_ms: p.at_ms,
                to_ms: p.at_ms + period_ms,
            }),
        }
    }
    runs
}

/// Stretches without samples longer than a period (the agent was not
/// running, or could not read the outbox).
fn gaps(points: &[Point], period_ms: i64) -> Vec<Run> {
    points
        .windows(2)
        .filter(|w| w[1].at_ms - w[0].at_ms > period_ms)
        .map(|w| Run {
            from_ms: w[0].at_ms + period_ms,
            to_ms: w[1].at_ms,
        })
        .collect()
}

fn clock(ms: i64) -> String {
    // "2026-11-22T10:15:00Z" -> "10:15"; people read the date above.
    let t = ms_to_rfc3339(ms);
    t.get(11..16).map(str::to_string).unwrap_or(t)
}

/// The subscription as it is now (the samples lag by up to a period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Wall-clock ms.
    pub at_ms: i64,
    /// Whether it is online now.
    pub online: bool,
    /// Deliveries waiting now.
    pub pending: i64,
}

/// The latest outage told in one line, or `None` when there was none in
/// the window. The samples tell the past; `now` tells whether it still
/// goes on (an outage that ended since the last sample ended "now").
pub fn outage_summary(points: &[Point], period_ms: i64, now: Now) -> Option<String> {
    let Some(mut run) = outages(points, period_ms).last().copied() else {
        return (!now.online).then(|| format!("Offline now; {} pending", now.pending));
    };
    // Offline in the newest period: the outage went on to the last sample.
    let to_the_last = points
        .last()
        .is_some_and(|p| p.offline_s > 0 && p.at_ms + period_ms == run.to_ms);
    let ongoing = to_the_last && !now.online;
    if to_the_last && now.online {
        run.to_ms = now.at_ms;
    }
    let peak = points
        .iter()
        .filter(|p| p.at_ms >= run.from_ms)
        .map(|p| p.pending)
        .chain([now.pending])
        .max()
        .unwrap_or(0);
    if ongoing {
        return Some(format!(
            "Offline since {} UTC ({} so far); {} pending now (peak {peak})",
            clock(run.from_ms),
            human_duration((now.at_ms - run.from_ms) / 1000),
            now.pending
        ));
    }
    let mut text = format!(
        "Last outage {}–{} UTC ({}); backlog peaked at {peak} pending",
        clock(run.from_ms),
        clock(run.to_ms),
        human_duration((run.to_ms - run.from_ms) / 1000)
    );
    let drained_at = points
        .iter()
        .find(|p| p.at_ms >= run.to_ms - period_ms && p.pending == 0)
        .map(|p| p.at_ms + period_ms)
        .or((now.pending == 0).then_some(now.at_ms));
    match drained_at {
        Some(at) => {
            let _ = write!(
                text,
                ", drained by {} UTC ({} after the link came back)",
                clock(at),
                human_duration((at - run.to_ms).max(0) / 1000)
            );
        }
        None => {
            let _ = write!(text, ", still draining: {} pending", now.pending);
        }
    }
    if !now.online {
        text = format!("Offline now; {} pending. {text}", now.pending);
    }
    Some(text)
}

/// A span of the chart's axis as people say it: "24 h", "12 h", "24 min".
pub fn span_label(secs: i64) -> String {
    if secs >= 3600 && secs % 3600 == 0 {
        format!("{} h", secs / 3600)
    } else if secs >= 60 && secs % 60 == 0 {
        format!("{} min", secs / 60)
    } else {
        human_duration(secs)
    }
}

fn x_of(ms: i64, start_ms: i64, span_ms: i64) -> f64 {
    LEFT + (ms - start_ms) as f64 / span_ms as f64 * (WIDTH - LEFT)
}

/// One subscription's chart over the window ending at `now_ms`.
pub fn render(name: &str, points: &[Point], period_ms: i64, now_ms: i64) -> String {
    let span_ms = KEPT_PERIODS * period_ms;
    let start_ms = now_ms - span_ms;
    let height = 3.0 * PANEL + 3.0 * GAP + 14.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=history viewBox=\"0 0 {WIDTH} {height}\" width=\"100%\" role=img aria-label=\"history of {}: pending, delivered per period, ingest per period, offline periods shaded\" data-subscription=\"{}\">",
        super::html::esc(name),
        super::html::esc(name)
    );
    let band = |svg: &mut String, run: &Run, class: &str, title: &str| {
        let x0 = x_of(run.from_ms.max(start_ms), start_ms, span_ms);
        let x1 = x_of(run.to_ms.min(now_ms), start_ms, span_ms);
        if x1 > x0 {
            let _ = write!(
                svg,
                "<rect class={class} x=\"{x0:.1}\" y=\"0\" width=\"{:.1}\" height=\"{:.1}\" data-from=\"{}\" data-to=\"{}\"><title>{title} {}–{} UTC</title></rect>",
                (x1 - x0).max(1.0),
                3.0 * PANEL + 3.0 * GAP,
                ms_to_rfc3339(run.from_ms),
                ms_to_rfc3339(run.to_ms),
                clock(run.from_ms),
                clock(run.to_ms)
            );
        }
    };
    for run in gaps(points, period_ms) {
        band(&mut svg, &run, "gap", "no samples (agent not running)");
    }
    for run in outages(points, period_ms) {
        band(&mut svg, &run, "outage", "offline");
    }
    type Pick = fn(&Point) -> i64;
    let panels: [(&str, &str, Pick); 3] = [
        ("pending", "pending", |p| p.pending),
        ("delivered", "delivered / min", |p| p.delivered),
        ("ingested", "ingest / min", |p| p.ingested),
    ];
    let bar_w = ((WIDTH - LEFT) / KEPT_PERIODS as f64).max(0.5);
    for (i, (class, label, pick)) in panels.iter().enumerate() {
        let top = GAP + i as f64 * (PANEL + GAP);
        let base = top + PANEL;
        let max = points.iter().map(pick).max().unwrap_or(0).max(1);
        let _ = write!(
            svg,
            "<text class=label x=\"2\" y=\"{:.1}\">{label} (max {max})</text><line class=axis x1=\"0\" x2=\"{WIDTH}\" y1=\"{base:.1}\" y2=\"{base:.1}\"/>",
            top - 3.0
        );
        let _ = write!(svg, "<g class=\"series {class}\" data-max=\"{max}\">");
        for p in points.iter().filter(|p| p.at_ms >= start_ms) {
            let v = pick(p);
            if v == 0 {
                continue;
            }
            let h = (v as f64 / max as f64 * PANEL).max(1.0);
            let _ = write!(
                svg,
                "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{bar_w:.2}\" height=\"{h:.2}\"><title>{} UTC: {v}</title></rect>",
                x_of(p.at_ms, start_ms, span_ms),
                base - h,
                clock(p.at_ms)
            );
        }
        let _ = write!(svg, "</g>");
    }
    let y = height - 2.0;
    let half = span_label(span_ms / 2000);
    let _ = write!(
        svg,
        "<text class=tick x=\"2\" y=\"{y}\">{} ago</text><text class=tick x=\"{}\" y=\"{y}\" text-anchor=middle>{half} ago</text><text class=tick x=\"{}\" y=\"{y}\" text-anchor=end>now</text></svg>",
        span_label(span_ms / 1000),
        WIDTH / 2.0,
        WIDTH - 2.0
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at_ms: i64, pending: i64, delivered: i64, offline_s: i64) -> Point {
        Point {
            at: ms_to_rfc3339(at_ms),
            at_ms,
            pending,
            parked: 0,
            delivered,
            ingested: 1,
            offline_s,
        }
    }

    const MIN: i64 = 60_000;

    /// 10:00 to 10:20 UTC: offline 10:05-10:10, drained at 10:12.
    fn outage_and_drain() -> Vec<Point> {
        let t0 = 1_764_583_200_000; // 2025-12-01T10:00:00Z
        (0..20)
            .map(|i| {
                let offline = if (5..10).contains(&i) { 60 } else { 0 };
                let pending = match i {
                    5..=9 => (i - 4) * 10,
                    10 => 30,
                    11 => 5,
                    _ => 0,
                };
                point(t0 + i * MIN, pending, if i == 10 { 20 } else { 1 }, offline)
            })
            .collect()
    }

    #[test]
    fn the_latest_outage_is_told_with_its_peak_and_drain() {
        let points = outage_and_drain();
        let now = points[19].at_ms + MIN;
        assert_eq!(
            outages(&points, MIN),
            [Run {
                from_ms: points[5].at_ms,
                to_ms: points[10].at_ms
            }]
        );
        let online = |at_ms, pending| Now {
            at_ms,
            online: true,
            pending,
        };
        assert_eq!(
            outage_summary(&points, MIN, online(now, 0)).as_deref(),
            Some("Last outage 10:05–10:10 UTC (5m00s); backlog peaked at 50 pending, drained by 10:13 UTC (3m00s after the link came back)")
        );
        assert_eq!(outage_summary(&points[..4], MIN, online(now, 0)), None);
        let down_now = Now {
            online: false,
            ..online(now, 3)
        };
        assert_eq!(
            outage_summary(&points[..4], MIN, down_now).as_deref(),
            Some("Offline now; 3 pending")
        );
        // Still offline at the last sample, and now.
        let ongoing = &points[..8];
        let at = ongoing[7].at_ms + MIN;
        let still = Now {
            online: false,
            ..online(at, 45)
        };
        assert_eq!(
            outage_summary(ongoing, MIN, still).as_deref(),
            Some("Offline since 10:05 UTC (3m00s so far); 45 pending now (peak 45)")
        );
        // Back online since the last sample: the outage ended now.
        assert_eq!(
            outage_summary(ongoing, MIN, online(at + 20_000, 12)).as_deref(),
            Some("Last outage 10:05–10:08 UTC (3m20s); backlog peaked at 30 pending, still draining: 12 pending")
        );
        let drained = outage_summary(ongoing, MIN, online(at + 20_000, 0)).expect("drained");
        assert!(
            drained.ends_with("drained by 10:08 UTC (0s after the link came back)"),
            "{drained}"
        );
    }

    #[test]
    fn the_chart_shades_the_outage_and_marks_missing_samples() {
        let mut points = outage_and_drain();
        points.remove(15); // the agent was down for a minute
        let now = points.last().expect("points").at_ms + MIN;
        let svg = render("erp", &points, MIN, now);
        assert_eq!(svg.matches("<rect class=outage").count(), 1, "{svg}");
        assert_eq!(svg.matches("<rect class=gap").count(), 1, "{svg}");
        assert!(svg.contains("pending (max 50)") && svg.contains("delivered / min (max 20)"));
        assert!(svg.contains(">24 h ago<") && svg.contains(">12 h ago<") && svg.contains(">now<"));
        assert_eq!(span_label(1440), "24 min");
        assert!(!svg.contains("<script"));
    }
}
