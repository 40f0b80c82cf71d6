//! The TOML configuration: where it is found, its defaults, and its validation.
//!
//! Every error names the file, the line and the key at fault, so a technician
//! can fix a config over the phone. Unknown keys are errors, not warnings: a
//! typo in `give_up_after` must not silently mean "never".
//!
//! - `model`: the validated configuration the agent reads (re-exported here);
//! - `file`: the TOML tables as written;
//! - `source`: spans, lines and keys, and the errors that name them;
//! - `sections`: `[agent]`, `[ingest]`, `[storage]`, `[admin]`;
//! - `subscription`: `[[subscription]]`;
//! - `destination`: the seam to each kind of destination, which reads its
//!   own keys (`deliver::destinations` passes the kinds in).

use std::path::{Path, PathBuf};

mod destination;
mod file;
mod model;
mod sections;
mod source;
mod subscription;

pub use destination::{BatchLimits, DestinationKind, KindParsed, OwnKeys};
pub use model::*;

use file::*;
use sections::*;
use source::*;
use subscription::*;

/// Finds the config file: `--config`, then the environment, then the packaged
/// path. Returns `None` when none applies and the packaged file is absent.
pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let packaged = Path::new(DEFAULT_CONFIG_PATH);
    packaged.exists().then(|| packaged.to_path_buf())
}

/// Loads and validates the configuration found by [`locate`], or the built-in
/// defaults when there is no file; subscriptions of `kinds`.
pub fn load_with(explicit: Option<&Path>, kinds: &[&DestinationKind]) -> Result<Config, ConfigError> {
    match locate(explicit) {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError(format!("{}: cannot read config file: {e}", path.display())))?;
            parse_with(&text, Some(&path), kinds)
        }
        None => parse_with("", None, kinds),
    }
}

