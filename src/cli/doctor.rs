//! `doctor`: can this store reach every subscription? DNS, TCP connect, TLS
//! handshake (with the configured CA and client certificate), an HTTP answer
//! and clock skew from the `Date` header; each step with a pass/fail line and
//! a hint. Exit 1 if any step fails.
//!
//! The TLS and HTTP steps use the very client delivery uses
//! (`deliver::destinations::webhook::endpoint`: its TLS settings, the proxy from the
//! environment), so a pass here means delivery can connect too. Nothing is
//! POSTed: the check is a GET.

use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use serde::Serialize;

use super::{init_logging, load_config, runtime, CliError, CliResult};
use crate::config::SubscriptionConfig;
use crate::deliver::destinations::webhook::http_client::{Failure, Reply};
use crate::deliver::envelope::Source;

/// Arguments of `doctor`.
#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Only this subscription.
    #[arg(long, value_name = "S")]
    pub subscription: Option<String>,
}

/// Clock skew beyond which receivers refuse our signatures (Standard Webhooks
/// libraries allow 5 minutes).
const SKEW_FAIL: Duration = Duration::from_secs(300);
/// Skew worth a warning.
const SKEW_WARN: Duration = Duration::from_secs(30);

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

fn step(step: &'static str, verdict: Verdict, detail: impl Into<String>, hint: Option<&str>) -> Step {
    Step {
        step,
        verdict,
        detail: detail.into(),
        hint: hint.map(str::to_string),
    }
}

/// One subscription's checks.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Subscription name.
    pub subscription: String,
    /// Its URL (no credentials).
    pub url: String,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

async fn check(sub: SubscriptionConfig, source: Source) -> Report {
    let steps = run_steps(&sub, &source).await;
    Report {
        subscription: sub.name.clone(),
        url: sub.url_for_logs(),
        steps,
    }
}

/// The steps of a webhook, in the order they run.
const STEP_NAMES: [&str; 5] = ["dns", "tcp", "tls", "http", "clock"];
/// The steps of a NATS subscription (its first server), in order.
const NATS_STEP_NAMES: [&str; 4] = ["dns", "tcp", "nats", "stream"];

/// The steps in order; after a failure the rest are skipped.
async fn run_steps(sub: &SubscriptionConfig, source: &Source) -> Vec<Step> {
    let mut steps = Vec::new();
    if let Err(failed) = try_steps(sub, source, &mut steps).await {
        steps.extend(failed);
        let names: &[&'static str] = if sub.nats.is_some() {
            &NATS_STEP_NAMES
        } else {
            &STEP_NAMES
        };
        for name in names.iter().copied().skip(steps.len()) {
            steps.push(step(name, Verdict::Skip, "not run", None));
        }
    }
    steps
}

/// Runs the steps into `steps` until one fails; `Err` holds the steps that
/// end the check (the failed one, and a skipped one before it).
async fn try_steps(sub: &SubscriptionConfig, source: &Source, steps: &mut Vec<Step>) -> Result<(), Vec<Step>> {
    let url = &sub.url;
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string();
    let port = match (&sub.nats, url.port_or_known_default()) {
        (Some(_), port) => port.unwrap_or(4222),
        (None, port) => port.unwrap_or(443),
    };
    let budget = sub.timeout.min(Duration::from_secs(10));
    // Delivery's own client (TLS settings, the proxy from the environment).
    let endpoint = sub
        .nats
        .is_none()
        .then(|| crate::deliver::destinations::webhook::endpoint(sub));
    let bad_proxy = matches!(&endpoint, Some(Err(e)) if is_proxy_error(e));
    if let Some(proxy) = endpoint.as_ref().and_then(|e| e.as_ref().ok()).and_then(|e| e.proxy()) {
        // Through a proxy the store may not resolve or reach the host itself.
        let through = format!("through the proxy {proxy} (HTTPS_PROXY / HTTP_PROXY)");
        steps.push(step("dns", Verdict::Skip, format!("{host}: {through}"), None));
        steps.push(step("tcp", Verdict::Skip, through, None));
    } else if bad_proxy {
        // Delivery would go through that proxy: its error is the one to fix.
        let unusable = "the proxy variable cannot be used (see tls)";
        steps.push(step("dns", Verdict::Skip, unusable, None));
        steps.push(step("tcp", Verdict::Skip, unusable, None));
    } else {
        let (addrs, found) = dns_step(&host, port, budget).await.map_err(|s| vec![s])?;
        steps.push(found);
        steps.push(tcp_step(&addrs, budget).await.map_err(|s| vec![s])?);
    }
    let Some(endpoint) = endpoint else {
        steps.extend(nats_steps(sub, source).await?);
        return Ok(());
    };
    // TLS + HTTP.
    let endpoint = endpoint.map_err(|e| {
        // Delivery's client names a proxy variable it cannot use with the
        // password redacted (`http_client::redact_userinfo`).
        let hint = if is_proxy_error(&e) {
            "fix the proxy variable (HTTPS_PROXY / HTTP_PROXY / ALL_PROXY) in the agent's environment"
        } else {
            "fix ca_file / client_cert / client_key in the config"
        };
        vec![step("tls", Verdict::Fail, e, Some(hint))]
    })?;
    steps.extend(http_steps(sub, &endpoint).await?);
    Ok(())
}

