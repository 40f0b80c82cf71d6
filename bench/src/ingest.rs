//! Producers: pipelined Unix-socket load, HTTP array load, and an open-loop
//! steady-rate socket load that measures acknowledgement latency.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::events;

/// What a load run achieved.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Load {
    /// Events written (lines or array items).
    pub sent: u64,
    /// Acknowledged with `"ok":true` (after the commit).
    pub acked: u64,
    /// Refused or failed.
    pub errors: u64,
    pub first_error: Option<String>,
    /// First write to last acknowledgement.
    pub elapsed_s: f64,
    /// `acked / elapsed_s`.
    pub rate: f64,
    /// Stopped by the time limit before sending everything.
    pub cut_short: bool,
}

impl Load {
    /// One line for the log: `label: acked of sent in s = rate (errors)`.
    pub fn summary(&self, label: &str) -> String {
        format!(
            "{label}: {} acked of {} sent in {:.2} s = {:.0} events/s ({} errors{})",
            self.acked,
            self.sent,
            self.elapsed_s,
            self.rate,
            self.errors,
            self.first_error
                .as_deref()
                .map(|e| format!(", first: {e}"))
                .unwrap_or_default()
        )
    }
}

/// Makes the line of event `i` (no newline).
pub type LineFn = Arc<dyn Fn(u64) -> String + Send + Sync>;

/// A line maker for phase `prefix`: ~`size` bytes, over `entities` entities.
pub fn line_fn(prefix: &'static str, entities: u64, size: usize) -> LineFn {
    Arc::new(move |i| events::event(prefix, i, &events::order_entity(i, entities), size).line())
}

