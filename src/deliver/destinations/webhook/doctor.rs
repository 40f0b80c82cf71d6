//! The webhook's `doctor` probes: DNS, TCP connect, TLS handshake (with the
//! configured CA and client certificate), an HTTP answer and clock skew from
//! the `Date` header. The TLS and HTTP steps use the very client delivery
//! uses (`super::endpoint`: its TLS settings, the proxy from the
//! environment), so a pass here means delivery can connect too. Nothing is
//! POSTed: the check is a GET.

use std::time::{Duration, Instant, SystemTime};

use crate::config::SubscriptionConfig;
use crate::deliver::http_client::{Endpoint, Failure, Reply};
use crate::deliver::probe::{dns_step, step, tcp_step, Step, Verdict};

/// The steps of a webhook, in the order they run.
pub const STEP_NAMES: [&str; 5] = ["dns", "tcp", "tls", "http", "clock"];

/// Clock skew beyond which receivers refuse our signatures (Standard Webhooks
/// libraries allow 5 minutes).
const SKEW_FAIL: Duration = Duration::from_secs(300);
/// Skew worth a warning.
const SKEW_WARN: Duration = Duration::from_secs(30);

/// Runs the webhook's steps into `steps` until one fails; `Err` holds the
/// steps that end the check (the failed one, and a skipped one before it).
pub async fn probe(sub: &SubscriptionConfig, steps: &mut Vec<Step>) -> Result<(), Vec<Step>> {
    let url = &sub.url;
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let budget = sub.timeout.min(Duration::from_secs(10));
    // Delivery's own client (TLS settings, the proxy from the environment).
    let endpoint = super::endpoint(sub);
    let bad_proxy = matches!(&endpoint, Err(e) if is_proxy_error(e));
    if let Some(proxy) = endpoint.as_ref().ok().and_then(|e| e.proxy()) {
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

/// `tls`, `http` and `clock`, from one GET with delivery's client.
async fn http_steps(sub: &SubscriptionConfig, endpoint: &Endpoint) -> Result<Vec<Step>, Vec<Step>> {
    let tls = sub.url.scheme() == "https";
    let started = Instant::now();
    let headers = crate::deliver::http_client::subscription_headers(sub).map_err(|e| {
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
        other => crate::deliver::http_answer::describe_failure(other, timeout),
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
