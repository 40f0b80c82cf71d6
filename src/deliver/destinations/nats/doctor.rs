//! The NATS destination's `doctor` probes: DNS and TCP to the first server,
//! then a connection as the agent makes it (`nats`) and the stream that takes
//! each subject (`stream`).

use std::time::Duration;

use crate::config::SubscriptionConfig;
use crate::deliver::envelope::Source;
use crate::deliver::probe::{dns_step, step, tcp_step, Step, Verdict};

/// Runs the NATS steps (DNS and TCP to the first server, then `nats` and
/// `stream`) into `steps` until one fails; `Err` holds the steps that end
/// the check.
pub async fn probe(sub: &SubscriptionConfig, source: &Source, steps: &mut Vec<Step>) -> Result<(), Vec<Step>> {
    let url = &sub.url;
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string();
    let port = url.port_or_known_default().unwrap_or(4222);
    let budget = sub.timeout.min(Duration::from_secs(10));
    let (addrs, found) = dns_step(&host, port, budget).await.map_err(|s| vec![s])?;
    steps.push(found);
    steps.push(tcp_step(&addrs, budget).await.map_err(|s| vec![s])?);
    steps.extend(nats_steps(sub, source).await?);
    Ok(())
}

/// `nats` and `stream`: connect as the agent does (every server of `url`,
/// authentication, TLS), then ask JetStream which stream takes the subject of
/// each event type the subscription names (`SaleCreated` as a sample when it
/// takes every type).
async fn nats_steps(sub: &SubscriptionConfig, source: &Source) -> Result<Vec<Step>, Vec<Step>> {
    let nats = super::Nats::new(std::sync::Arc::new(sub.clone()), source.clone()).map_err(|e| {
        vec![step(
            "nats",
            Verdict::Fail,
            e,
            Some("fix credentials_file in the config"),
        )]
    })?;
    let mut types: Vec<String> = sub.events.iter().flatten().cloned().collect();
    if sub.heartbeats {
        types.push(crate::event::HEARTBEAT_TYPE.to_string());
    }
    types.sort();
    if types.is_empty() {
        types.push("SaleCreated".to_string());
    }
    let started = std::time::Instant::now();
    let mut found = Vec::new();
    for event_type in &types {
        let subject = nats.subject_of(event_type, "doctor:check");
        match nats.stream_for(&subject).await {
            Ok(Some(stream)) => found.push(format!("stream {stream} takes {subject}")),
            Ok(None) => {
                return Err(vec![
                    connected_step(sub, started),
                    step(
                        "stream",
                        Verdict::Fail,
                        format!("no stream takes {subject}"),
                        Some("central IT must create a stream whose subjects take it (README: NATS JetStream); events wait until then"),
                    ),
                ])
            }
            Err(e) if found.is_empty() => return Err(vec![nats_failed_step(e)]),
            Err(e) => return Err(vec![connected_step(sub, started), step("stream", Verdict::Fail, e, None)]),
        }
    }
    Ok(vec![
        connected_step(sub, started),
        step("stream", Verdict::Ok, found.join("; "), None),
    ])
}

/// `nats` passed: connected (and authenticated) within the time shown.
fn connected_step(sub: &SubscriptionConfig, started: std::time::Instant) -> Step {
    step(
        "nats",
        Verdict::Ok,
        format!(
            "connected to {} ({} ms)",
            sub.url_for_logs(),
            started.elapsed().as_millis()
        ),
        None,
    )
}

/// `nats` failed: the connection, the login or TLS; the hint says which.
fn nats_failed_step(e: String) -> Step {
    let lower = e.to_ascii_lowercase();
    let hint = if lower.contains("authoriz") || lower.contains("authentic") || lower.contains("credentials") {
        "the servers refused the login: check credentials_file, token or user + password"
    } else if lower.contains("tls") || lower.contains("certificate") {
        "TLS failed: check tls:// against the servers' config, ca_file, client_cert and client_key"
    } else if lower.contains("jetstream") || lower.contains("no responders") {
        "the servers answer but JetStream does not: is it enabled for this account?"
    } else {
        "check the servers and ports in url, and that nats-server runs there"
    };
    step("nats", Verdict::Fail, e, Some(hint))
}