#[derive(Default)]
struct Tally {
    acked: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn reply(&mut self, line: &str) {
        if line.starts_with(r#"{"ok":true"#) {
            self.acked += 1;
        } else {
            self.errors += 1;
            if self.first_error.is_none() {
                self.first_error = Some(line.chars().take(300).collect());
            }
        }
    }
    fn merge(&mut self, other: Tally) {
        self.acked += other.acked;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// `n` events over `producers` socket connections, each keeping up to
/// `window` lines unanswered. Stops sending at `time_limit`.
pub async fn socket_load(
    socket: &Path,
    n: u64,
    producers: usize,
    window: usize,
    make: LineFn,
    time_limit: Duration,
) -> anyhow::Result<Load> {
    let producers = producers.max(1);
    let mut conns = Vec::with_capacity(producers);
    for _ in 0..producers {
        conns.push(
            UnixStream::connect(socket)
                .await
                .context("connecting to the ingest socket")?,
        );
    }
    let start = Instant::now();
    let stop_at = start + time_limit;
    let mut tasks = tokio::task::JoinSet::new();
    for (p, stream) in conns.into_iter().enumerate() {
        let make = make.clone();
        tasks.spawn(async move {
            let (read_half, mut write_half) = stream.into_split();
            let permits = Arc::new(Semaphore::new(window.max(1)));
            let reader_permits = permits.clone();
            let reader = tokio::spawn(async move {
                let mut reader = BufReader::with_capacity(64 * 1024, read_half);
                let mut line = String::new();
                let mut tally = Tally::default();
                loop {
                    line.clear();
                    match reader.read_line(&mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            tally.reply(&line);
                            reader_permits.add_permits(1);
                        }
                    }
                }
                (tally, Instant::now())
            });
            let mut sent = 0u64;
            let mut cut = false;
            let mut buf: Vec<u8> = Vec::with_capacity(128 * 1024);
            let mut i = p as u64;
            while i < n {
                if Instant::now() >= stop_at {
                    cut = true;
                    break;
                }
                match permits.try_acquire() {
                    Ok(permit) => permit.forget(),
                    Err(_) => {
                        if !buf.is_empty() {
                            if write_half.write_all(&buf).await.is_err() {
                                break;
                            }
                            buf.clear();
                        }
                        match permits.acquire().await {
                            Ok(permit) => permit.forget(),
                            Err(_) => break,
                        }
                    }
                }
                buf.extend_from_slice(make(i).as_bytes());
                buf.push(b'\n');
                sent += 1;
                if buf.len() >= 64 * 1024 {
                    if write_half.write_all(&buf).await.is_err() {
                        break;
                    }
                    buf.clear();
                }
                i += producers as u64;
            }
            if !buf.is_empty() {
                let _ = write_half.write_all(&buf).await;
            }
            // EOF: the agent answers what it read, then closes.
            let _ = write_half.shutdown().await;
            let (tally, done_at) = reader.await.unwrap_or_else(|_| (Tally::default(), Instant::now()));
            (sent, tally, done_at, cut)
        });
    }
    let mut load = Load::default();
    let mut tally = Tally::default();
    let mut last = start;
    while let Some(done) = tasks.join_next().await {
        let (sent, t, done_at, cut) = done.context("producer task")?;
        load.sent += sent;
        load.cut_short |= cut;
        tally.merge(t);
        last = last.max(done_at);
    }
    load.acked = tally.acked;
    load.errors = tally.errors + load.sent.saturating_sub(tally.acked + tally.errors);
    load.first_error = tally.first_error;
    load.elapsed_s = (last - start).as_secs_f64();
    load.rate = load.acked as f64 / load.elapsed_s.max(1e-9);
    Ok(load)
}

/// `n` events as `POST /v1/events` arrays of `batch`, `concurrency` requests
/// at a time on keep-alive connections.
pub async fn http_load(
    port: u16,
    n: u64,
    batch: u64,
    concurrency: usize,
    make: LineFn,
    time_limit: Duration,
) -> anyhow::Result<Load> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(60))
        .build()?;
    let url = format!("http://127.0.0.1:{port}/v1/events");
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let stop_at = start + time_limit;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (client, url, next, make) = (client.clone(), url.clone(), next.clone(), make.clone());
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut sent = 0u64;
            let mut cut = false;
            loop {
                if Instant::now() >= stop_at {
                    cut = true;
                    break;
                }
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= n {
                    break;
                }
                let last = (first + batch).min(n);
                let mut body = String::with_capacity(((last - first) * 1100) as usize);
                body.push('[');
                for i in first..last {
                    if i > first {
                        body.push(',');
                    }
                    body.push_str(&make(i));
                }
                body.push(']');
                sent += last - first;
                match client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(resp) => {
                        let status = resp.status();
                        let text = resp.text().await.unwrap_or_default();
                        let ok = text.matches(r#""ok":true"#).count() as u64;
                        tally.acked += ok;
                        if !status.is_success() || ok != last - first {
                            tally.errors += (last - first) - ok;
                            if tally.first_error.is_none() {
                                tally.first_error = Some(format!("HTTP {status}: {}", &text[..text.len().min(300)]));
                            }
                        }
                    }
                    Err(e) => {
                        tally.errors += last - first;
                        tally.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (sent, tally, Instant::now(), cut)
        });
    }
    let mut load = Load::default();
    let mut tally = Tally::default();
    let mut last = start;
    while let Some(done) = tasks.join_next().await {
        let (sent, t, done_at, cut) = done.context("HTTP producer task")?;
        load.sent += sent;
        load.cut_short |= cut;
        tally.merge(t);
        last = last.max(done_at);
    }
    load.acked = tally.acked;
    load.errors = tally.errors;
    load.first_error = tally.first_error;
    load.elapsed_s = (last - start).as_secs_f64();
    load.rate = load.acked as f64 / load.elapsed_s.max(1e-9);
    Ok(load)
}