/// Parses and validates config text; `path` is used in messages and to
/// resolve relative paths (against the file's directory). A subscription's
/// `url` picks one of `kinds`, which reads the keys that are its own.
pub fn parse_with(text: &str, path: Option<&Path>, kinds: &[&DestinationKind]) -> Result<Config, ConfigError> {
    let src = Source::new(text, path);
    let file: FileConfig = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
    let keys: SubscriptionKeys = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
    let agent = agent_section(&src, file.agent)?;
    let ingest = ingest_section(&src, file.ingest, &agent.data_dir)?;
    let storage = storage_section(&src, file.storage)?;
    let admin = admin_section(&src, file.admin)?;
    let subscriptions = subscription_sections(&src, file.subscription, keys, kinds)?;
    Ok(Config {
        source: path.map(Path::to_path_buf),
        agent,
        ingest,
        storage,
        admin,
        subscriptions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::destinations::parse_config as parse;
    use std::time::Duration;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("", None).expect("defaults");
        assert_eq!(
            c.ingest.http_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:7390")
        );
        assert_eq!(c.admin.listen.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:7391"));
        assert_eq!(c.db_path(), PathBuf::from("./store-outbox-data/outbox.db"));
        assert!(c.subscriptions.is_empty());
    }

    #[test]
    fn contract_example_parses() {
        let text = format!(
            r#"
[agent]
store_id = "0042"
agent_id = "till-03"
data_dir = "/var/lib/store-outbox"
[ingest]
socket = "/run/store-outbox/ingest.sock"
max_event_bytes = "1MiB"
[storage]
max_db_bytes = "2GiB"
retain_delivered = "7d"
[[subscription]]
name = "erp"
url = "https://erp.example.com/hooks/pos"
secret = "{SECRET}"
events = ["SaleCreated", "StockMovementCreated"]
payload = "thin"
timeout = "30s"
max_in_flight = 16
retry = {{ initial = "1s", max = "5m", give_up_after = "never" }}
headers = {{ "authorization" = "Bearer x" }}
"#
        );
        let c = parse(&text, Some(Path::new("/etc/store-outbox/config.toml"))).expect("valid");
        assert_eq!(c.ingest.max_event_bytes, 1024 * 1024);
        assert_eq!(c.storage.max_db_bytes, 2 * 1024 * 1024 * 1024);
        let s = &c.subscriptions[0];
        assert_eq!(s.payload, PayloadMode::Thin);
        assert!(s.takes("SaleCreated") && !s.takes("Other"));
        assert_eq!(s.retry.give_up_after, None);
        assert_eq!(s.retry.max, Duration::from_secs(300));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "[agent]\nstore_id = \"1\"\n\n[storage]\nmax_db_bytez = \"1GiB\"\n";
        let e = parse(text, Some(Path::new("/x/c.toml"))).unwrap_err().0;
        assert!(e.contains("/x/c.toml"), "{e}");
        assert!(e.contains("line 5"), "{e}");
        assert!(e.contains("max_db_bytez"), "{e}");
    }

    #[test]
    fn http_ingest_off_and_remote_needs_consent() {
        let c = parse("[ingest]\nhttp_listen = \"off\"\n", None).expect("off");
        assert!(c.ingest.http_listen.is_none());
        let e = parse("[ingest]\nhttp_listen = \"0.0.0.0:7390\"\n", None).unwrap_err().0;
        assert!(e.contains("http_allow_remote"), "{e}");
        let c = parse(
            "[ingest]\nhttp_listen = \"0.0.0.0:7390\"\nhttp_allow_remote = true\n",
            None,
        )
        .expect("allowed");
        assert!(c.ingest.http_listen.is_some());
        let e = parse("[admin]\nlisten = \"nowhere\"\n", Some(Path::new("c.toml")))
            .unwrap_err()
            .0;
        assert!(e.contains("line 2") && e.contains("admin.listen"), "{e}");
    }

    #[test]
    fn bad_duration_names_line() {
        let text =
            format!("[[subscription]]\nname = \"a\"\nurl = \"http://x\"\nsecret = \"{SECRET}\"\ntimeout = \"soon\"\n");
        let e = parse(&text, Some(Path::new("c.toml"))).unwrap_err().0;
        assert!(e.contains("line 5") && e.contains("soon"), "{e}");
    }

    #[test]
    fn missing_secret_and_bad_url_are_errors() {
        let e = parse("[[subscription]]\nname = \"a\"\nurl = \"http://x\"\n", None)
            .unwrap_err()
            .0;
        assert!(e.contains("subscription[0].secret"), "{e}");
        let text = format!("[[subscription]]\nname = \"a\"\nurl = \"ftp://x\"\nsecret = \"{SECRET}\"\n");
        let e = parse(&text, None).unwrap_err().0;
        assert!(e.contains("subscription[0].url") && e.contains("line 3"), "{e}");
    }
}

#[cfg(test)]
mod line_tests {
    use super::*;
    use crate::deliver::destinations::nats::config::NatsSettings;
    use crate::deliver::destinations::parse_config as parse;
    use std::time::Duration;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// The error of `text` (a config file `c.toml`).
    #[test]
    fn batch_compression_and_format_take_their_defaults_and_errors_name_the_line() {
        let c = parse(
            &sub("batch = { max_events = 100 }\ncompression = \"gzip\"\nformat = \"cloudevents\"\n"),
            None,
        )
        .expect("valid");
        let s = &c.subscriptions[0];
        assert_eq!(
            s.batch,
            Some(BatchConfig {
                max_events: 100,
                max_bytes: 1024 * 1024,
                linger: Duration::from_millis(20)
            })
        );
        assert_eq!((s.compression, s.format), (Compression::Gzip, Format::CloudEvents));
        let plain = parse(&sub(""), None).expect("valid");
        let p = &plain.subscriptions[0];
        assert_eq!(
            (p.batch, p.compression, p.format),
            (None, Compression::None, Format::Webhook)
        );
        assert_names(
            &error_of(&sub("batch = { max_events = 0 }\n")),
            5,
            "subscription[0].batch.max_events",
        );
        assert_names(
            &error_of(&sub("batch = { max_bytes = 100 }\n")),
            5,
            "subscription[0].batch.max_bytes",
        );
        assert_names(
            &error_of(&sub("batch = { linger = \"1m\" }\n")),
            5,
            "subscription[0].batch.linger",
        );
        assert!(
            error_of(&sub("batch = { size = 1 }\n")).contains("size"),
            "unknown keys are errors"
        );
        assert_names(
            &error_of(&sub("\ncompression = \"zstd\"\n")),
            6,
            "subscription[0].compression",
        );
        assert_names(&error_of(&sub("format = \"xml\"\n")), 5, "subscription[0].format");
        assert_names(
            &error_of(&sub("concurrency = \"auto\"\n")),
            5,
            "subscription[0].concurrency",
        );
        let adaptive = parse(&sub("concurrency = \"adaptive\"\n"), None).expect("valid");
        assert!(adaptive.subscriptions[0].adaptive_concurrency && !p.adaptive_concurrency);
        let nats = "[[subscription]]\nname = \"bus\"\nurl = \"nats://n:4222\"\nsubject = \"pos\"\nbatch = {}\n";
        assert_names(&error_of(nats), 5, "subscription[0].batch");
    }

    fn error_of(text: &str) -> String {
        parse(text, Some(Path::new("c.toml"))).expect_err(text).0
    }

    /// A subscription on lines 2-4 (header on line 1), then `extra` from line 5.
    fn sub(extra: &str) -> String {
        format!("[[subscription]]\nname = \"a\"\nurl = \"http://x\"\nsecret = \"{SECRET}\"\n{extra}")
    }

    fn assert_names(e: &str, line: usize, key: &str) {
        assert!(e.starts_with("c.toml: "), "{e}");
        assert!(e.contains(&format!("line {line}: ")), "want line {line}: {e}");
        assert!(e.contains(key), "want {key}: {e}");
    }

    #[test]
    fn subscription_errors_name_the_line_of_the_faulty_key() {
        let cases = [
            ("\n\nretry = { initial = \"0s\" }\n", 7, "subscription[0].retry.initial"),
            (
                "\n\nretry = { initial = \"5s\", max = \"1s\" }\n",
                7,
                "subscription[0].retry.max",
            ),
            (
                "\n\n[subscription.retry]\ninitial = \"5s\"\nmax = \"1s\"\n",
                9,
                "subscription[0].retry.max",
            ),
            ("\nheaders = { \"bad header\" = \"x\" }\n", 6, "subscription[0].headers"),
            ("\n\ntimeout = \"0s\"\n", 7, "subscription[0].timeout"),
            ("\n\n\nclient_key = \"k.pem\"\n", 8, "subscription[0].client_key"),
            ("\n\n\nclient_cert = \"c.pem\"\n", 8, "subscription[0].client_cert"),
        ];
        for (extra, line, key) in cases {
            assert_names(&error_of(&sub(extra)), line, key);
        }
    }

    #[test]
    fn a_missing_key_names_the_line_of_its_table() {
        let text = format!("{}\n\n[[subscription]]\nname = \"b\"\nurl = \"http://y\"\n", sub(""));
        assert_names(&error_of(&text), 7, "subscription[1].secret");
        let e = error_of("[agent]\nstore_id = \"1\"\n[[subscription]]\nname = \"b\"\n");
        assert_names(&e, 3, "subscription[0]");
        assert!(e.contains("url"), "{e}");
    }

    #[test]
    fn ingest_errors_name_their_line() {
        let e = error_of("[ingest]\n\nhttp_listen = \"0.0.0.0:7390\"\n");
        assert_names(&e, 3, "ingest.http_listen");
        assert!(e.contains("http_allow_remote"), "{e}");
        let e = error_of("[ingest]\nmax_event_bytes = \"2MiB\"\nmax_request_bytes = \"1MiB\"\n");
        assert_names(&e, 3, "ingest.max_request_bytes");
        let e = error_of("[ingest]\n\nmax_event_bytes = \"32MiB\"\n");
        assert_names(&e, 3, "ingest.max_event_bytes");
    }

    #[test]
    fn value_errors_found_by_toml_name_the_key() {
        assert_names(&error_of(&sub("\ntimeout = \"soon\"\n")), 6, "subscription[0].timeout");
        assert_names(
            &error_of(&sub("max_in_flight = \"x\"\n")),
            5,
            "subscription[0].max_in_flight",
        );
        assert_names(
            &error_of(&sub("retry = { give_up_after = \"later\" }\n")),
            5,
            "subscription[0].retry.give_up_after",
        );
        assert_names(
            &error_of("[storage]\n\nmax_db_bytes = \"lots\"\n"),
            3,
            "storage.max_db_bytes",
        );
        assert_names(&error_of("[storage]\nmax_db_bytez = 1\n"), 2, "storage.max_db_bytez");
        assert_names(&error_of("[agent]\nstore_id = 42\n"), 2, "agent.store_id");
    }
    /// A NATS subscription on lines 2-4 (header on line 1), then `extra`.
    fn nats_sub(extra: &str) -> String {
        format!(
            "[[subscription]]\nname = \"bus\"\nurl = \"nats://n1:4222, nats://n2:4222\"\nsubject = \"pos.{{store_id}}.{{type}}\"\n{extra}"
        )
    }

    #[test]
    fn a_nats_url_takes_several_servers_a_subject_and_no_secret() {
        let config = parse(&nats_sub("token = \"t0k\"\n"), None).expect("valid");
        let first = &config.subscriptions[0];
        let nats = first.kind.settings::<NatsSettings>().expect("a NATS subscription");
        assert_eq!(nats.servers, ["nats://n1:4222", "nats://n2:4222"]);
        assert_eq!(nats.subject, "pos.{store_id}.{type}");
        assert_eq!(nats.token.as_deref(), Some("t0k"));
        assert!(first.secrets.is_empty(), "secret is optional for NATS");
        assert_eq!(first.url_for_logs(), "nats://n1:4222,nats://n2:4222");
        assert!(!format!("{nats:?}").contains("t0k"), "the token is not in Debug output");
        let signed = parse(&nats_sub(&format!("secret = \"{SECRET}\"\n")), None).expect("valid");
        assert_eq!(signed.subscriptions[0].secrets.len(), 1);
        let webhook = &parse(&sub(""), None).expect("valid").subscriptions[0];
        assert!(webhook.kind.settings::<NatsSettings>().is_none());
        assert_eq!(webhook.kind.name(), "webhook");
    }

    #[test]
    fn nats_keys_are_checked_and_named_with_their_line() {
        let missing = error_of("[[subscription]]\nname = \"bus\"\nurl = \"nats://n1:4222\"\n");
        assert_names(&missing, 1, "subscription[0].subject");
        assert_names(&error_of(&sub("\nsubject = \"pos.x\"\n")), 6, "subscription[0].subject");
        assert_names(&error_of(&sub("token = \"t\"\n")), 5, "subscription[0].token");
        assert_names(&error_of(&nats_sub("\nuser = \"u\"\n")), 6, "subscription[0].user");
        assert_names(
            &error_of(&nats_sub("token = \"t\"\nuser = \"u\"\npassword = \"p\"\n")),
            6,
            "subscription[0].user",
        );
        assert_names(
            &error_of("[[subscription]]\nname = \"bus\"\nurl = \"nats://n1:4222,http://x\"\nsubject = \"a\"\n"),
            3,
            "subscription[0].url",
        );
        for (subject, why) in [
            ("pos.{store}.x", "unknown placeholder {store}"),
            ("pos..x", "empty token"),
            ("pos.*", "'*'"),
            ("pos.>", "'>'"),
            ("pos. x", "' '"),
        ] {
            let text = format!("[[subscription]]\nname = \"bus\"\nurl = \"nats://n1:4222\"\nsubject = \"{subject}\"\n");
            let e = error_of(&text);
            assert_names(&e, 4, "subscription[0].subject");
            assert!(e.contains(why), "want {why}: {e}");
        }
    }
}

#[cfg(test)]
mod filter_tests {
    use super::*;
    use crate::deliver::destinations::parse_config as parse;
    use std::time::Duration;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn with_events(events: &str) -> SubscriptionConfig {
        let text = format!("[[subscription]]\nname = \"a\"\nurl = \"http://x\"\nsecret = \"{SECRET}\"\n{events}\n");
        parse(&text, None).expect("valid").subscriptions.remove(0)
    }

    #[test]
    fn without_events_every_type_is_taken() {
        let s = with_events("");
        assert!(s.takes("SaleCreated") && s.takes("StockMovementCreated"));
    }

    #[test]
    fn the_agents_heartbeats_are_taken_only_when_named() {
        for events in ["", "events = \"*\"", "events = [\"SaleCreated\"]"] {
            assert!(!with_events(events).takes("AgentHeartbeat"), "{events}");
        }
        let both = with_events("events = [\"*\", \"AgentHeartbeat\"]");
        assert!(both.takes("AgentHeartbeat") && both.takes("SaleCreated"));
        let only = with_events("events = [\"AgentHeartbeat\"]");
        assert!(only.takes("AgentHeartbeat") && !only.takes("SaleCreated"));
    }

    #[test]
    fn heartbeat_is_off_by_default_and_checked() {
        assert_eq!(parse("", None).expect("valid").agent.heartbeat, None);
        let on = parse("[agent]\nheartbeat = \"5m\"\n", None).expect("valid");
        assert_eq!(on.agent.heartbeat, Some(Duration::from_secs(300)));
        assert_eq!(
            parse("[agent]\nheartbeat = \"off\"\n", None)
                .expect("valid")
                .agent
                .heartbeat,
            None
        );
        for (text, says) in [("\"soon\"", "invalid duration"), ("\"100ms\"", "at least 1s")] {
            let e = parse(&format!("[agent]\nheartbeat = {text}\n"), None)
                .expect_err(text)
                .to_string();
            assert!(e.contains("line 2: agent.heartbeat") && e.contains(says), "{e}");
        }
    }

    #[test]
    fn a_wildcard_takes_every_type() {
        for events in [
            "events = \"*\"",
            "events = [\"*\"]",
            "events = [\"SaleCreated\", \"*\"]",
        ] {
            let s = with_events(events);
            assert!(s.takes("SaleCreated") && s.takes("Other"), "{events}");
        }
    }

    #[test]
    fn named_types_are_taken_exactly() {
        let s = with_events("events = [\"SaleCreated\", \"StockMovementCreated\"]");
        assert!(s.takes("SaleCreated") && s.takes("StockMovementCreated"));
        for other in ["Other", "salecreated", "Sale", "SaleCreatedX", "", "*"] {
            assert!(!s.takes(other), "{other:?}");
        }
        let one = with_events("events = \"PosLog\"");
        assert!(one.takes("PosLog") && !one.takes("SaleCreated"));
    }
}
