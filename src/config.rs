//! The TOML configuration: where it is found, its defaults, and its validation.
//!
//! Every error names the file, the line and the key at fault, so a technician
//! can fix a config over the phone. Unknown keys are errors, not warnings: a
//! typo in `give_up_after` must not silently mean "never".

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_spanned::Spanned;

use crate::timefmt::{check_size, parse_duration, parse_size};

/// Where the config file is looked for when neither `--config` nor the
/// environment names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/store-outbox/config.toml";
/// Environment variable that names the config file.
pub const CONFIG_ENV: &str = "STORE_OUTBOX_CONFIG";
/// Data directory used when there is no config file at all.
pub const DEFAULT_DATA_DIR: &str = "./store-outbox-data";
/// Default loopback address of the HTTP ingest.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7390";
/// Default loopback address of the admin HTTP server.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7391";

/// A configuration error, already worded for a person.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The validated configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, `None` for built-in defaults.
    pub source: Option<PathBuf>,
    /// Identity of this store and agent, sent in every webhook body.
    pub agent: AgentConfig,
    /// The ways in.
    pub ingest: IngestConfig,
    /// Limits of the outbox database.
    pub storage: StorageConfig,
    /// The admin HTTP server.
    pub admin: AdminConfig,
    /// Where events go.
    pub subscriptions: Vec<SubscriptionConfig>,
}

/// `[agent]`
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Store number as central systems know it.
    pub store_id: String,
    /// This agent (till, PC) within the store.
    pub agent_id: String,
    /// Directory holding `outbox.db`.
    pub data_dir: PathBuf,
    /// `heartbeat`: how often the agent enqueues its own `AgentHeartbeat`
    /// event; `None` (the default, or "off") sends none.
    pub heartbeat: Option<Duration>,
}

/// `[ingest]`
#[derive(Debug, Clone, PartialEq)]
pub struct IngestConfig {
    /// Unix socket path for NDJSON producers.
    pub socket: PathBuf,
    /// HTTP ingest address; `None` when set to "off".
    pub http_listen: Option<SocketAddr>,
    /// `http_listen` may be off loopback (`ingest.http_allow_remote`): the
    /// `Host` check then also takes any IP address (see `http_guard`).
    pub http_allow_remote: bool,
    /// Largest HTTP request body (one event or an array).
    pub max_request_bytes: u64,
    /// Spool directory for file drops.
    pub spool_dir: PathBuf,
    /// Largest accepted event, in bytes of its JSON text.
    pub max_event_bytes: u64,
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// Size cap of the database; new events are refused past it.
    pub max_db_bytes: u64,
    /// How long delivered events are kept (for `show` and resend).
    pub retain_delivered: Duration,
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Address of the status page and admin API; `None` when "off".
    pub listen: Option<SocketAddr>,
    /// `listen` may be off loopback (`admin.allow_remote`).
    pub allow_remote: bool,
    /// File holding the bearer token required for mutations.
    pub token_file: Option<PathBuf>,
}

/// Full event bodies or IDs only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadMode {
    /// `data` carries the producer's payload.
    Full,
    /// `data` is left out.
    Thin,
}

/// `batch = { max_events, max_bytes, linger }`: several events per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most events in one request (default 500).
    pub max_events: usize,
    /// Most bytes of one body before compression (default 1 MiB); an event
    /// larger than this goes alone.
    pub max_bytes: u64,
    /// How long a batch that is not full waits for more events (default 20ms).
    pub linger: Duration,
}

/// `compression`: how request bodies are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// As they are (the default).
    None,
    /// `content-encoding: gzip`.
    Gzip,
}

/// `format`: the shape of what a receiver gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The webhook envelope of the contract (the default).
    Webhook,
    /// CloudEvents 1.0 over HTTP: binary mode, or the batched mode with `batch`.
    CloudEvents,
}

/// Backoff and give-up policy of one subscription.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    /// First retry delay.
    pub initial: Duration,
    /// Largest retry delay.
    pub max: Duration,
    /// Park a delivery after failing for this long; `None` means never.
    pub give_up_after: Option<Duration>,
}

/// One `[[subscription]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionConfig {
    /// Unique name, the key of its delivery state in the database.
    pub name: String,
    /// Endpoint receiving the POSTs; for a NATS subscription the first
    /// server of `url` (all of them are in [`NatsConfig::servers`]).
    pub url: url::Url,
    /// Signing keys (already base64-decoded); the first is the newest. Empty
    /// only for a NATS subscription without `secret` (no signature headers).
    pub secrets: Vec<Vec<u8>>,
    /// Event types wanted; `None` means all (no `events` key, or `"*"`).
    /// Ask [`SubscriptionConfig::takes`] rather than reading this.
    pub events: Option<HashSet<String>>,
    /// Whether `events` names `AgentHeartbeat` itself (`"*"` alone does not
    /// take the agent's heartbeats).
    pub heartbeats: bool,
    /// Body with or without `data`.
    pub payload: PayloadMode,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Most requests in flight at once (different entities).
    pub max_in_flight: usize,
    /// `max_rate`: most requests a second (a token bucket), whatever the
    /// concurrency; `None`: no cap.
    pub max_rate: Option<f64>,
    /// Backoff policy.
    pub retry: RetryConfig,
    /// Extra headers on every request.
    pub headers: BTreeMap<String, String>,
    /// Extra CA certificate (PEM) to trust.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM) for mTLS.
    pub client_key: Option<PathBuf>,
    /// Set for `nats://` and `tls://` URLs: the subscription publishes to
    /// NATS JetStream instead of POSTing.
    pub nats: Option<NatsConfig>,
    /// `batch`: several events per request; `None`: one event per request.
    pub batch: Option<BatchConfig>,
    /// `compression` of request bodies.
    pub compression: Compression,
    /// `format` of what the receiver gets.
    pub format: Format,
    /// `concurrency = "adaptive"`: requests on the wire adapt between 1 and
    /// `max_in_flight` (AIMD); `"fixed"` (the default): up to `max_in_flight`.
    pub adaptive_concurrency: bool,
}

