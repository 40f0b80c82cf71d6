//! Pub/Sub's `doctor` probes: DNS and TCP to the endpoint, the
//! service-account key, a token exchange, and the topic: that it exists (a
//! GET) and that the account may publish to it (`testIamPermissions`).
//! Nothing is published.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::Method;

use super::api_url;
use super::config::PubSubSettings;
use super::token::ServiceAccount;
use crate::config::SubscriptionConfig;
use crate::deliver::envelope::Source;
use crate::deliver::http_answer::{describe_failure, printable};
use crate::deliver::http_client::{subscription_endpoint, subscription_headers, Reply};
use crate::deliver::probe::{dns_step, step, tcp_step, Step, Verdict};

/// How long DNS and TCP to the endpoint may take.
const PROBE_BUDGET: Duration = Duration::from_secs(10);

/// The steps of a Pub/Sub subscription, in the order they run.
pub const STEP_NAMES: [&str; 5] = ["dns", "tcp", "key", "token", "topic"];

/// Runs the steps into `steps` until one fails; `Err` holds the step that
/// ends the check.
pub async fn probe(sub: &SubscriptionConfig, _source: &Source, steps: &mut Vec<Step>) -> Result<(), Vec<Step>> {
    let fail = |name, detail: String, hint: &str| vec![step(name, Verdict::Fail, detail, Some(hint))];
    let Some(settings) = sub.kind.settings::<PubSubSettings>() else {
        return Err(fail("dns", "not a Pub/Sub subscription".into(), "check url"));
    };
    let budget = sub.timeout.min(PROBE_BUDGET);
    let endpoint = &settings.endpoint;
    let host = endpoint
        .host_str()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_string();
    let port = endpoint.port_or_known_default().unwrap_or(443);
    let (addrs, found) = dns_step(&host, port, budget).await.map_err(|s| vec![s])?;
    steps.push(found);
    steps.push(tcp_step(&addrs, budget).await.map_err(|s| vec![s])?);
    let account = match &settings.credentials_file {
        None => {
            steps.push(step(
                "key",
                Verdict::Skip,
                format!("no credentials_file: {endpoint} is on loopback (the emulator), no token is sent"),
                None,
            ));
            None
        }
        Some(path) => {
            let account = ServiceAccount::from_file(path, sub.timeout).map_err(|e| {
                fail(
                    "key",
                    e,
                    "give the service account's JSON key file, readable by the agent's user",
                )
            })?;
            steps.push(step(
                "key",
                Verdict::Ok,
                format!("service account {}, token from {}", account.email, account.token_uri),
                None,
            ));
            Some(account)
        }
    };
    let bearer = match &account {
        None => {
            steps.push(step("token", Verdict::Skip, "no service account", None));
            None
        }
        Some(account) => {
            let started = Instant::now();
            let token = account.fetch_token(sub.timeout).await.map_err(|e| {
                fail(
                    "token",
                    e,
                    "check the key is not disabled or deleted (IAM > Service accounts), and that the store reaches oauth2.googleapis.com",
                )
            })?;
            steps.push(step(
                "token",
                Verdict::Ok,
                format!(
                    "access token for {}, valid {} min ({} ms)",
                    account.email,
                    token.valid_for.as_secs() / 60,
                    started.elapsed().as_millis()
                ),
                None,
            ));
            Some(token.header)
        }
    };
    steps.push(topic_step(sub, settings, account.as_ref().map(|a| a.email.as_str()), bearer).await?);
    Ok(())
}

/// `topic`: a GET of the topic, then whether the account may publish.
async fn topic_step(
    sub: &SubscriptionConfig,
    settings: &PubSubSettings,
    who: Option<&str>,
    bearer: Option<HeaderValue>,
) -> Result<Step, Vec<Step>> {
    let topic = settings.topic_path();
    let who = who.unwrap_or("the agent");
    let fail = |detail: String, hint: &str| vec![step("topic", Verdict::Fail, detail, Some(hint))];
    let mut headers = subscription_headers(sub).map_err(|e| fail(e, "fix headers in the config"))?;
    if let Some(bearer) = bearer {
        headers.insert(AUTHORIZATION, bearer);
    }
    let get = call(sub, settings, "", Method::GET, headers.clone(), Bytes::new()).await?;
    match get.status.as_u16() {
        200 => {}
        404 => {
            return Err(fail(
                format!("{topic} does not exist ({})", said(&get)),
                "create the topic, or fix url; events wait in order until it exists",
            ))
        }
        401 => {
            return Err(fail(
                format!("the token was refused ({})", said(&get)),
                "check the key file",
            ))
        }
        // Reading a topic needs pubsub.topics.get, which a publisher may
        // lack: go on to the permission itself.
        403 => {}
        _ => return Err(fail(format!("GET {topic}: {}", said(&get)), "see the answer")),
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let body = Bytes::from_static(br#"{"permissions":["pubsub.topics.publish"]}"#);
    let test = call(sub, settings, ":testIamPermissions", Method::POST, headers, body).await?;
    let exists = if get.status.as_u16() == 200 {
        "exists"
    } else {
        "cannot be read (no pubsub.topics.get)"
    };
    if !test.status.is_success() {
        // The emulator has no IAM: a topic it has is one it takes.
        let verdict = if get.status.as_u16() == 200 {
            Verdict::Ok
        } else {
            Verdict::Warn
        };
        return Ok(step(
            "topic",
            verdict,
            format!("{topic} {exists}; publish permission not checked ({})", said(&test)),
            None,
        ));
    }
    let granted: serde_json::Value = serde_json::from_slice(&test.body).unwrap_or_default();
    let may_publish = granted["permissions"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p == "pubsub.topics.publish"));
    if !may_publish {
        return Err(fail(
            format!("{topic} {exists}, but {who} may not publish to it"),
            "grant the service account roles/pubsub.publisher on the topic",
        ));
    }
    Ok(step(
        "topic",
        Verdict::Ok,
        format!("{topic} {exists}; {who} may publish"),
        None,
    ))
}

/// One request of the topic step, with delivery's client.
async fn call(
    sub: &SubscriptionConfig,
    settings: &PubSubSettings,
    suffix: &str,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Reply, Vec<Step>> {
    let fail = |detail: String| vec![step("topic", Verdict::Fail, detail, Some("check endpoint"))];
    let url = api_url(settings, suffix).map_err(fail)?;
    let endpoint = subscription_endpoint(sub, &url).map_err(fail)?;
    let budget = sub.timeout.min(Duration::from_secs(30));
    endpoint
        .request(method, headers, body)
        .await
        .map_err(|f| fail(describe_failure(&f, budget)))
}

/// The answer in a few words: status and Google's message.
fn said(reply: &Reply) -> String {
    let text = printable(&String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)]));
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string());
    format!("HTTP {}: {message}", reply.status.as_u16())
}
