//! Reload (`systemctl reload`, SIGHUP): where reload requests come from,
//! and what a re-read config changes for the running agent.
//!
//! The `[[subscription]]` sections take effect without a restart: added
//! ones start, removed ones stop (their rows are kept), changed ones (any
//! field of `SubscriptionConfig`) are stopped once their requests in flight
//! are recorded and started again with the new settings
//! (`agent::Deliveries::reload` applies them). Every other key is read at
//! start only; [`restart_only_changes`] names the ones that differ, so the
//! log can say which keys still wait for a restart.

use std::path::Path;

use crate::config::{Config, SubscriptionConfig};

/// Where reload requests come from: SIGHUP for the service, nothing for an
/// agent run inside another command (the demo).
pub struct Requests(Option<tokio::signal::unix::Signal>);

impl Requests {
    /// SIGHUP. Installed before the agent opens its database, so a hangup
    /// during the start is a reload once it runs, not the end of the process.
    pub fn sighup() -> std::io::Result<Requests> {
        let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        Ok(Requests(Some(signal)))
    }

    /// No reload requests ever.
    pub fn none() -> Requests {
        Requests(None)
    }

    /// Resolves at the next request; never without a source.
    pub async fn next(&mut self) {
        match &mut self.0 {
            Some(signal) => {
                if signal.recv().await.is_none() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

/// Reads and validates the config file the agent started with, as `run`
/// does (errors name file, line and key).
pub fn read_config(source: Option<&Path>) -> Result<Config, String> {
    crate::deliver::destinations::load_config(source).map_err(|e| e.0)
}

/// How the subscriptions of a re-read config differ from the running ones.
#[derive(Debug, Default, PartialEq)]
pub struct SubscriptionChanges {
    /// New names, in the new config's order.
    pub added: Vec<String>,
    /// Names no longer configured, in the running order.
    pub removed: Vec<String>,
    /// Names whose settings differ in any field.
    pub changed: Vec<String>,
    /// How many stay as they are.
    pub unchanged: usize,
}

impl SubscriptionChanges {
    /// Whether any subscription starts, stops or changes.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// Whether the scheduler of `name` stops (removed or changed).
    pub fn stops(&self, name: &str) -> bool {
        self.removed.iter().chain(&self.changed).any(|n| n == name)
    }

    /// Whether a scheduler for `name` starts (added or changed).
    pub fn starts(&self, name: &str) -> bool {
        self.added.iter().chain(&self.changed).any(|n| n == name)
    }

    /// "added a, b; removed c; changed d; 2 unchanged", for the log.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (what, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("changed", &self.changed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what} {}", names.join(", ")));
            }
        }
        parts.push(format!("{} unchanged", self.unchanged));
        parts.join("; ")
    }
}

/// Compares subscriptions by name; a subscription whose settings differ in
/// any field (the whole `SubscriptionConfig`, so keys added later count
/// too) is changed.
pub fn subscription_changes(running: &[SubscriptionConfig], new: &[SubscriptionConfig]) -> SubscriptionChanges {
    let mut changes = SubscriptionChanges::default();
    for sub in new {
        match running.iter().find(|r| r.name == sub.name) {
            None => changes.added.push(sub.name.clone()),
            Some(old) if old != sub => changes.changed.push(sub.name.clone()),
            Some(_) => changes.unchanged += 1,
        }
    }
    changes.removed = running
        .iter()
        .filter(|r| !new.iter().any(|n| n.name == r.name))
        .map(|r| r.name.clone())
        .collect();
    changes
}

/// The keys outside `[[subscription]]` whose value in `new` differs from
/// the running config: they take effect only after a restart. A section
/// that differs in a key not named here (one added later) is named whole.
pub fn restart_only_changes(running: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    let mut note = |section: &str, differs: bool, named: &[(&str, bool)]| {
        if !differs {
            return;
        }
        let before = keys.len();
        keys.extend(
            named
                .iter()
                .filter(|(_, d)| *d)
                .map(|(key, _)| format!("{section}.{key}")),
        );
        if keys.len() == before {
            keys.push(format!("[{section}]"));
        }
    };
    let (a, b) = (&running.agent, &new.agent);
    note(
        "agent",
        a != b,
        &[
            ("store_id", a.store_id != b.store_id),
            ("agent_id", a.agent_id != b.agent_id),
            ("data_dir", a.data_dir != b.data_dir),
            ("heartbeat", a.heartbeat != b.heartbeat),
        ],
    );
    let (a, b) = (&running.ingest, &new.ingest);
    note(
        "ingest",
        a != b,
        &[
            ("socket", a.socket != b.socket),
            ("http_listen", a.http_listen != b.http_listen),
            ("max_request_bytes", a.max_request_bytes != b.max_request_bytes),
            ("spool_dir", a.spool_dir != b.spool_dir),
            ("max_event_bytes", a.max_event_bytes != b.max_event_bytes),
        ],
    );
    let (a, b) = (&running.storage, &new.storage);
    note(
        "storage",
        a != b,
        &[
            ("max_db_bytes", a.max_db_bytes != b.max_db_bytes),
            ("retain_delivered", a.retain_delivered != b.retain_delivered),
        ],
    );
    let (a, b) = (&running.admin, &new.admin);
    note(
        "admin",
        a != b,
        &[
            ("listen", a.listen != b.listen),
            ("token_file", a.token_file != b.token_file),
        ],
    );
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::deliver::destinations::parse_config(text, None).expect("valid config")
    }

