//! The validated configuration the agent runs with: the sections, their
//! settings with defaults applied, and the subscriptions. What the rest of
//! the agent reads; nothing here parses.

use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    /// server of `url` (all of them are in its kind's settings).
    pub url: url::Url,
    /// Signing keys (already base64-decoded); the first is the newest. Empty
    /// only for a bus subscription without `secret` (no signature headers).
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
    /// The kind of destination `url` names, with its own settings (those
    /// of NATS JetStream, say), which only that kind reads.
    pub kind: KindConfig,
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

impl SubscriptionConfig {
    /// The URL without credentials or query string, safe to log and show
    /// (or what its kind shows instead: for NATS every server).
    pub fn url_for_logs(&self) -> String {
        if let Some(shown) = self.kind.url_for_logs() {
            return shown;
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

impl Config {
    /// Path of the outbox database.
    pub fn db_path(&self) -> PathBuf {
        self.agent.data_dir.join("outbox.db")
    }
}

/// A kind's own settings, as its parser made them. `PartialEq` so a reload
/// sees that they changed; `Debug` without secrets.
pub trait KindSettings: std::fmt::Debug + PartialEq + Send + Sync + 'static {
    /// The URL safe to show, when the kind's `url` is not a single URL
    /// (NATS: every server); `None`: the subscription's `url` without its
    /// credentials.
    fn url_for_logs(&self) -> Option<String> {
        None
    }
}

/// The kind of a subscription's destination and its own settings.
#[derive(Clone)]
pub struct KindConfig {
    name: &'static str,
    settings: Option<Arc<dyn ErasedSettings>>,
}

impl KindConfig {
    /// A kind with no settings of its own (the webhook).
    pub fn plain(name: &'static str) -> Self {
        KindConfig { name, settings: None }
    }

    /// A kind with its own settings.
    pub fn with<T: KindSettings>(name: &'static str, settings: T) -> Self {
        KindConfig {
            name,
            settings: Some(Arc::new(settings)),
        }
    }

    /// The kind's name ([`DestinationKind::name`]).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The kind's own settings, if they are a `T`.
    pub fn settings<T: KindSettings>(&self) -> Option<&T> {
        self.settings.as_ref()?.as_any().downcast_ref()
    }

    /// What [`KindSettings::url_for_logs`] says.
    pub fn url_for_logs(&self) -> Option<String> {
        self.settings.as_ref()?.url_for_logs()
    }
}

impl PartialEq for KindConfig {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && match (&self.settings, &other.settings) {
                (None, None) => true,
                (Some(a), Some(b)) => a.same_as(b.as_ref()),
                _ => false,
            }
    }
}

impl std::fmt::Debug for KindConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.settings {
            Some(settings) => write!(f, "{} {settings:?}", self.name),
            None => f.write_str(self.name),
        }
    }
}

/// [`KindSettings`] behind `dyn`: compared and downcast by their type.
trait ErasedSettings: std::fmt::Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn same_as(&self, other: &dyn ErasedSettings) -> bool;
    fn url_for_logs(&self) -> Option<String>;
}

impl<T: KindSettings> ErasedSettings for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn same_as(&self, other: &dyn ErasedSettings) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
    fn url_for_logs(&self) -> Option<String> {
        KindSettings::url_for_logs(self)
    }
}
