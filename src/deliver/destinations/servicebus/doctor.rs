//! Service Bus's `doctor` probes: DNS and TCP to the namespace (or
//! `endpoint`), TLS with delivery's own client (a GET without a token: any
//! answer means the connection and certificate are fine), `token` (the SAS
//! key read and a token signed, or Entra ID's exchange done), and `send`.
//!
//! What `send` checks, and what not: Service Bus has no read-only "may I
//! send here" call short of Manage rights (which a store must not hold).
//! `send` POSTs an *empty* Send Message Batch with the token: the service
//! checks the token (401), the Send right (403) and the queue or topic
//! (404) before it looks at the messages, of which there are none, so
//! nothing is stored. It cannot check that the entity has sessions and
//! duplicate detection enabled, nor its size quota: those need Manage
//! rights (docs/SERVICEBUS.md says how central IT checks them).

use std::time::{Duration, Instant};

use super::answer::{detail_of, wording};
use super::config::Credential;
use super::ServiceBus;
use crate::config::SubscriptionConfig;
use crate::deliver::envelope::Source;
use crate::deliver::http_answer::describe_failure;
use crate::deliver::http_client::Failure;
use crate::deliver::probe::{dns_step, step, tcp_step, Step, Verdict};

/// The steps of a Service Bus subscription, in the order they run.
pub const STEP_NAMES: [&str; 5] = ["dns", "tcp", "tls", "token", "send"];

/// What `send` cannot see, said with its verdict.
const NOT_CHECKED: &str = "not checked (needs Manage rights): sessions and duplicate detection on the entity";

/// Runs the steps into `steps` until one fails; `Err` holds the steps that
/// end the check.
pub async fn probe(sub: &SubscriptionConfig, source: &Source, steps: &mut Vec<Step>) -> Result<(), Vec<Step>> {
    let sb = match ServiceBus::new(std::sync::Arc::new(sub.clone()), source.clone()) {
        Ok(sb) => sb,
        Err(e) => return Err(not_built(steps, e)),
    };
    let base = &sb.settings().endpoint;
    let host = base.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string();
    let port = base.port_or_known_default().unwrap_or(443);
    let budget = sub.timeout.min(Duration::from_secs(10));
    if let Some(proxy) = sb.proxy() {
        let through = format!("through the proxy {proxy} (HTTPS_PROXY / HTTP_PROXY)");
        steps.push(step("dns", Verdict::Skip, format!("{host}: {through}"), None));
        steps.push(step("tcp", Verdict::Skip, through, None));
    } else {
        let (addrs, found) = dns_step(&host, port, budget).await.map_err(|s| vec![s])?;
        steps.push(found);
        steps.push(tcp_step(&addrs, budget).await.map_err(|s| vec![s])?);
    }
    steps.push(tls_step(&sb, sub).await?);
    steps.push(token_step(&sb, sub).await?);
    steps.push(send_step(&sb, sub).await?);
    Ok(())
}

/// The destination could not be made: a secret file (the `token` step
/// fails, the network ones were not run) or the TLS files (`tls` fails).
fn not_built(steps: &[Step], e: String) -> Vec<Step> {
    let skipped = |names: &[&'static str]| -> Vec<Step> {
        names
            .iter()
            .skip(steps.len())
            .map(|n| step(n, Verdict::Skip, "not run: the subscription cannot start", None))
            .collect()
    };
    if e.contains("sas_key_file") || e.contains("client_secret_file") {
        let mut out = skipped(&["dns", "tcp", "tls"]);
        out.push(step(
            "token",
            Verdict::Fail,
            e,
            Some("the agent's user must be able to read the file, which holds only the key or secret"),
        ));
        out
    } else if e.contains("batch.max_bytes") {
        let mut out = skipped(&["dns", "tcp", "tls", "token"]);
        out.push(step("send", Verdict::Fail, e, Some("fix batch in the config")));
        out
    } else {
        let mut out = skipped(&["dns", "tcp"]);
        out.push(step(
            "tls",
            Verdict::Fail,
            e,
            Some("fix ca_file / client_cert / client_key, or the proxy variable"),
        ));
        out
    }
}