/// The NATS side of a subscription whose `url` is `nats://` or `tls://`.
#[derive(Clone, PartialEq)]
pub struct NatsConfig {
    /// The servers of `url`, as written (comma-separated in the file).
    pub servers: Vec<String>,
    /// `subject`: the subject template, with `{store_id}`, `{agent_id}`,
    /// `{type}` and `{entity}` placeholders.
    pub subject: String,
    /// `credentials_file`: a NATS `.creds` file (JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// `token`: a token for token authentication.
    pub token: Option<String>,
    /// `user` and `password`, which go together.
    pub user_password: Option<(String, String)>,
}

impl std::fmt::Debug for NatsConfig {
    /// Like the derived one, without the token and password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("servers", &self.servers)
            .field("subject", &self.subject)
            .field("credentials_file", &self.credentials_file)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("user", &self.user_password.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// The placeholders a NATS `subject` may hold.
pub const SUBJECT_PLACEHOLDERS: [&str; 4] = ["{store_id}", "{agent_id}", "{type}", "{entity}"];

impl SubscriptionConfig {
    /// The URL without credentials or query string, safe to log and show
    /// (for NATS every server, comma-separated).
    pub fn url_for_logs(&self) -> String {
        if let Some(nats) = &self.nats {
            return nats
                .servers
                .iter()
                .map(|s| match url::Url::parse(s) {
                    Ok(mut url) => {
                        let _ = url.set_username("");
                        let _ = url.set_password(None);
                        url.to_string()
                    }
                    Err(_) => s.clone(),
                })
                .collect::<Vec<_>>()
                .join(",");
        }
        let mut url = self.url.clone();
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_query(None);
        url.to_string()
    }

    /// Whether events of this type go to this subscription: THE event-type
    /// filter (exact, case-sensitive names; absent `events` or `"*"` takes all).
    pub fn takes(&self, event_type: &str) -> bool {
        if event_type == crate::event::HEARTBEAT_TYPE {
            return self.heartbeats;
        }
        self.events.as_ref().is_none_or(|types| types.contains(event_type))
    }
}

// ---- the file format -------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    agent: FileAgent,
    #[serde(default)]
    ingest: FileIngest,
    #[serde(default)]
    storage: FileStorage,
    #[serde(default)]
    admin: FileAdmin,
    #[serde(default)]
    subscription: Vec<Spanned<FileSubscription>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileAgent {
    store_id: Option<String>,
    agent_id: Option<String>,
    data_dir: Option<PathBuf>,
    heartbeat: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileIngest {
    socket: Option<PathBuf>,
    http_listen: Option<serde_spanned::Spanned<String>>,
    http_allow_remote: Option<bool>,
    spool_dir: Option<PathBuf>,
    max_event_bytes: Option<Spanned<Size>>,
    max_request_bytes: Option<Spanned<Size>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileStorage {
    max_db_bytes: Option<Spanned<Size>>,
    retain_delivered: Option<Dur>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    listen: Option<serde_spanned::Spanned<String>>,
    allow_remote: Option<bool>,
    token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSubscription {
    name: serde_spanned::Spanned<String>,
    url: serde_spanned::Spanned<String>,
    secret: Option<serde_spanned::Spanned<OneOrMany>>,
    secret_file: Option<serde_spanned::Spanned<PathBuf>>,
    events: Option<serde_spanned::Spanned<OneOrMany>>,
    payload: Option<PayloadSetting>,
    timeout: Option<Spanned<Dur>>,
    max_in_flight: Option<serde_spanned::Spanned<i64>>,
    max_rate: Option<Spanned<f64>>,
    #[serde(default)]
    retry: FileRetry,
    #[serde(default)]
    headers: BTreeMap<Spanned<String>, Spanned<String>>,
    ca_file: Option<PathBuf>,
    client_cert: Option<Spanned<PathBuf>>,
    client_key: Option<Spanned<PathBuf>>,
    subject: Option<Spanned<String>>,
    credentials_file: Option<Spanned<PathBuf>>,
    token: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    batch: Option<Spanned<FileBatch>>,
    compression: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    concurrency: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileBatch {
    max_events: Option<Spanned<i64>>,
    max_bytes: Option<Spanned<Size>>,
    linger: Option<Spanned<Dur>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileRetry {
    initial: Option<Spanned<Dur>>,
    max: Option<Spanned<Dur>>,
    give_up_after: Option<GiveUp>,
}

/// A size as written in the file: `"512KiB"` or a number of bytes.
#[derive(Clone, Copy)]
struct Size(u64);

/// A duration as written in the file: `"30s"`.
#[derive(Clone, Copy)]
struct Dur(Duration);

/// `give_up_after`: a duration or `"never"` (`None`).
#[derive(Clone, Copy)]
struct GiveUp(Option<Duration>);

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum PayloadSetting {
    Full,
    Thin,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }

    fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match SizeValue::deserialize(d)? {
            SizeValue::Bytes(n) => check_size(n)
                .map(Size)
                .map_err(|e| serde::de::Error::custom(format!("size {n} {e}"))),
            SizeValue::Text(t) => parse_size(&t).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(Dur).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for GiveUp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "never" {
            return Ok(GiveUp(None));
        }
        parse_duration(&text)
            .map(|d| GiveUp(Some(d)))
            .map_err(|e| serde::de::Error::custom(format!("{e}, or \"never\"")))
    }
}

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
/// defaults when there is no file.
pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    match locate(explicit) {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError(format!("{}: cannot read config file: {e}", path.display())))?;
            parse(&text, Some(&path))
        }
        None => parse("", None),
    }
}

/// Line (1-based) of a byte offset in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The file's keys with where they are, to name the key of an error found
/// by serde (whose messages rarely do).
enum Node {
    Leaf,
    Table(Vec<(Spanned<String>, Spanned<Node>)>),
    Array(Vec<Spanned<Node>>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any TOML value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Node::Table(entries))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// The dotted key (`subscription[0].retry.max`) most closely around byte
/// `offset` of `text`; `None` when the text does not parse.
fn key_at(text: &str, offset: usize) -> Option<String> {
    // (path, width of the span holding `offset`); the narrowest wins. Every
    // table is searched: a `[a.b]` table may sit outside the span of `[a]`.
    fn search(node: &Node, path: &str, offset: usize, best: &mut Option<(String, usize)>) {
        fn consider(best: &mut Option<(String, usize)>, offset: usize, path: String, span: std::ops::Range<usize>) {
            let holds = span.contains(&offset) || (span.is_empty() && span.start == offset);
            if holds && best.as_ref().is_none_or(|(_, w)| span.len() <= *w) {
                *best = Some((path, span.len()));
            }
        }
        match node {
            Node::Leaf => {}
            Node::Table(entries) => {
                for (key, value) in entries {
                    let here = if path.is_empty() {
                        key.get_ref().clone()
                    } else {
                        format!("{path}.{}", key.get_ref())
                    };
                    consider(best, offset, here.clone(), key.span());
                    consider(best, offset, here.clone(), value.span());
                    search(value.get_ref(), &here, offset, best);
                }
            }
            Node::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let here = format!("{path}[{i}]");
                    consider(best, offset, here.clone(), item.span());
                    search(item.get_ref(), &here, offset, best);
                }
            }
        }
    }
    let root: Node = toml::from_str(text).ok()?;
    let mut best = None;
    search(&root, "", offset, &mut best);
    best.map(|(path, _)| path)
}

/// The key written on the line at `offset`, read from the text alone (a
/// file that does not parse as TOML, say a number too large for it):
/// `section.key`, with `subscription[N]` for the N-th `[[subscription]]`.
fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    let bare = |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if !bare(key) {
        return None;
    }
    let mut section = String::new();
    let mut subscriptions = 0;
    for header in text[..start].lines().map(str::trim).filter(|l| l.starts_with('[')) {
        if header.starts_with("[[subscription]]") {
            section = format!("subscription[{subscriptions}]");
            subscriptions += 1;
        } else {
            section = header.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    Some(if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    })
}

/// Parses and validates config text; `path` is used in messages and to
/// resolve relative paths (against the file's directory).
pub fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
    let src = Source::new(text, path);
    let file: FileConfig = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
    let agent = agent_section(&src, file.agent)?;
    let ingest = ingest_section(&src, file.ingest, &agent.data_dir)?;
    let storage = storage_section(&src, file.storage)?;
    let admin = admin_section(&src, file.admin)?;
    let subscriptions = subscription_sections(&src, file.subscription)?;
    Ok(Config {
        source: path.map(Path::to_path_buf),
        agent,
        ingest,
        storage,
        admin,
        subscriptions,
    })
}

/// The text being parsed: for messages (file, line) and relative paths.
struct Source<'a> {
    text: &'a str,
    path: Option<&'a Path>,
    /// The file as messages name it.
    shown: String,
    /// Relative paths are taken from here.
    base_dir: PathBuf,
}