/// Whether delivery's client refused a proxy variable (it names the
/// variable, its password redacted), rather than the TLS files.
fn is_proxy_error(error: &str) -> bool {
    [
        "HTTPS_PROXY=",
        "https_proxy=",
        "HTTP_PROXY=",
        "http_proxy=",
        "ALL_PROXY=",
        "all_proxy=",
    ]
    .iter()
    .any(|name| error.contains(name))
}

/// `nats` and `stream`: connect as the agent does (every server of `url`,
/// authentication, TLS), then ask JetStream which stream takes the subject of
/// each event type the subscription names (`SaleCreated` as a sample when it
/// takes every type).
#[cfg(feature = "nats")]
async fn nats_steps(sub: &SubscriptionConfig, source: &Source) -> Result<Vec<Step>, Vec<Step>> {
    let nats = crate::deliver::destinations::nats::Nats::new(std::sync::Arc::new(sub.clone()), source.clone())
        .map_err(|e| {
            vec![step(
                "nats",
                Verdict::Fail,
                e,
                Some("fix credentials_file in the config"),
            )]
        })?;
    let mut types: Vec<String> = sub.events.iter().flatten().cloned().collect();
    if sub.heartbeats {
        types.push(crate::heartbeat::EVENT_TYPE.to_string());
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

/// Without the `nats` feature a NATS subscription cannot be checked.
#[cfg(not(feature = "nats"))]
async fn nats_steps(_sub: &SubscriptionConfig, _source: &Source) -> Result<Vec<Step>, Vec<Step>> {
    Err(vec![step(
        "nats",
        Verdict::Fail,
        "this build of store-outbox has no NATS support",
        Some("build it with `cargo build --release --features nats`"),
    )])
}

/// `nats` passed: connected (and authenticated) within the time shown.
#[cfg(feature = "nats")]
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
#[cfg(feature = "nats")]
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

/// `dns`: the host's addresses.
async fn dns_step(host: &str, port: u16, budget: Duration) -> Result<(Vec<std::net::SocketAddr>, Step), Step> {
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
async fn tcp_step(addrs: &[std::net::SocketAddr], budget: Duration) -> Result<Step, Step> {
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

/// `tls`, `http` and `clock`, from one GET with delivery's client.
async fn http_steps(
    sub: &SubscriptionConfig,
    endpoint: &crate::deliver::destinations::webhook::http_client::Endpoint,
) -> Result<Vec<Step>, Vec<Step>> {
    let tls = sub.url.scheme() == "https";
    let started = Instant::now();
    let headers = crate::deliver::destinations::webhook::fixed_headers(sub).map_err(|e| {
        vec![step(
            "http",
            Verdict::Fail,
            e,
            Some("fix the subscription's headers in the config"),
        )]
    })?;
    match endpoint.request(http::Method::GET, headers, bytes::Bytes::new()).await {
        Ok(reply) => Ok(answered_steps(tls, &reply, started.elapsed().as_millis())),
        Err(failure) => Err(unanswered_steps(tls, &failure, sub.timeout)),
    }
}

/// The steps of a GET that got an answer (`ms` after it was sent).
fn answered_steps(tls: bool, response: &Reply, ms: u128) -> Vec<Step> {
    let tls_step = if tls {
        step("tls", Verdict::Ok, "handshake ok, certificate trusted", None)
    } else {
        step(
            "tls",
            Verdict::Skip,
            "plain http: not encrypted",
            Some("use https:// outside the store's own network"),
        )
    };
    let status = response.status;
    let (verdict, hint) = if status.is_server_error() {
        (
            Verdict::Warn,
            Some("the endpoint answers but reports an error of its own"),
        )
    } else {
        (Verdict::Ok, None)
    };
    let http_step = step(
        "http",
        verdict,
        format!("GET answered {status} ({ms} ms); webhooks are POSTed"),
        hint,
    );
    vec![tls_step, http_step, clock_step(response)]
}

/// `clock`: our clock against the answer's `Date` header.
fn clock_step(response: &Reply) -> Step {
    let date = response
        .headers
        .get(http::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let Some(theirs) = date else {
        return step("clock", Verdict::Skip, "no Date header in the answer", None);
    };
    let (skew, sign) = match SystemTime::now().duration_since(theirs) {
        Ok(d) => (d, "ahead of"),
        Err(e) => (e.duration(), "behind"),
    };
    let detail = format!("this clock is {}s {sign} the endpoint's", skew.as_secs());
    let hint = Some("fix the store PC's time (NTP): receivers refuse signatures more than 5 minutes off");
    if skew > SKEW_FAIL {
        step("clock", Verdict::Fail, detail, hint)
    } else if skew > SKEW_WARN {
        step("clock", Verdict::Warn, detail, hint)
    } else {
        step("clock", Verdict::Ok, detail, None)
    }
}

/// The steps of a GET that got no answer: TLS refused, or no HTTP answer.
fn unanswered_steps(tls: bool, failure: &Failure, timeout: Duration) -> Vec<Step> {
    let text = match failure {
        Failure::Tls(reason) => {
            return vec![step(
                "tls",
                Verdict::Fail,
                reason.clone(),
                Some("the server's certificate is not trusted: set ca_file to the CA that signed it, or check the system time"),
            )]
        }
        other => crate::deliver::destinations::webhook::describe_failure(other, timeout),
    };
    let tls_step = if tls {
        step("tls", Verdict::Skip, "not reached", None)
    } else {
        step("tls", Verdict::Skip, "plain http", None)
    };
    let hint = match failure {
        Failure::Timeout => "the endpoint accepts connections but does not answer within the timeout",
        Failure::Connect(_) => "the connection (or the proxy named by HTTPS_PROXY / HTTP_PROXY) failed",
        _ => "the endpoint closed the connection without an HTTP answer",
    };
    vec![tls_step, step("http", Verdict::Fail, text, Some(hint))]
}

/// Runs the checks and prints them.
pub fn run(path: Option<&std::path::Path>, args: DoctorArgs) -> CliResult {
    let config = load_config(path)?;
    init_logging("error");
    let subs: Vec<SubscriptionConfig> = config
        .subscriptions
        .iter()
        .filter(|s| args.subscription.as_deref().is_none_or(|n| n == s.name))
        .cloned()
        .collect();
    if subs.is_empty() {
        return match args.subscription {
            Some(name) => Err(CliError::usage(format!("--subscription {name:?}: not in the config"))),
            None => {
                println!("no subscriptions configured: nothing to check");
                Ok(())
            }
        };
    }
    let rt = runtime()?;
    let source = Source {
        store_id: config.agent.store_id.clone(),
        agent_id: config.agent.agent_id.clone(),
    };
    let reports: Vec<Report> = rt.block_on(check_all(subs, move |sub| check(sub, source.clone())));
    let failed = any_failed(&reports);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports).unwrap_or_default());
    } else {
        for r in &reports {
            println!("{}  {}", r.subscription, r.url);
            for s in &r.steps {
                let mark = match s.verdict {
                    Verdict::Ok => "ok  ",
                    Verdict::Warn => "WARN",
                    Verdict::Fail => "FAIL",
                    Verdict::Skip => "skip",
                };
                println!("  {mark}  {:<6} {}", s.step, s.detail);
                if let Some(h) = &s.hint {
                    if s.verdict != Verdict::Ok {
                        println!("              hint: {h}");
                    }
                }
            }
            println!();
        }
    }
    if failed {
        Err(CliError::runtime("some checks failed (see above)"))
    } else {
        Ok(())
    }
}

/// Whether any step of any report failed (doctor then exits 1).
fn any_failed(reports: &[Report]) -> bool {
    reports
        .iter()
        .flat_map(|r| &r.steps)
        .any(|s| s.verdict == Verdict::Fail)
}

/// Runs `check` on every subscription side by side; one report each, in
/// order. A check that panicked is a failed check: dropping it would let
/// doctor pass without having checked.
async fn check_all<F, Fut>(subs: Vec<SubscriptionConfig>, check: F) -> Vec<Report>
where
    F: Fn(SubscriptionConfig) -> Fut,
    Fut: std::future::Future<Output = Report> + Send + 'static,
{
    let handles: Vec<_> = subs
        .into_iter()
        .map(|s| (s.name.clone(), s.url_for_logs(), tokio::spawn(check(s))))
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for (subscription, url, handle) in handles {
        out.push(match handle.await {
            Ok(report) => report,
            Err(e) => Report {
                subscription,
                url,
                steps: vec![step(
                    "check",
                    Verdict::Fail,
                    format!("the check itself failed: {}", join_error_text(e)),
                    Some("a bug in store-outbox: please report it with this output"),
                )],
            },
        });
    }
    out
}

/// What a check task ended with instead of a report.
fn join_error_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    format!("panicked: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(names: &[&str]) -> Vec<SubscriptionConfig> {
        let text: String = names
            .iter()
            .map(|n| {
                format!(
                    "[[subscription]]\nname = \"{n}\"\nurl = \"http://127.0.0.1:9/{n}\"\n\
                     secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"
                )
            })
            .collect();
        crate::config::parse(&text, None).expect("valid").subscriptions
    }

    async fn fine_or_panic(sub: SubscriptionConfig) -> Report {
        if sub.name == "boom" {
            panic!("a check went wrong");
        }
        Report {
            subscription: sub.name.clone(),
            url: sub.url_for_logs(),
            steps: vec![step("dns", Verdict::Ok, "fine", None)],
        }
    }

    #[tokio::test]
    async fn no_http_answer_fails_at_http_and_skips_the_clock() {
        // Accepts connections and closes them unanswered.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                drop(conn);
            }
        });
        let mut sub = subs(&["a"]).remove(0);
        sub.url = format!("http://127.0.0.1:{port}/").parse().expect("url");
        let steps = run_steps(&sub, &test_source()).await;
        let got: Vec<(&str, Verdict)> = steps.iter().map(|s| (s.step, s.verdict)).collect();
        assert_eq!(
            got,
            [
                ("dns", Verdict::Ok),
                ("tcp", Verdict::Ok),
                ("tls", Verdict::Skip),
                ("http", Verdict::Fail),
                ("clock", Verdict::Skip),
            ]
        );
    }

    fn test_source() -> Source {
        Source {
            store_id: "0042".into(),
            agent_id: "till-03".into(),
        }
    }

    #[tokio::test]
    async fn a_nats_server_that_does_not_speak_nats_fails_at_nats_after_dns_and_tcp() {
        // Accepts connections and says nothing: no NATS INFO ever comes.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let text = format!(
            "[[subscription]]\nname = \"bus\"\nurl = \"nats://127.0.0.1:{port}\"\n\
             subject = \"pos.{{type}}\"\ntimeout = \"1s\"\n"
        );
        let sub = crate::config::parse(&text, None)
            .expect("valid")
            .subscriptions
            .remove(0);
        let steps = run_steps(&sub, &test_source()).await;
        let got: Vec<(&str, Verdict)> = steps.iter().map(|s| (s.step, s.verdict)).collect();
        assert_eq!(
            got,
            [
                ("dns", Verdict::Ok),
                ("tcp", Verdict::Ok),
                ("nats", Verdict::Fail),
                ("stream", Verdict::Skip),
            ]
        );
        assert!(steps[1].detail.contains(&port.to_string()), "{}", steps[1].detail);
        drop(listener);
    }

    #[tokio::test]
    async fn a_check_that_panicked_is_reported_as_failed() {
        let reports = check_all(subs(&["a", "boom", "c"]), fine_or_panic).await;
        let names: Vec<&str> = reports.iter().map(|r| r.subscription.as_str()).collect();
        assert_eq!(names, ["a", "boom", "c"], "one report per subscription, in order");
        let boom = &reports[1];
        assert_eq!(boom.url, "http://127.0.0.1:9/boom");
        assert_eq!(boom.steps.len(), 1);
        assert_eq!(boom.steps[0].verdict, Verdict::Fail);
        assert!(
            boom.steps[0].detail.contains("a check went wrong"),
            "{}",
            boom.steps[0].detail
        );
        assert!(any_failed(&reports), "doctor must exit non-zero");
        assert!(!any_failed(&reports[..1]));
    }
}
