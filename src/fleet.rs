//! The central view of a fleet of agents: the newest `AgentHeartbeat` of
//! every store and agent, read back from a JetStream stream
//! (`store-outbox fleet`), ranked worst first.
//!
//! Owns: reading a heartbeat envelope leniently (agents of other versions
//! send more or fewer fields: [`FleetAgent::from_envelope`]), the ranking
//! and the table. Reading the stream is [`read_stream`] (feature `nats`).

use serde::Serialize;
use serde_json::Value;

use crate::heartbeat::EVENT_TYPE;
use crate::timefmt::human_duration;

/// An agent is stale once its newest heartbeat is older than this many
/// heartbeat periods.
pub const STALE_PERIODS: i64 = 3;

/// One agent as its newest heartbeat shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetAgent {
    /// `source.store_id`.
    pub store_id: String,
    /// `source.agent_id`.
    pub agent_id: String,
    /// Agent version.
    pub version: String,
    /// When the heartbeat was taken (the event's `timestamp`), RFC 3339.
    pub last_seen_at: String,
    /// Its age, seconds.
    pub last_seen_age_s: i64,
    /// The agent's heartbeat period, seconds.
    pub period_s: i64,
    /// No heartbeat for more than [`STALE_PERIODS`] periods.
    pub stale: bool,
    /// Why it was sent (`start`, `period`, `change`) and what changed.
    pub reason: String,
    /// What changed, for `change`.
    pub changes: Vec<String>,
    /// Database bytes in use.
    pub db_bytes: Option<u64>,
    /// `storage.max_db_bytes`.
    pub db_max_bytes: Option<u64>,
    /// New events are refused.
    pub db_full: bool,
    /// Per subscription.
    pub subscriptions: Vec<FleetSubscription>,
}

/// One subscription of an agent, as its heartbeat shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetSubscription {
    /// Its name.
    pub name: String,
    /// online, offline, gone ...
    pub state: String,
    /// Deliveries waiting.
    pub pending: i64,
    /// Deliveries parked.
    pub parked: i64,
    /// Age of the oldest pending event when the heartbeat was taken, seconds.
    pub oldest_pending_age_s: Option<i64>,
    /// Time of the last 2xx (or acknowledgement).
    pub last_success_at: Option<String>,
    /// The last failure.
    pub last_error: Option<String>,
}