impl<'a> Source<'a> {
    fn new(text: &'a str, path: Option<&'a Path>) -> Self {
        Source {
            text,
            path,
            shown: path
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "<built-in defaults>".to_string()),
            base_dir: path
                .and_then(|p| p.parent())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
        }
    }

    /// An error at `span`, naming the file, its line and `key`.
    fn at(&self, span: std::ops::Range<usize>, key: &str, msg: String) -> ConfigError {
        ConfigError(format!(
            "{}: line {}: {key}: {msg}",
            self.shown,
            line_of(self.text, span.start)
        ))
    }

    /// Like [`Source::at`]; without a span (a default caused it) only the key.
    fn at_or_key(&self, span: Option<std::ops::Range<usize>>, key: &str, msg: String) -> ConfigError {
        match span {
            Some(span) => self.at(span, key, msg),
            None => ConfigError(format!("{}: {key}: {msg}", self.shown)),
        }
    }

    /// An error the TOML parser or serde found: its message has the line but
    /// rarely the key, so the key is looked up by the error's position.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let message = e.message().trim();
        let Some(span) = e.span() else {
            return ConfigError(format!("{}: {message}", self.shown));
        };
        match key_at(self.text, span.start).or_else(|| key_on_line(self.text, span.start)) {
            Some(key) => self.at(span, &key, message.to_string()),
            None => ConfigError(format!(
                "{}: line {}: {message}",
                self.shown,
                line_of(self.text, span.start)
            )),
        }
    }

    /// A path from the file, relative ones against the file's directory.
    fn resolve(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() || self.path.is_none() {
            p
        } else {
            self.base_dir.join(p)
        }
    }
}