/// Result of the steady-rate run.
pub struct Latency {
    pub load: Load,
    /// Microseconds from the *planned* send time to the acknowledgement
    /// (open loop: a stall delays later sends' planned times not at all, so
    /// it is counted in full, no coordinated omission).
    pub hist: Histogram<u64>,
    /// Events actually sent per second.
    pub offered_rate: f64,
    /// (planned send time since the start, µs; latency, µs) of every event.
    pub trace: Vec<(u64, u64)>,
}

/// `rate` events/s in total, spread over `conns` connections, for `secs`.
pub async fn latency(socket: &Path, rate: u64, secs: f64, conns: usize, make: LineFn) -> anyhow::Result<Latency> {
    let conns = conns.max(1);
    let per_event = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let interval = per_event * conns as u32;
    let total = (rate as f64 * secs) as u64;
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?));
    let trace = Arc::new(Mutex::new(Vec::<(u64, u64)>::with_capacity(total as usize)));
    let mut streams = Vec::new();
    for _ in 0..conns {
        streams.push(
            UnixStream::connect(socket)
                .await
                .context("connecting to the ingest socket")?,
        );
    }
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for (c, stream) in streams.into_iter().enumerate() {
        let (make, hist, trace) = (make.clone(), hist.clone(), trace.clone());
        tasks.spawn(async move {
            let (read_half, mut write_half) = stream.into_split();
            let (due_tx, mut due_rx) = mpsc::unbounded_channel::<Instant>();
            let reader = tokio::spawn(async move {
                let mut reader = BufReader::new(read_half);
                let mut line = String::new();
                let mut tally = Tally::default();
                let mut local = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram");
                let mut points = Vec::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let now = Instant::now();
                            if let Some(due) = due_rx.recv().await {
                                let us = now.saturating_duration_since(due).as_micros() as u64;
                                let _ = local.record(us.max(1));
                                points.push((due.saturating_duration_since(start).as_micros() as u64, us));
                            }
                            tally.reply(&line);
                        }
                    }
                }
                hist.lock().unwrap_or_else(|p| p.into_inner()).add(&local).ok();
                trace.lock().unwrap_or_else(|p| p.into_inner()).extend(points);
                tally
            });
            let first = start + per_event * c as u32;
            let mut k: u64 = 0;
            let mut sent = 0u64;
            let mut buf = Vec::with_capacity(16 * 1024);
            loop {
                let due = first + interval * k as u32;
                if due >= end || c as u64 + k * conns as u64 >= total {
                    break;
                }
                tokio::time::sleep_until(due).await;
                let now = Instant::now();
                // Everything due by now goes out in one write.
                loop {
                    let due = first + interval * k as u32;
                    if due > now || due >= end {
                        break;
                    }
                    let i = c as u64 + k * conns as u64;
                    buf.extend_from_slice(make(1_000_000_000 + i).as_bytes());
                    buf.push(b'\n');
                    let _ = due_tx.send(due);
                    k += 1;
                    sent += 1;
                }
                if write_half.write_all(&buf).await.is_err() {
                    break;
                }
                buf.clear();
            }
            let _ = write_half.shutdown().await;
            let tally = reader.await.unwrap_or_default();
            (sent, tally)
        });
    }
    let mut load = Load::default();
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        let (sent, t) = done.context("latency producer")?;
        load.sent += sent;
        tally.merge(t);
    }
    let elapsed = start.elapsed().as_secs_f64();
    load.acked = tally.acked;
    load.errors = tally.errors;
    load.first_error = tally.first_error;
    load.elapsed_s = elapsed;
    load.rate = load.acked as f64 / elapsed.max(1e-9);
    let hist = Arc::try_unwrap(hist)
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .unwrap_or_else(|arc| arc.lock().unwrap_or_else(|p| p.into_inner()).clone());
    let mut trace = std::mem::take(&mut *trace.lock().unwrap_or_else(|p| p.into_inner()));
    trace.sort_unstable();
    Ok(Latency {
        trace,
        offered_rate: load.sent as f64 / secs,
        load,
        hist,
    })
}