    const BASE: &str = "[agent]\nstore_id = \"0042\"\nagent_id = \"till-03\"\n";

    fn sub(name: &str, extra: &str) -> String {
        format!(
            "[[subscription]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:9/{name}\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n{extra}\n"
        )
    }

    #[test]
    fn subscriptions_are_compared_by_name_and_every_setting() {
        let running = config(&format!("{BASE}{}{}{}", sub("a", ""), sub("b", ""), sub("c", "")));
        let new = config(&format!(
            "{BASE}{}{}{}",
            sub("d", ""),
            sub("b", "max_in_flight = 3"),
            sub("a", "")
        ));
        let changes = subscription_changes(&running.subscriptions, &new.subscriptions);
        assert_eq!(
            changes,
            SubscriptionChanges {
                added: vec!["d".into()],
                removed: vec!["c".into()],
                changed: vec!["b".into()],
                unchanged: 1,
            }
        );
        assert!(changes.stops("b") && changes.stops("c") && !changes.stops("a") && !changes.stops("d"));
        assert!(changes.starts("b") && changes.starts("d") && !changes.starts("a") && !changes.starts("c"));
        assert_eq!(changes.summary(), "added d; removed c; changed b; 1 unchanged");
        let same = subscription_changes(&running.subscriptions, &running.subscriptions);
        assert!(same.is_empty());
        assert_eq!(same.unchanged, 3);
    }

    #[test]
    fn a_changed_header_or_retry_is_a_change() {
        let running = config(&format!("{BASE}{}", sub("a", "headers = { \"x-k\" = \"1\" }")));
        let header = config(&format!("{BASE}{}", sub("a", "headers = { \"x-k\" = \"2\" }")));
        let retry = config(&format!(
            "{BASE}{}",
            sub("a", "headers = { \"x-k\" = \"1\" }\nretry = { initial = \"2s\" }")
        ));
        for new in [&header, &retry] {
            assert_eq!(
                subscription_changes(&running.subscriptions, &new.subscriptions).changed,
                vec!["a".to_string()]
            );
        }
    }

    #[test]
    fn keys_outside_the_subscriptions_are_named_as_restart_only() {
        let running = config(&format!("{BASE}[ingest]\nhttp_listen = \"127.0.0.1:7390\"\n"));
        let new = config(
            "[agent]\nstore_id = \"0042\"\nagent_id = \"till-04\"\ndata_dir = \"/elsewhere\"\n\
             [ingest]\nhttp_listen = \"127.0.0.1:7399\"\n[storage]\nretain_delivered = \"1d\"\n\
             [admin]\nlisten = \"off\"\n",
        );
        assert_eq!(
            restart_only_changes(&running, &new),
            // The socket and the spool default to places in data_dir.
            [
                "agent.agent_id",
                "agent.data_dir",
                "ingest.socket",
                "ingest.http_listen",
                "ingest.spool_dir",
                "storage.retain_delivered",
                "admin.listen"
            ]
        );
        assert!(restart_only_changes(&running, &running).is_empty());
    }
}