fn agent_section(src: &Source, file: FileAgent) -> Result<AgentConfig, ConfigError> {
    Ok(AgentConfig {
        store_id: file.store_id.unwrap_or_else(|| "unset".to_string()),
        agent_id: file.agent_id.unwrap_or_else(default_agent_id),
        data_dir: src.resolve(file.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))),
        heartbeat: heartbeat_period(src, file.heartbeat)?,
    })
}

/// `agent.heartbeat`: a duration of at least a second, or "off".
fn heartbeat_period(src: &Source, value: Option<Spanned<String>>) -> Result<Option<Duration>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let span = value.span();
    let text = value.into_inner();
    if text.trim() == "off" {
        return Ok(None);
    }
    let period = parse_duration(&text).map_err(|e| src.at(span.clone(), "agent.heartbeat", e))?;
    if period < Duration::from_secs(1) {
        return Err(src.at(span, "agent.heartbeat", "must be at least 1s, or \"off\"".into()));
    }
    Ok(Some(period))
}

/// An address key: absent means `default`, "off" means none.
fn listen_addr(
    src: &Source,
    value: Option<serde_spanned::Spanned<String>>,
    key: &str,
    default: &str,
) -> Result<Option<SocketAddr>, ConfigError> {
    match value {
        None => Ok(Some(default.parse().expect("valid default address"))),
        Some(v) if v.get_ref() == "off" => Ok(None),
        Some(v) => v.get_ref().parse::<SocketAddr>().map(Some).map_err(|_| {
            src.at(
                v.span(),
                key,
                format!(
                    "{:?} is not an address like \"127.0.0.1:7390\" (or \"off\")",
                    v.get_ref()
                ),
            )
        }),
    }
}

fn ingest_section(src: &Source, file: FileIngest, data_dir: &Path) -> Result<IngestConfig, ConfigError> {
    let listen_span = file.http_listen.as_ref().map(Spanned::span);
    let http_listen = listen_addr(src, file.http_listen, "ingest.http_listen", DEFAULT_HTTP_LISTEN)?;
    if let Some(addr) = http_listen {
        if !addr.ip().is_loopback() && file.http_allow_remote != Some(true) {
            return Err(src.at_or_key(
                listen_span,
                "ingest.http_listen",
                format!(
                    "{addr} is not a loopback address; events would be accepted from the network \
                     without authentication. Set ingest.http_allow_remote = true if that is intended"
                ),
            ));
        }
    }
    if let Some(zero) = file.max_event_bytes.as_ref().filter(|s| s.get_ref().0 == 0) {
        return Err(src.at(
            zero.span(),
            "ingest.max_event_bytes",
            "must be more than 0 (every event would be refused)".into(),
        ));
    }
    let (request_span, event_span) = (span_of(&file.max_request_bytes), span_of(&file.max_event_bytes));
    let ingest = IngestConfig {
        socket: file
            .socket
            .map(|p| src.resolve(p))
            .unwrap_or_else(|| data_dir.join("ingest.sock")),
        http_listen,
        http_allow_remote: file.http_allow_remote == Some(true),
        max_request_bytes: file.max_request_bytes.map_or(16 * 1024 * 1024, |s| s.get_ref().0),
        spool_dir: file
            .spool_dir
            .map(|p| src.resolve(p))
            .unwrap_or_else(|| data_dir.join("spool")),
        max_event_bytes: file.max_event_bytes.map_or(1024 * 1024, |s| s.get_ref().0),
    };
    if ingest.max_request_bytes < ingest.max_event_bytes {
        // The faulty key is the one written; both may be.
        return Err(match (request_span, event_span) {
            (None, Some(span)) => src.at(
                span,
                "ingest.max_event_bytes",
                format!(
                    "must be at most ingest.max_request_bytes ({}, the default)",
                    ingest.max_request_bytes
                ),
            ),
            (span, _) => src.at_or_key(
                span,
                "ingest.max_request_bytes",
                format!("must be at least ingest.max_event_bytes ({})", ingest.max_event_bytes),
            ),
        });
    }
    Ok(ingest)
}

fn storage_section(src: &Source, file: FileStorage) -> Result<StorageConfig, ConfigError> {
    if let Some(zero) = file.max_db_bytes.as_ref().filter(|s| s.get_ref().0 == 0) {
        return Err(src.at(
            zero.span(),
            "storage.max_db_bytes",
            "must be more than 0 (nothing could be stored)".into(),
        ));
    }
    Ok(StorageConfig {
        max_db_bytes: file.max_db_bytes.map_or(2 * 1024 * 1024 * 1024, |s| s.get_ref().0),
        retain_delivered: file
            .retain_delivered
            .map_or(Duration::from_secs(7 * 24 * 3600), |d| d.0),
    })
}

