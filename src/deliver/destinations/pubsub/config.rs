//! The keys of a Google Cloud Pub/Sub subscription
//! (`pubsub://projects/<project>/topics/<topic>`): the topic, the REST
//! `endpoint` (Google's, a regional one, or the emulator's), and the
//! service-account key (`credentials_file`), which only the emulator may
//! go without.

use std::path::PathBuf;

use crate::config::{BatchLimits, ConfigError, DestinationKind, KindConfig, KindParsed, KindSettings, OwnKeys};

/// The Pub/Sub kind as the config file sees it.
pub static CONFIG: DestinationKind = DestinationKind {
    name: "Pub/Sub",
    schemes: &["pubsub"],
    keys: &["credentials_file", "endpoint"],
    refuses: &[
        (
            "compression",
            "only for http(s) urls; a Pub/Sub publish call is JSON that Google reads uncompressed",
        ),
        (
            "format",
            "only for http(s) urls; a Pub/Sub message's data is always the webhook envelope",
        ),
    ],
    secret_required: false,
    // The publish call's limits: 1,000 messages and 10 MB a request.
    batch_limits: Some(BatchLimits {
        max_events: 1000,
        max_bytes: 10_000_000,
    }),
    parse,
};

/// Google's global endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://pubsub.googleapis.com";

/// What a Pub/Sub subscription publishes to, and how it signs in.
#[derive(Debug, Clone, PartialEq)]
pub struct PubSubSettings {
    /// The project id.
    pub project: String,
    /// The topic id.
    pub topic: String,
    /// The REST API's base URL (no trailing slash).
    pub endpoint: url::Url,
    /// The service-account key file (read at start); `None` only with an
    /// endpoint on loopback (the emulator): no token is sent.
    pub credentials_file: Option<PathBuf>,
}

impl PubSubSettings {
    /// `projects/P/topics/T`, as the API and messages name the topic.
    pub fn topic_path(&self) -> String {
        format!("projects/{}/topics/{}", self.project, self.topic)
    }
}

impl KindSettings for PubSubSettings {}

/// Whether `url` is `http(s)://` on a loopback address or `localhost`.
pub fn on_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn parse(keys: &OwnKeys<'_>) -> Result<KindParsed, ConfigError> {
    let url = keys.parsed_url()?;
    let (project, topic) = topic_of(keys)?;
    let endpoint = match keys.string("endpoint")? {
        None => url::Url::parse(DEFAULT_ENDPOINT).map_err(|e| keys.error("endpoint", e.to_string()))?,
        Some(text) => {
            let endpoint = url::Url::parse(text.trim_end_matches('/'))
                .map_err(|e| keys.error("endpoint", format!("{text:?}: {e}")))?;
            let plain_ok = endpoint.scheme() == "http" && on_loopback(&endpoint);
            if !(endpoint.scheme() == "https" || plain_ok) || endpoint.host_str().is_none() {
                return Err(keys.error(
                    "endpoint",
                    format!(
                        "{text:?}: give https://host (Google's or a regional endpoint), or http:// on loopback \
                         for the emulator (an access token never goes over plain HTTP)"
                    ),
                ));
            }
            if endpoint.query().is_some() || !matches!(endpoint.path(), "" | "/") {
                return Err(keys.error(
                    "endpoint",
                    format!("{text:?}: give the base URL only, e.g. {DEFAULT_ENDPOINT}"),
                ));
            }
            endpoint
        }
    };
    let credentials_file = keys.path("credentials_file")?;
    if credentials_file.is_none() && !on_loopback(&endpoint) {
        return Err(keys.missing(
            "credentials_file",
            "a Pub/Sub subscription needs a service-account key (only the emulator, with endpoint on \
             loopback, takes none)",
        ));
    }
    Ok(KindParsed {
        url,
        settings: KindConfig::with(
            CONFIG.name,
            PubSubSettings {
                project,
                topic,
                endpoint,
                credentials_file,
            },
        ),
    })
}