impl FleetAgent {
    /// Reads a heartbeat envelope (the webhook body); `None` for anything
    /// else on the stream. `now_ms` ages it.
    pub fn from_envelope(envelope: &Value, now_ms: i64) -> Option<FleetAgent> {
        if envelope.get("type")?.as_str()? != EVENT_TYPE {
            return None;
        }
        let data = envelope.get("data")?;
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
        let source = envelope.get("source");
        let store_id = source
            .and_then(|s| text(s, "store_id"))
            .or_else(|| text(data, "store_id"))?;
        let agent_id = source
            .and_then(|s| text(s, "agent_id"))
            .or_else(|| text(data, "agent_id"))?;
        let last_seen_at = text(envelope, "timestamp")?;
        let seen_ms = time::OffsetDateTime::parse(&last_seen_at, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)?;
        let last_seen_age_s = ((now_ms - seen_ms) / 1000).max(0);
        let period_s = data.get("period_s").and_then(Value::as_i64).unwrap_or(0);
        let db = data.get("db");
        let subscriptions = data
            .get("subscriptions")
            .and_then(Value::as_array)
            .map(|subs| {
                subs.iter()
                    .filter_map(|s| {
                        Some(FleetSubscription {
                            name: text(s, "name")?,
                            state: text(s, "state").unwrap_or_else(|| "unknown".into()),
                            pending: s.get("pending").and_then(Value::as_i64).unwrap_or(0),
                            parked: s.get("parked").and_then(Value::as_i64).unwrap_or(0),
                            oldest_pending_age_s: s.get("oldest_pending_age_s").and_then(Value::as_i64),
                            last_success_at: text(s, "last_success_at"),
                            last_error: text(s, "last_error"),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(FleetAgent {
            store_id,
            agent_id,
            version: text(data, "version").unwrap_or_else(|| "?".into()),
            last_seen_at,
            last_seen_age_s,
            period_s,
            stale: period_s > 0 && last_seen_age_s > STALE_PERIODS * period_s,
            reason: text(data, "reason").unwrap_or_default(),
            changes: data
                .get("changes")
                .and_then(Value::as_array)
                .map(|c| c.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            db_bytes: db.and_then(|d| d.get("bytes")).and_then(Value::as_u64),
            db_max_bytes: db.and_then(|d| d.get("max_bytes")).and_then(Value::as_u64),
            db_full: db.and_then(|d| d.get("full")).and_then(Value::as_bool).unwrap_or(false),
            subscriptions,
        })
    }

    /// How bad it looks: stale, then storage full, then a subscription
    /// gone, offline, with parked events, with a backlog; higher is worse.
    pub fn severity(&self) -> u8 {
        let worst = |state: &str| self.subscriptions.iter().any(|s| s.state == state);
        if self.stale {
            6
        } else if self.db_full {
            5
        } else if worst("gone") {
            4
        } else if worst("offline") {
            3
        } else if self.subscriptions.iter().any(|s| s.parked > 0) {
            2
        } else if self.subscriptions.iter().any(|s| s.pending > 0) {
            1
        } else {
            0
        }
    }

    /// The oldest pending event over its subscriptions, seconds.
    fn oldest_pending(&self) -> i64 {
        self.subscriptions
            .iter()
            .filter_map(|s| s.oldest_pending_age_s)
            .max()
            .unwrap_or(0)
    }
}

/// Keeps the newest heartbeat per store and agent, and sorts worst first
/// (then the oldest backlog first, then by store and agent).
pub fn newest_per_agent(agents: impl IntoIterator<Item = FleetAgent>) -> Vec<FleetAgent> {
    let mut newest: std::collections::BTreeMap<(String, String), FleetAgent> = Default::default();
    for agent in agents {
        let key = (agent.store_id.clone(), agent.agent_id.clone());
        match newest.get(&key) {
            Some(known) if known.last_seen_at >= agent.last_seen_at => {}
            _ => {
                newest.insert(key, agent);
            }
        }
    }
    let mut out: Vec<FleetAgent> = newest.into_values().collect();
    out.sort_by(|a, b| {
        b.severity()
            .cmp(&a.severity())
            .then(b.oldest_pending().cmp(&a.oldest_pending()))
            .then_with(|| (&a.store_id, &a.agent_id).cmp(&(&b.store_id, &b.agent_id)))
    });
    out
}

fn age(seconds: Option<i64>) -> String {
    seconds.map_or_else(|| "-".to_string(), human_duration)
}

/// The table for people: one line per store and agent, its subscriptions
/// on the following lines.
pub fn render(agents: &[FleetAgent]) -> String {
    if agents.is_empty() {
        return "no heartbeats on the stream (is `[agent] heartbeat` set, and does a subscription's `events` name AgentHeartbeat?)\n".to_string();
    }
    let mut out = format!(
        "{:<10} {:<16} {:<8} {:<22} {:<14} {:<8} {:>8} {:>8} {:>6}  {}\n",
        "STORE", "AGENT", "VERSION", "LAST SEEN", "SUBSCRIPTION", "STATE", "PENDING", "OLDEST", "PARKED", "LAST ERROR"
    );
    let stale = agents.iter().filter(|a| a.stale).count();
    for a in agents {
        let seen = format!(
            "{} ago{}",
            human_duration(a.last_seen_age_s),
            if a.stale { " STALE" } else { "" }
        );
        let mut first = true;
        let mut line = |s: Option<&FleetSubscription>| {
            let (who, version, seen) = if first {
                (
                    (a.store_id.as_str(), a.agent_id.as_str()),
                    a.version.as_str(),
                    seen.as_str(),
                )
            } else {
                (("", ""), "", "")
            };
            first = false;
            match s {
                Some(s) => format!(
                    "{:<10} {:<16} {:<8} {:<22} {:<14} {:<8} {:>8} {:>8} {:>6}  {}\n",
                    who.0,
                    who.1,
                    version,
                    seen,
                    s.name,
                    s.state,
                    s.pending,
                    age(s.oldest_pending_age_s),
                    s.parked,
                    s.last_error.as_deref().unwrap_or("-")
                ),
                None => format!(
                    "{:<10} {:<16} {:<8} {:<22} (no subscriptions)\n",
                    who.0, who.1, version, seen
                ),
            }
        };
        if a.subscriptions.is_empty() {
            out += &line(None);
        }
        for s in &a.subscriptions {
            out += &line(Some(s));
        }
        if a.db_full {
            out += &format!("{:<10} {:<16} storage FULL: new events are refused\n", "", "");
        }
    }
    out += &format!(
        "{} agent(s), {} stale (no heartbeat for more than {STALE_PERIODS} periods)\n",
        agents.len(),
        stale
    );
    out
}

/// Where `fleet` reads from and how it logs in.
#[derive(Debug, Clone, Default)]
pub struct StreamSource {
    /// Servers, comma-separated in the argument.
    pub servers: Vec<String>,
    /// The stream; `None`: the only stream there is.
    pub stream: Option<String>,
    /// Only subjects matching this filter (`>` for all).
    pub subject: String,
    /// A `.creds` file.
    pub credentials_file: Option<std::path::PathBuf>,
    /// Token authentication.
    pub token: Option<String>,
    /// User and password.
    pub user_password: Option<(String, String)>,
    /// Extra CA certificate (PEM).
    pub ca_file: Option<std::path::PathBuf>,
    /// How long to wait for the servers.
    pub timeout: std::time::Duration,
}

/// Reads the newest message of every subject of the stream that matches the
/// filter and returns the newest heartbeat of each agent among them.
///
/// It speaks the JetStream API itself (stream info with its subjects, then
/// "get the last message of this subject"), over plain NATS requests: one
/// message per subject is read, not the stream's history, and the agent's
/// binary carries no consumer machinery it would use only here.
#[cfg(feature = "nats")]
pub async fn read_stream(source: &StreamSource, now_ms: i64) -> Result<Vec<FleetAgent>, String> {
    let client = connect(source).await?;
    let api = JetStreamApi {
        client: &client,
        timeout: source.timeout,
    };
    let name = match &source.stream {
        Some(name) => name.clone(),
        None => api.only_stream().await?,
    };
    let subjects = api.subjects(&name, &source.subject).await?;
    let mut agents = Vec::new();
    for subject in subjects {
        if let Some(body) = api.last_message(&name, &subject).await? {
            if let Ok(envelope) = serde_json::from_slice::<Value>(&body) {
                agents.extend(FleetAgent::from_envelope(&envelope, now_ms));
            }
        }
    }
    Ok(newest_per_agent(agents))
}

/// Connects with the source's servers, authentication and TLS.
#[cfg(feature = "nats")]
async fn connect(source: &StreamSource) -> Result<async_nats::Client, String> {
    let shown = source.servers.join(",");
    let mut options = match &source.credentials_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--credentials-file {}: cannot read it: {e}", path.display()))?;
            async_nats::ConnectOptions::with_credentials(&text).map_err(|e| {
                format!(
                    "--credentials-file {}: not a NATS credentials file: {e}",
                    path.display()
                )
            })?
        }
        None => async_nats::ConnectOptions::new(),
    };
    if let Some(token) = &source.token {
        options = options.token(token.clone());
    }
    if let Some((user, password)) = &source.user_password {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(ca) = &source.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if source
        .servers
        .iter()
        .any(|s| s.to_ascii_lowercase().starts_with("tls://"))
    {
        options = options.require_tls(true);
    }
    let connecting = options
        .name("store-outbox fleet")
        .connection_timeout(source.timeout)
        .request_timeout(Some(source.timeout))
        .connect(source.servers.as_slice());
    tokio::time::timeout(source.timeout, connecting)
        .await
        .map_err(|_| format!("cannot connect to {shown} within {:?}", source.timeout))?
        .map_err(|e| format!("cannot connect to {shown}: {e}"))
}

/// The few JetStream API calls `fleet` needs, as JSON requests.
#[cfg(feature = "nats")]
struct JetStreamApi<'a> {
    /// The connection.
    client: &'a async_nats::Client,
    /// Per request.
    timeout: std::time::Duration,
}

#[cfg(feature = "nats")]
impl JetStreamApi<'_> {
    /// One API request; its JSON answer, or the API's error in words.
    async fn call(&self, subject: String, request: Value) -> Result<Value, String> {
        let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(self.timeout, self.client.request(subject.clone(), body.into()))
            .await
            .map_err(|_| format!("{subject}: no answer within {:?} (is JetStream enabled?)", self.timeout))?
            .map_err(|e| format!("{subject}: {e}"))?;
        let value: Value =
            serde_json::from_slice(&answer.payload).map_err(|e| format!("{subject}: not a JetStream answer: {e}"))?;
        if let Some(error) = value.get("error") {
            let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
            let text = error.get("description").and_then(Value::as_str).unwrap_or("error");
            return Err(format!("{text} ({code})"));
        }
        Ok(value)
    }

    /// The name of the only stream on the servers.
    async fn only_stream(&self) -> Result<String, String> {
        let answer = self
            .call("$JS.API.STREAM.NAMES".into(), serde_json::json!({}))
            .await
            .map_err(|e| format!("cannot list the streams: {e}"))?;
        let names: Vec<String> = answer
            .get("streams")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        match names.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err("there is no stream on these servers".into()),
            many => Err(format!("several streams ({}): name one with --stream", many.join(", "))),
        }
    }

    /// The stream's subjects that match `filter`, page by page.
    async fn subjects(&self, stream: &str, filter: &str) -> Result<Vec<String>, String> {
        let mut subjects = Vec::new();
        loop {
            let answer = self
                .call(
                    format!("$JS.API.STREAM.INFO.{stream}"),
                    serde_json::json!({"subjects_filter": filter, "offset": subjects.len()}),
                )
                .await
                .map_err(|e| format!("stream {stream:?}: {e}"))?;
            let page: Vec<String> = answer
                .pointer("/state/subjects")
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            let total = answer.get("total").and_then(Value::as_u64).unwrap_or(0) as usize;
            let got = page.len();
            subjects.extend(page);
            if got == 0 || subjects.len() >= total {
                break;
            }
        }
        subjects.sort();
        subjects.dedup();
        Ok(subjects)
    }

    /// The body of the newest message on `subject`; `None` if it has none
    /// any more.
    async fn last_message(&self, stream: &str, subject: &str) -> Result<Option<Vec<u8>>, String> {
        use base64::Engine as _;
        let answer = match self
            .call(
                format!("$JS.API.STREAM.MSG.GET.{stream}"),
                serde_json::json!({ "last_by_subj": subject }),
            )
            .await
        {
            Ok(answer) => answer,
            // Deleted between the listing and this read.
            Err(e) if e.ends_with("(404)") => return Ok(None),
            Err(e) => return Err(format!("stream {stream:?}, subject {subject}: {e}")),
        };
        let data = answer.pointer("/message/data").and_then(Value::as_str).unwrap_or("");
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map(Some)
            .map_err(|e| format!("stream {stream:?}, subject {subject}: undecodable message: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(store: &str, agent: &str, at: &str, subs: Value) -> Value {
        serde_json::json!({
            "id": "x", "type": "AgentHeartbeat", "timestamp": at, "entity": format!("agent:{agent}"),
            "entity_seq": 1, "source": {"store_id": store, "agent_id": agent},
            "data": {"version": "0.1.0", "period_s": 60, "reason": "period", "uptime_s": 5,
                     "db": {"bytes": 4096, "max_bytes": 1_000_000, "full": false},
                     "subscriptions": subs}
        })
    }

    const NOW: &str = "2026-12-01T10:00:00Z";
    fn now_ms() -> i64 {
        1_796_119_200_000
    }

    #[test]
    fn reads_a_heartbeat_and_ignores_other_events() {
        let sale = serde_json::json!({"type": "SaleCreated", "data": {}});
        assert!(FleetAgent::from_envelope(&sale, now_ms()).is_none());
        let hb = heartbeat(
            "0042",
            "till-1",
            "2026-12-01T09:59:00Z",
            serde_json::json!([{"name": "erp", "state": "offline", "pending": 12, "parked": 0,
                "oldest_pending_age_s": 300, "last_error": "connection refused", "future_field": 1}]),
        );
        let a = FleetAgent::from_envelope(&hb, now_ms()).expect("a heartbeat");
        assert_eq!((a.store_id.as_str(), a.agent_id.as_str()), ("0042", "till-1"));
        assert_eq!(a.last_seen_age_s, 60);
        assert!(!a.stale);
        assert_eq!(a.subscriptions[0].pending, 12);
        assert_eq!(a.severity(), 3);
    }

    #[test]
    fn stale_after_three_periods_and_sorted_worst_first() {
        let ok = heartbeat(
            "0001",
            "a",
            NOW,
            serde_json::json!([{"name": "erp", "state": "online"}]),
        );
        let stale = heartbeat("0002", "b", "2026-12-01T09:56:59Z", serde_json::json!([]));
        let offline = heartbeat(
            "0003",
            "c",
            NOW,
            serde_json::json!([{"name": "erp", "state": "offline", "pending": 3}]),
        );
        let older_ok = heartbeat("0001", "a", "2026-12-01T09:00:00Z", serde_json::json!([]));
        let agents = newest_per_agent(
            [ok, stale, offline, older_ok]
                .iter()
                .filter_map(|e| FleetAgent::from_envelope(e, now_ms())),
        );
        let order: Vec<(&str, bool)> = agents.iter().map(|a| (a.store_id.as_str(), a.stale)).collect();
        assert_eq!(order, vec![("0002", true), ("0003", false), ("0001", false)]);
        // The newest of store 0001 is kept.
        assert_eq!(agents[2].last_seen_at, NOW);
        let table = render(&agents);
        assert!(
            table.contains("STALE") && table.contains("3 agent(s), 1 stale"),
            "{table}"
        );
    }
}