fn admin_section(src: &Source, file: FileAdmin) -> Result<AdminConfig, ConfigError> {
    let listen_span = file.listen.as_ref().map(Spanned::span);
    let listen = listen_addr(src, file.listen, "admin.listen", DEFAULT_ADMIN_LISTEN)?;
    let allow_remote = file.allow_remote == Some(true);
    if let Some(addr) = listen.filter(|a| !a.ip().is_loopback() && !allow_remote) {
        return Err(src.at_or_key(
            listen_span,
            "admin.listen",
            format!(
                "{addr} is not a loopback address; the status page, every event's payload and \
                 /metrics would be readable from the network without authentication. \
                 Set admin.allow_remote = true if that is intended"
            ),
        ));
    }
    Ok(AdminConfig {
        listen,
        allow_remote,
        token_file: file.token_file.map(|p| src.resolve(p)),
    })
}

fn subscription_sections(
    src: &Source,
    file: Vec<Spanned<FileSubscription>>,
) -> Result<Vec<SubscriptionConfig>, ConfigError> {
    let mut subscriptions: Vec<SubscriptionConfig> = Vec::new();
    for (index, sub) in file.into_iter().enumerate() {
        let table = Table {
            name: format!("subscription[{index}]"),
            span: sub.span(),
        };
        let parsed = subscription_section(src, &table, sub.into_inner(), &subscriptions)?;
        subscriptions.push(parsed);
    }
    Ok(subscriptions)
}

/// A table of the file: its name in messages and where it starts, for
/// errors about a key it lacks.
struct Table {
    name: String,
    span: std::ops::Range<usize>,
}

impl Table {
    /// The full name of one of its keys.
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.name)
    }
}

/// Where a value is in the file, if it is there.
fn span_of<T>(value: &Option<Spanned<T>>) -> Option<std::ops::Range<usize>> {
    value.as_ref().map(Spanned::span)
}

/// One `[[subscription]]`; `earlier` are the ones before it (names must be
/// unique).
fn subscription_section(
    src: &Source,
    table: &Table,
    sub: FileSubscription,
    earlier: &[SubscriptionConfig],
) -> Result<SubscriptionConfig, ConfigError> {
    let key = |k: &str| table.key(k);
    let name = subscription_name(src, &key("name"), &sub.name, earlier)?;
    let (url, nats) = if is_nats_url(sub.url.get_ref()) {
        let (first, servers) = nats_servers(src, &key("url"), &sub.url)?;
        (first, Some(nats_settings(src, table, &sub, servers)?))
    } else {
        refuse_nats_keys(src, table, &sub)?;
        (endpoint_url(src, &key("url"), &sub.url)?, None)
    };
    // A bus message is signed only if asked to: `secret` is optional there.
    let secrets = if nats.is_some() && sub.secret.is_none() && sub.secret_file.is_none() {
        Vec::new()
    } else {
        subscription_secrets(src, table, &sub)?
    };
    let heartbeats = names_heartbeats(&sub.events);
    let (batch, compression, format) = delivery_shape(src, table, &sub)?;
    let adaptive_concurrency = match sub.concurrency.as_ref().map(|c| (c.span(), c.get_ref().as_str())) {
        None | Some((_, "fixed")) => false,
        Some((_, "adaptive")) => true,
        Some((span, other)) => {
            return Err(src.at(
                span,
                &key("concurrency"),
                format!("{other:?}: give \"fixed\" or \"adaptive\""),
            ))
        }
    };
    let events = event_filter(src, &key("events"), sub.events)?;
    let max_in_flight = match sub.max_in_flight {
        None => 16,
        Some(v) => in_flight_limit(src, &key("max_in_flight"), &v)?,
    };
    let max_rate = match &sub.max_rate {
        None => None,
        Some(v) => Some(rate_limit(src, &key("max_rate"), v)?),
    };
    let retry = retry_policy(src, table, &sub.retry)?;
    let headers = request_headers(src, &key("headers"), sub.headers)?;
    let timeout = sub.timeout.as_ref().map_or(Duration::from_secs(30), |t| t.get_ref().0);
    if timeout.is_zero() {
        return Err(src.at_or_key(span_of(&sub.timeout), &key("timeout"), "must be more than 0s".into()));
    }
    check_client_identity(src, table, &sub.client_cert, &sub.client_key)?;
    Ok(SubscriptionConfig {
        name,
        url,
        secrets,
        events,
        heartbeats,
        payload: match sub.payload {
            Some(PayloadSetting::Thin) => PayloadMode::Thin,
            _ => PayloadMode::Full,
        },
        timeout,
        max_in_flight,
        max_rate,
        retry,
        headers,
        ca_file: sub.ca_file.map(|p| src.resolve(p)),
        client_cert: sub.client_cert.map(|p| src.resolve(p.into_inner())),
        client_key: sub.client_key.map(|p| src.resolve(p.into_inner())),
        nats,
        batch,
        compression,
        format,
        adaptive_concurrency,
    })
}

