//! The table printed at the end and the rows of the JSON file.

use serde::Serialize;

/// One line of the table: a figure, what it is compared with, the ratio.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub key: &'static str,
    pub figure: String,
    pub value: Option<f64>,
    pub unit: &'static str,
    pub compared_with: String,
    pub compared_value: Option<f64>,
    /// `value / compared_value`.
    pub ratio: Option<f64>,
    /// The target, in words, if the figure has one.
    pub target: Option<String>,
    /// Whether the target is met.
    pub pass: Option<bool>,
}

impl Row {
    pub fn new(key: &'static str, figure: impl Into<String>, value: Option<f64>, unit: &'static str) -> Row {
        Row {
            key,
            figure: figure.into(),
            value,
            unit,
            compared_with: String::new(),
            compared_value: None,
            ratio: None,
            target: None,
            pass: None,
        }
    }

    pub fn vs(mut self, label: impl Into<String>, value: Option<f64>) -> Row {
        self.compared_with = label.into();
        self.compared_value = value;
        self.ratio = match (self.value, value) {
            (Some(a), Some(b)) if b != 0.0 => Some(a / b),
            _ => None,
        };
        self
    }

    /// A comparison that is context, not a ratio worth reading.
    pub fn no_ratio(mut self) -> Row {
        self.ratio = None;
        self
    }

    /// Target on the ratio: at least `min`.
    pub fn ratio_at_least(mut self, min: f64) -> Row {
        self.target = Some(format!("ratio >= {min}"));
        self.pass = self.ratio.map(|r| r >= min);
        self
    }

    /// Target on the value: at most `max` (in the row's unit).
    pub fn at_most(mut self, max: f64) -> Row {
        self.target = Some(format!("<= {} {}", fmt(max, self.unit), self.unit));
        self.pass = self.value.map(|v| v <= max);
        self
    }
}

pub fn fmt(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    match unit {
        "ev/s" | "req/s" => thousands(v.round() as u64),
        "µs" if v >= 10_000.0 => thousands(v.round() as u64),
        "µs" if v < 100.0 => format!("{v:.1}"),
        "µs" => format!("{v:.0}"),
        "s" if v < 1.0 => format!("{v:.3}"),
        "s" => format!("{v:.2}"),
        "MiB" => format!("{v:.1}"),
        "x" => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn cell(v: Option<f64>, unit: &str) -> String {
    match v {
        Some(v) => format!("{} {unit}", fmt(v, unit)),
        None => "-".into(),
    }
}

/// The table as text (also pasted into docs/BENCHMARKS.md).
pub fn table(rows: &[Row]) -> String {
    let header = ["figure", "value", "compared with", "its value", "ratio", "target"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let compared_unit =
                if r.key.starts_with("latency") || r.key.starts_with("commit") || r.key.starts_with("cpu_") {
                    "µs"
                } else {
                    r.unit
                };
            [
                r.figure.clone(),
                cell(r.value, r.unit),
                r.compared_with.clone(),
                if r.compared_with.is_empty() {
                    String::new()
                } else {
                    cell(r.compared_value, compared_unit)
                },
                r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default(),
                match (&r.target, r.pass) {
                    (Some(t), Some(true)) => format!("{t}: met"),
                    (Some(t), Some(false)) => format!("{t}: MISSED"),
                    (Some(t), None) => format!("{t}: -"),
                    _ => String::new(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |items: &[String]| {
        let mut s = String::from("|");
        for (i, (w, c)) in widths.iter().zip(items).enumerate() {
            let pad = w - c.chars().count();
            // Numbers right-aligned, words left-aligned.
            if i == 1 || i == 3 || i == 4 {
                s.push_str(&format!(" {}{} |", " ".repeat(pad), c));
            } else {
                s.push_str(&format!(" {}{} |", c, " ".repeat(pad)));
            }
        }
        s
    };
    let mut out = String::new();
    out.push_str(&line(&header.map(String::from)));
    out.push('\n');
    out.push('|');
    for (i, w) in widths.iter().enumerate() {
        if i == 1 || i == 3 || i == 4 {
            out.push_str(&format!("{}:|", "-".repeat(w + 1)));
        } else {
            out.push_str(&format!("{}|", "-".repeat(w + 2)));
        }
    }
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}