/// `tls`: a GET to the messages URL without a token.
async fn tls_step(sb: &ServiceBus, sub: &SubscriptionConfig) -> Result<Step, Vec<Step>> {
    let https = sb.settings().endpoint.scheme() == "https";
    let started = Instant::now();
    match sb.unauthenticated_get().await {
        Ok(reply) if https => Ok(step(
            "tls",
            Verdict::Ok,
            format!(
                "handshake ok, certificate trusted; answered {} without a token ({} ms)",
                reply.status.as_u16(),
                started.elapsed().as_millis()
            ),
            None,
        )),
        Ok(reply) => Ok(step(
            "tls",
            Verdict::Skip,
            format!("plain http endpoint (answered {}): not encrypted", reply.status.as_u16()),
            Some("only for tests on this machine; the namespace is https"),
        )),
        Err(Failure::Tls(reason)) => Err(vec![step(
            "tls",
            Verdict::Fail,
            reason,
            Some("the certificate is not trusted: a TLS-inspecting proxy needs its CA in ca_file; or check the system time"),
        )]),
        Err(failure) => Err(vec![step(
            "tls",
            Verdict::Fail,
            describe_failure(&failure, sub.timeout),
            Some("the namespace accepts connections but gives no HTTP answer (a proxy or firewall?)"),
        )]),
    }
}

/// `token`: the SAS token signed, or Entra ID's token fetched.
async fn token_step(sb: &ServiceBus, sub: &SubscriptionConfig) -> Result<Step, Vec<Step>> {
    let started = Instant::now();
    match sb.authorization().await {
        Ok(_) => {
            let detail = match &sb.settings().credential {
                Credential::Sas { key_file, .. } => format!(
                    "{} read from {}, token signed for {} (the service checks it in the next step)",
                    sb.identity(),
                    key_file.display(),
                    sb.settings().resource_uri()
                ),
                Credential::Entra { .. } => format!(
                    "{} got a token from Entra ID ({} ms)",
                    sb.identity(),
                    started.elapsed().as_millis()
                ),
            };
            Ok(step("token", Verdict::Ok, detail, None))
        }
        Err(answer) => Err(vec![step(
            "token",
            Verdict::Fail,
            answer.error.unwrap_or_default(),
            Some(match sub.kind.settings::<super::config::ServiceBusSettings>().map(|s| &s.credential) {
                Some(Credential::Entra { .. }) => {
                    "check tenant_id, client_id, the secret in client_secret_file (its value, not its id) and authority"
                }
                _ => "check sas_key_file",
            }),
        )]),
    }
}

/// `send`: an empty batch with the token.
async fn send_step(sb: &ServiceBus, sub: &SubscriptionConfig) -> Result<Step, Vec<Step>> {
    let result = match sb.empty_batch().await {
        Ok(result) => result,
        Err(answer) => {
            return Err(vec![step(
                "send",
                Verdict::Fail,
                answer.error.unwrap_or_default(),
                None,
            )])
        }
    };
    let reply = match result {
        Ok(reply) => reply,
        Err(failure) => {
            return Err(vec![step(
                "send",
                Verdict::Fail,
                describe_failure(&failure, sub.timeout),
                Some("the namespace stopped answering between two steps"),
            )])
        }
    };
    let code = reply.status.as_u16();
    let detail = detail_of(&reply.body);
    let entity = &sb.settings().entity;
    let fail = |hint: &str| {
        Err(vec![step(
            "send",
            Verdict::Fail,
            sb.scrub(&wording(code, &detail, &sb.target()), None),
            Some(hint),
        )])
    };
    match code {
        // The messages were looked at: everything before them passed.
        200..=299 | 400 => Ok(step(
            "send",
            Verdict::Ok,
            format!(
                "token and Send right accepted for {entity:?}: an empty batch (nothing stored) answered {code}; {NOT_CHECKED}"
            ),
            None,
        )),
        401 => fail("the service refused the token: see the detail"),
        403 => fail("the identity lacks the right to send (docs/SERVICEBUS.md)"),
        404 | 410 => fail("central IT must create the queue or topic, with sessions and duplicate detection"),
        429 | 503 => Ok(step(
            "send",
            Verdict::Warn,
            format!("the namespace is busy (HTTP {code}): the agent waits and sends later; {NOT_CHECKED}"),
            None,
        )),
        _ => Ok(step(
            "send",
            Verdict::Warn,
            sb.scrub(&wording(code, &detail, &sb.target()), None),
            Some("an answer the agent did not expect to an empty batch"),
        )),
    }
}