/// `batch`, `compression` and `format`: webhooks only (a NATS message is
/// one event, as published).
fn delivery_shape(
    src: &Source,
    table: &Table,
    sub: &FileSubscription,
) -> Result<(Option<BatchConfig>, Compression, Format), ConfigError> {
    if is_nats_url(sub.url.get_ref()) {
        let given = [
            sub.batch.as_ref().map(|v| (v.span(), "batch")),
            sub.compression.as_ref().map(|v| (v.span(), "compression")),
            sub.format.as_ref().map(|v| (v.span(), "format")),
        ];
        if let Some((span, which)) = given.into_iter().flatten().next() {
            return Err(src.at(
                span,
                &table.key(which),
                "only for http(s) urls; a NATS subscription publishes one event per message".into(),
            ));
        }
    }
    let batch = match &sub.batch {
        None => None,
        Some(b) => Some(batch_settings(src, table, b.get_ref())?),
    };
    let compression = match sub.compression.as_ref().map(|c| (c.span(), c.get_ref().as_str())) {
        None | Some((_, "none")) => Compression::None,
        Some((_, "gzip")) => Compression::Gzip,
        Some((span, other)) => {
            return Err(src.at(
                span,
                &table.key("compression"),
                format!("{other:?}: give \"none\" or \"gzip\""),
            ))
        }
    };
    let format = match sub.format.as_ref().map(|f| (f.span(), f.get_ref().as_str())) {
        None | Some((_, "webhook")) => Format::Webhook,
        Some((_, "cloudevents")) => Format::CloudEvents,
        Some((span, other)) => {
            return Err(src.at(
                span,
                &table.key("format"),
                format!("{other:?}: give \"webhook\" or \"cloudevents\""),
            ))
        }
    };
    Ok((batch, compression, format))
}

/// `batch = { max_events = 1..10000 (500), max_bytes >= 1KiB (1MiB),
/// linger <= 10s (20ms) }`.
fn batch_settings(src: &Source, table: &Table, file: &FileBatch) -> Result<BatchConfig, ConfigError> {
    let max_events = match &file.max_events {
        None => 500,
        Some(n) if (1..=10_000).contains(n.get_ref()) => *n.get_ref() as usize,
        Some(n) => {
            return Err(src.at(
                n.span(),
                &table.key("batch.max_events"),
                format!("{} is not between 1 and 10000", n.get_ref()),
            ))
        }
    };
    let max_bytes = match &file.max_bytes {
        None => 1024 * 1024,
        Some(b) if b.get_ref().0 >= 1024 => b.get_ref().0,
        Some(b) => {
            return Err(src.at(
                b.span(),
                &table.key("batch.max_bytes"),
                format!("{} bytes is less than 1KiB", b.get_ref().0),
            ))
        }
    };
    let linger = match &file.linger {
        None => Duration::from_millis(20),
        Some(l) if l.get_ref().0 <= Duration::from_secs(10) => l.get_ref().0,
        Some(l) => {
            return Err(src.at(
                l.span(),
                &table.key("batch.linger"),
                "more than 10s: a batch should not hold events back that long".into(),
            ))
        }
    };
    Ok(BatchConfig {
        max_events,
        max_bytes,
        linger,
    })
}

/// Whether `url` names NATS servers (`nats://` or `tls://`) rather than a
/// webhook endpoint.
fn is_nats_url(url: &str) -> bool {
    let first = url.split(',').next().unwrap_or_default().trim().to_ascii_lowercase();
    first.starts_with("nats://") || first.starts_with("tls://")
}

/// `url` of a NATS subscription: one or more comma-separated `nats://` or
/// `tls://` servers. Returns the first, parsed, and all of them as written.
fn nats_servers(src: &Source, key: &str, url: &Spanned<String>) -> Result<(url::Url, Vec<String>), ConfigError> {
    let mut servers = Vec::new();
    let mut first = None;
    for part in url.get_ref().split(',').map(str::trim) {
        let parsed = url::Url::parse(part).map_err(|e| src.at(url.span(), key, format!("{part:?}: {e}")))?;
        if !matches!(parsed.scheme(), "nats" | "tls") || parsed.host_str().is_none_or(str::is_empty) {
            return Err(src.at(
                url.span(),
                key,
                format!("{part:?}: every server must be nats://host:port or tls://host:port"),
            ));
        }
        first.get_or_insert(parsed);
        servers.push(part.to_string());
    }
    match first {
        Some(first) => Ok((first, servers)),
        None => Err(src.at(url.span(), key, "no server given".into())),
    }
}

/// The keys of a NATS subscription: `subject` (required) and at most one way
/// to authenticate (`credentials_file`, `token`, or `user` + `password`).
fn nats_settings(
    src: &Source,
    table: &Table,
    sub: &FileSubscription,
    servers: Vec<String>,
) -> Result<NatsConfig, ConfigError> {
    let Some(subject) = &sub.subject else {
        return Err(src.at(
            table.span.clone(),
            &table.key("subject"),
            "missing: a nats:// or tls:// url needs a subject, e.g. subject = \"pos.{store_id}.{type}\"".into(),
        ));
    };
    check_subject_template(subject.get_ref()).map_err(|e| src.at(subject.span(), &table.key("subject"), e))?;
    let user_password = match (&sub.user, &sub.password) {
        (Some(u), Some(p)) => Some((u.get_ref().clone(), p.get_ref().clone())),
        (None, None) => None,
        (Some(given), None) | (None, Some(given)) => {
            let which = if sub.user.is_some() { "user" } else { "password" };
            return Err(src.at(given.span(), &table.key(which), "user and password go together".into()));
        }
    };
    let methods = [
        sub.credentials_file.as_ref().map(|c| (c.span(), "credentials_file")),
        sub.token.as_ref().map(|t| (t.span(), "token")),
        sub.user.as_ref().map(|u| (u.span(), "user")),
    ];
    if let Some((span, which)) = methods.into_iter().flatten().nth(1) {
        return Err(src.at(
            span,
            &table.key(which),
            "give one of credentials_file, token or user + password".into(),
        ));
    }
    Ok(NatsConfig {
        servers,
        subject: subject.get_ref().clone(),
        credentials_file: sub.credentials_file.as_ref().map(|c| src.resolve(c.get_ref().clone())),
        token: sub.token.as_ref().map(|t| t.get_ref().clone()),
        user_password,
    })
}