/// `pubsub://projects/<project>/topics/<topic>`, checked against Google's
/// naming rules so that a typo is found by `check-config`, not by the API.
fn topic_of(keys: &OwnKeys<'_>) -> Result<(String, String), ConfigError> {
    let shape = || {
        keys.url_error(format!(
            "{:?}: give pubsub://projects/<project>/topics/<topic>",
            keys.url()
        ))
    };
    let rest = keys
        .url()
        .get("pubsub://".len()..)
        .filter(|_| keys.url().get(..9).is_some_and(|s| s.eq_ignore_ascii_case("pubsub://")))
        .ok_or_else(shape)?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [projects, project, topics, topic] = parts.as_slice() else {
        return Err(shape());
    };
    if *projects != "projects" || *topics != "topics" {
        return Err(shape());
    }
    // Project ids: lower-case letters, digits, hyphens (6-30), or a
    // domain-scoped `example.com:id`; the emulator takes any. Be lenient on
    // length, strict on characters that would change the request's path.
    let project_ok = !project.is_empty()
        && project.len() <= 100
        && project
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.:".contains(c));
    if !project_ok {
        return Err(keys.url_error(format!(
            "project {project:?}: a project id is lower-case letters, digits and hyphens"
        )));
    }
    // Topic ids: 3-255 characters, a letter first, then letters, digits and
    // `-_.~+%`, not starting with `goog`.
    let topic_ok = (3..=255).contains(&topic.len())
        && topic.starts_with(|c: char| c.is_ascii_alphabetic())
        && topic.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c))
        && !topic.to_ascii_lowercase().starts_with("goog");
    if !topic_ok {
        return Err(keys.url_error(format!(
            "topic {topic:?}: a topic id is 3-255 letters, digits and -_.~+%, a letter first, not starting with goog"
        )));
    }
    Ok((project.to_string(), topic.to_string()))
}

#[cfg(test)]
mod tests {
    use crate::deliver::destinations::parse_config;

    use super::*;

    fn sub(url: &str, extra: &str) -> String {
        format!("[[subscription]]\nname = \"gcp\"\nurl = \"{url}\"\n{extra}")
    }

    fn settings(text: &str) -> PubSubSettings {
        let config = parse_config(text, Some(std::path::Path::new("/etc/store-outbox/c.toml"))).expect("valid");
        let kind = &config.subscriptions[0].kind;
        assert_eq!(kind.name(), "Pub/Sub");
        kind.settings::<PubSubSettings>().expect("Pub/Sub settings").clone()
    }

    fn error(text: &str) -> String {
        parse_config(text, Some(std::path::Path::new("c.toml")))
            .expect_err("refused")
            .0
    }

    #[test]
    fn the_contract_example_parses_and_the_emulator_needs_no_key() {
        let s = settings(&sub(
            "pubsub://projects/retail-prod/topics/pos-events",
            "credentials_file = \"gcp-sa.json\"\nbatch = { max_events = 500, max_bytes = \"8MiB\", linger = \"20ms\" }\n",
        ));
        assert_eq!(s.topic_path(), "projects/retail-prod/topics/pos-events");
        assert_eq!(s.endpoint.as_str(), "https://pubsub.googleapis.com/");
        assert_eq!(
            s.credentials_file.as_deref(),
            Some(std::path::Path::new("/etc/store-outbox/gcp-sa.json"))
        );
        let emulator = settings(&sub(
            "pubsub://projects/p1/topics/t01",
            "endpoint = \"http://127.0.0.1:8085\"\n",
        ));
        assert_eq!(emulator.endpoint.as_str(), "http://127.0.0.1:8085/");
        assert!(emulator.credentials_file.is_none());
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let cases = [
            (
                sub("pubsub://projects/p1/topics/t01", ""),
                "line 1: subscription[0].credentials_file: missing",
            ),
            (
                sub("pubsub://projects/p1/t1", "endpoint = \"http://127.0.0.1:1\"\n"),
                "line 3: subscription[0].url",
            ),
            (
                sub("pubsub://projects/P1/topics/t01", "endpoint = \"http://127.0.0.1:1\"\n"),
                "project \"P1\"",
            ),
            (
                sub(
                    "pubsub://projects/p1/topics/goog-x",
                    "endpoint = \"http://127.0.0.1:1\"\n",
                ),
                "topic \"goog-x\"",
            ),
            (
                sub(
                    "pubsub://projects/p1/topics/t01",
                    "endpoint = \"http://pubsub.example\"\n",
                ),
                "line 4: subscription[0].endpoint",
            ),
            (
                sub("pubsub://projects/p1/topics/t01", "endpoint = \"https://x/v1\"\n"),
                "base URL only",
            ),
            (
                sub(
                    "pubsub://projects/p1/topics/t01",
                    "endpoint = \"http://[::1]:1\"\ncompression = \"gzip\"\n",
                ),
                "line 5: subscription[0].compression",
            ),
            (
                sub(
                    "pubsub://projects/p1/topics/t01",
                    "endpoint = \"http://[::1]:1\"\nbatch = { max_events = 1001 }\n",
                ),
                "line 5: subscription[0].batch.max_events: 1001 is more than one Pub/Sub request takes (1000)",
            ),
            (
                sub(
                    "pubsub://projects/p1/topics/t01",
                    "endpoint = \"http://[::1]:1\"\nsubject = \"x\"\n",
                ),
                "only for nats:// or tls:// urls; a Pub/Sub subscription does not take it",
            ),
            (
                sub("pubsub://projects/p1/topics/t01", "endpoint = 8085\n"),
                "subscription[0].endpoint: must be a string",
            ),
        ];
        for (text, want) in cases {
            let e = error(&text);
            assert!(e.contains(want), "want {want:?} in {e}");
        }
    }
}
