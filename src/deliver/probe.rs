//! What a destination's `doctor` probes return (`Step`s with a `Verdict`
//! and a hint), and the probes every destination over TCP shares: the
//! host's addresses (`dns`) and a connection (`tcp`).

use std::time::{Duration, Instant};

use serde::Serialize;

/// The result of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but worth a look.
    Warn,
    /// Broken: delivery will fail.
    Fail,
    /// Not run (an earlier step failed, or not applicable).
    Skip,
}

/// One step's line.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// dns, tcp, tls, http, clock (webhooks); dns, tcp, nats, stream (NATS);
    /// `check` when the check itself broke.
    pub step: &'static str,
    /// Outcome.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do about it.
    pub hint: Option<String>,
}

/// A step's line.
pub fn step(step: &'static str, verdict: Verdict, detail: impl Into<String>, hint: Option<&str>) -> Step {
    Step {
        step,
        verdict,
        detail: detail.into(),
        hint: hint.map(str::to_string),
    }
}

/// `dns`: the host's addresses.
pub async fn dns_step(host: &str, port: u16, budget: Duration) -> Result<(Vec<std::net::SocketAddr>, Step), Step> {
    let started = Instant::now();
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::time::timeout(budget, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                return Err(step(
                    "dns",
                    Verdict::Fail,
                    format!("{host}: {e}"),
                    Some("check the host name in the URL and the store's DNS server (/etc/resolv.conf)"),
                ))
            }
            Err(_) => {
                return Err(step(
                    "dns",
                    Verdict::Fail,
                    format!("{host}: no answer within {budget:?}"),
                    Some("the store's DNS server does not answer"),
                ))
            }
        };
    let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    let found = step(
        "dns",
        Verdict::Ok,
        format!("{host} -> {} ({} ms)", shown.join(", "), started.elapsed().as_millis()),
        None,
    );
    Ok((addrs, found))
}

/// `tcp`: a connection to the first address that takes one.
pub async fn tcp_step(addrs: &[std::net::SocketAddr], budget: Duration) -> Result<Step, Step> {
    let started = Instant::now();
    let mut last_error = String::new();
    for addr in addrs {
        match tokio::time::timeout(budget, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => {
                return Ok(step(
                    "tcp",
                    Verdict::Ok,
                    format!("connected to {addr} ({} ms)", started.elapsed().as_millis()),
                    None,
                ))
            }
            Ok(Err(e)) => last_error = format!("{addr}: {e}"),
            Err(_) => last_error = format!("{addr}: no answer within {budget:?}"),
        }
    }
    Err(step(
        "tcp",
        Verdict::Fail,
        last_error,
        Some("the endpoint is down, or a firewall or proxy blocks this port from the store"),
    ))
}