/// A subject template is valid if, with every placeholder filled in, it is a
/// subject one can publish to: dot-separated tokens, none empty, no
/// whitespace, no wildcard (`*`, `>`). Placeholder values are encoded to one
/// token each when an event is sent (`deliver::nats::subject_token`).
pub fn check_subject_template(template: &str) -> Result<(), String> {
    let mut filled = template.to_string();
    for placeholder in SUBJECT_PLACEHOLDERS {
        filled = filled.replace(placeholder, "x");
    }
    if let Some(start) = filled.find('{') {
        let rest = &filled[start..];
        let unknown = rest.find('}').map_or(rest, |end| &rest[..=end]);
        return Err(format!(
            "{template:?}: unknown placeholder {unknown}; use {}",
            SUBJECT_PLACEHOLDERS.join(" ")
        ));
    }
    if filled.contains('}') {
        return Err(format!("{template:?}: a }} without its {{"));
    }
    if filled.split('.').any(str::is_empty) {
        return Err(format!(
            "{template:?}: an empty token (a leading, trailing or double dot)"
        ));
    }
    if let Some(c) = filled
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "*>".contains(*c))
    {
        return Err(format!(
            "{template:?}: {c:?} is not allowed in a subject to publish to (no whitespace, no wildcards)"
        ));
    }
    Ok(())
}

/// `subject`, `credentials_file`, `token`, `user` and `password` belong to
/// NATS subscriptions only.
fn refuse_nats_keys(src: &Source, table: &Table, sub: &FileSubscription) -> Result<(), ConfigError> {
    let given = [
        sub.subject.as_ref().map(|v| (v.span(), "subject")),
        sub.credentials_file.as_ref().map(|v| (v.span(), "credentials_file")),
        sub.token.as_ref().map(|v| (v.span(), "token")),
        sub.user.as_ref().map(|v| (v.span(), "user")),
        sub.password.as_ref().map(|v| (v.span(), "password")),
    ];
    match given.into_iter().flatten().next() {
        Some((span, which)) => Err(src.at(
            span,
            &table.key(which),
            "only for nats:// and tls:// urls; an http(s) subscription does not take it".into(),
        )),
        None => Ok(()),
    }
}

/// `retry`: backoff from `initial` (1s) to `max` (5m), parked after
/// `give_up_after` (never).
fn retry_policy(src: &Source, table: &Table, file: &FileRetry) -> Result<RetryConfig, ConfigError> {
    let value = |d: &Option<Spanned<Dur>>, default: Duration| d.as_ref().map_or(default, |d| d.get_ref().0);
    let retry = RetryConfig {
        initial: value(&file.initial, Duration::from_secs(1)),
        max: value(&file.max, Duration::from_secs(300)),
        give_up_after: file.give_up_after.and_then(|g| g.0),
    };
    // Name the key written: a default alone is never at fault.
    let fault = if retry.initial.is_zero() {
        Some("initial")
    } else if retry.max < retry.initial {
        Some(if file.max.is_some() { "max" } else { "initial" })
    } else {
        None
    };
    match fault {
        None => Ok(retry),
        Some(k) => {
            let span = span_of(if k == "max" { &file.max } else { &file.initial });
            Err(src.at_or_key(
                span,
                &table.key(&format!("retry.{k}")),
                "need 0 < initial <= max".into(),
            ))
        }
    }
}

/// `headers`: names and values valid in HTTP.
fn request_headers(
    src: &Source,
    key: &str,
    file: BTreeMap<Spanned<String>, Spanned<String>>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut headers = BTreeMap::new();
    for (h, v) in file {
        let bad = if http::header::HeaderName::from_bytes(h.get_ref().as_bytes()).is_err() {
            Some(h.span())
        } else if http::header::HeaderValue::from_str(v.get_ref()).is_err() {
            Some(v.span())
        } else {
            None
        };
        if let Some(span) = bad {
            return Err(src.at(span, key, format!("invalid header {:?}", h.get_ref())));
        }
        headers.insert(h.into_inner(), v.into_inner());
    }
    Ok(headers)
}

/// `url`: where the POSTs go.
fn endpoint_url(src: &Source, key: &str, url: &Spanned<String>) -> Result<url::Url, ConfigError> {
    let parsed =
        url::Url::parse(url.get_ref()).map_err(|e| src.at(url.span(), key, format!("{:?}: {e}", url.get_ref())))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(src.at(
            url.span(),
            key,
            "must be an http:// or https:// URL (or nats:// and tls:// servers for NATS JetStream)".into(),
        ));
    }
    Ok(parsed)
}

/// `max_in_flight`: 1 to 1024.
fn in_flight_limit(src: &Source, key: &str, value: &Spanned<i64>) -> Result<usize, ConfigError> {
    let n = *value.get_ref();
    if !(1..=1024).contains(&n) {
        return Err(src.at(value.span(), key, format!("{n} is not between 1 and 1024")));
    }
    Ok(n as usize)
}

/// `max_rate`: requests per second, more than 0 and at most 100,000 (one
/// request in 10 µs: beyond what any endpoint takes from one store, and the
/// bucket's arithmetic stays exact).
fn rate_limit(src: &Source, key: &str, value: &Spanned<f64>) -> Result<f64, ConfigError> {
    let n = *value.get_ref();
    if !(n > 0.0 && n <= 100_000.0) {
        return Err(src.at(
            value.span(),
            key,
            format!("{n} is not a number of requests per second above 0 and at most 100000"),
        ));
    }
    Ok(n)
}

/// `client_cert` and `client_key` (mTLS): both or neither.
fn check_client_identity(
    src: &Source,
    table: &Table,
    cert: &Option<Spanned<PathBuf>>,
    key: &Option<Spanned<PathBuf>>,
) -> Result<(), ConfigError> {
    let (given, which) = match (cert, key) {
        (Some(c), None) => (c, "client_cert"),
        (None, Some(k)) => (k, "client_key"),
        _ => return Ok(()),
    };
    Err(src.at(
        given.span(),
        &table.key(which),
        "client_cert and client_key go together".into(),
    ))
}

/// A subscription's name: the key of its state in the database, so unique.
fn subscription_name(
    src: &Source,
    key: &str,
    name: &serde_spanned::Spanned<String>,
    earlier: &[SubscriptionConfig],
) -> Result<String, ConfigError> {
    let text = name.get_ref();
    let name_ok =
        !text.is_empty() && text.len() <= 64 && text.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !name_ok {
        return Err(src.at(
            name.span(),
            key,
            format!("{text:?} must be 1-64 characters of [A-Za-z0-9._-]"),
        ));
    }
    if earlier.iter().any(|s| s.name == *text) {
        return Err(src.at(name.span(), key, format!("{text:?} is used twice")));
    }
    Ok(text.clone())
}

/// The signing keys, from `secret` or the lines of `secret_file`, decoded.
fn subscription_secrets(src: &Source, table: &Table, sub: &FileSubscription) -> Result<Vec<Vec<u8>>, ConfigError> {
    let key = |k: &str| table.key(k);
    let (secret_texts, secret_span, secret_key) = match (&sub.secret, &sub.secret_file) {
        (Some(_), Some(f)) => {
            return Err(src.at(
                f.span(),
                &key("secret_file"),
                "give secret or secret_file, not both".into(),
            ))
        }
        (Some(s), None) => (s.get_ref().clone().into_vec(), s.span(), key("secret")),
        (None, Some(f)) => {
            let file_path = src.resolve(f.get_ref().clone());
            let content = std::fs::read_to_string(&file_path).map_err(|e| {
                src.at(
                    f.span(),
                    &key("secret_file"),
                    format!("cannot read {}: {e}", file_path.display()),
                )
            })?;
            let lines = content
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect();
            (lines, f.span(), key("secret_file"))
        }
        (None, None) => {
            return Err(src.at(
                table.span.clone(),
                &key("secret"),
                "missing: give secret = \"whsec_...\" or secret_file".into(),
            ))
        }
    };
    if secret_texts.is_empty() {
        return Err(src.at(secret_span, &secret_key, "no secret given".into()));
    }
    secret_texts
        .iter()
        .map(|s| crate::signing::decode_secret(s).map_err(|e| src.at(secret_span.clone(), &secret_key, e)))
        .collect()
}

/// Whether `events` names `AgentHeartbeat` (the agent's own events are
/// never taken by `"*"` alone).
fn names_heartbeats(events: &Option<serde_spanned::Spanned<OneOrMany>>) -> bool {
    events.as_ref().is_some_and(|list| {
        list.get_ref()
            .as_slice()
            .iter()
            .any(|t| t == crate::event::HEARTBEAT_TYPE)
    })
}

/// `events`: absent or `"*"` means every type.
fn event_filter(
    src: &Source,
    key: &str,
    events: Option<serde_spanned::Spanned<OneOrMany>>,
) -> Result<Option<HashSet<String>>, ConfigError> {
    let Some(list) = events else {
        return Ok(None);
    };
    let span = list.span();
    let types = list.into_inner().into_vec();
    if types.is_empty() {
        return Err(src.at(span, key, "empty list: use [\"*\"] for all events".into()));
    }
    if types.iter().any(|t| t == "*") {
        return Ok(None);
    }
    if let Some(t) = types.iter().find(|t| !crate::event::valid_type(t)) {
        return Err(src.at(span, key, format!("{t:?} is not a valid event type")));
    }
    Ok(Some(types.into_iter().collect()))
}

fn default_agent_id() -> String {
    // gethostname(2), not /proc/sys/kernel/hostname: the hardened unit hides
    // most of /proc from the service.
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).trim().to_string()
    } else {
        String::new()
    };
    if name.is_empty() {
        "agent".to_string()
    } else {
        name
    }
}

impl Config {
    /// Path of the outbox database.
    pub fn db_path(&self) -> PathBuf {
        self.agent.data_dir.join("outbox.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let nats = first.nats.as_ref().expect("a NATS subscription");
        assert_eq!(nats.servers, ["nats://n1:4222", "nats://n2:4222"]);
        assert_eq!(nats.subject, "pos.{store_id}.{type}");
        assert_eq!(nats.token.as_deref(), Some("t0k"));
        assert!(first.secrets.is_empty(), "secret is optional for NATS");
        assert_eq!(first.url_for_logs(), "nats://n1:4222,nats://n2:4222");
        assert!(!format!("{nats:?}").contains("t0k"), "the token is not in Debug output");
        let signed = parse(&nats_sub(&format!("secret = \"{SECRET}\"\n")), None).expect("valid");
        assert_eq!(signed.subscriptions[0].secrets.len(), 1);
        assert!(parse(&sub(""), None).expect("valid").subscriptions[0].nats.is_none());
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
