//! The keys of an Azure Service Bus subscription (`servicebus://` URLs):
//! the namespace and queue or topic of `url`, exactly one way to
//! authenticate (a SAS policy's `sas_key_name` + `sas_key_file`, or an
//! Entra ID application's `tenant_id` + `client_id` + `client_secret_file`),
//! and the two base URLs tests and sovereign clouds change (`endpoint`,
//! `authority`); what the config keeps of them ([`ServiceBusSettings`]:
//! paths, never the secrets themselves, which are read at start).

use std::path::PathBuf;

use crate::config::{BatchLimits, ConfigError, DestinationKind, KindConfig, KindParsed, KindSettings, OwnKeys};

/// The Service Bus kind as the config file sees it.
pub static CONFIG: DestinationKind = DestinationKind {
    name: "Azure Service Bus",
    schemes: &["servicebus"],
    keys: &[
        "sas_key_name",
        "sas_key_file",
        "tenant_id",
        "client_id",
        "client_secret_file",
        "endpoint",
        "authority",
    ],
    refuses: &[
        (
            "compression",
            "only for http(s) urls: Service Bus's REST API takes message bodies as they are (no content-encoding)",
        ),
        (
            "format",
            "only for http(s) urls: a Service Bus message carries the webhook envelope, its properties are Service Bus's own",
        ),
        (
            "headers",
            "only for http(s) urls: a Service Bus request's headers become the message's custom properties, which the agent sets (type, store_id, agent_id, entity_seq)",
        ),
    ],
    secret_required: false,
    // At most 1 MiB in one request (Premium; Standard takes 256 KB, see
    // docs/SERVICEBUS.md); the shared bound on messages.
    batch_limits: Some(BatchLimits {
        max_events: 10_000,
        max_bytes: super::MAX_BATCH_BYTES,
    }),
    parse,
};

/// Entra ID's base URL when `authority` is not given (Azure's public cloud).
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// The SAS keys, the Entra ID keys: one group or the other.
const SAS_KEYS: [&str; 2] = ["sas_key_name", "sas_key_file"];
const ENTRA_KEYS: [&str; 3] = ["tenant_id", "client_id", "client_secret_file"];

/// How the agent proves it may send.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    /// A shared access policy of the namespace or entity (Send claim).
    Sas {
        /// `sas_key_name`: the policy's name (`skn` of the token).
        key_name: String,
        /// `sas_key_file`: the file holding the policy's key.
        key_file: PathBuf,
    },
    /// An Entra ID application (client credentials), with the role Azure
    /// Service Bus Data Sender.
    Entra {
        /// `tenant_id`: the directory (GUID or domain).
        tenant_id: String,
        /// `client_id`: the application (client) id.
        client_id: String,
        /// `client_secret_file`: the file holding the client secret.
        client_secret_file: PathBuf,
    },
}

/// The Service Bus side of a subscription whose `url` is `servicebus://`.
/// Holds paths, not secrets, so its `Debug` is safe to log.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceBusSettings {
    /// The namespace's host, lower case (`retail.servicebus.windows.net`).
    pub namespace: String,
    /// The queue or topic, as written (`pos-events`).
    pub entity: String,
    /// How the agent authenticates.
    pub credential: Credential,
    /// `endpoint`: where requests go, without a trailing slash; default
    /// `https://<namespace>`.
    pub endpoint: url::Url,
    /// `authority`: Entra ID's base URL, without a trailing slash.
    pub authority: url::Url,
}

impl ServiceBusSettings {
    /// `https://<namespace>/<entity>`: what a SAS token grants, whatever
    /// `endpoint` says (the service checks it against its own name).
    pub fn resource_uri(&self) -> String {
        format!("https://{}/{}", self.namespace, self.entity)
    }

    /// `{endpoint}/{entity}/messages`: Send Message and Send Message Batch.
    pub fn messages_url(&self) -> Result<url::Url, String> {
        join(&self.endpoint, &format!("{}/messages", self.entity))
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token`: Entra ID's token endpoint.
    pub fn token_url(&self, tenant_id: &str) -> Result<url::Url, String> {
        join(&self.authority, &format!("{tenant_id}/oauth2/v2.0/token"))
    }
}

/// `base` (no trailing slash) and `path` (checked characters only).
fn join(base: &url::Url, path: &str) -> Result<url::Url, String> {
    let text = format!("{}/{path}", base.as_str().trim_end_matches('/'));
    url::Url::parse(&text).map_err(|e| format!("{text}: {e}"))
}

impl KindSettings for ServiceBusSettings {}

/// `url`, one way to authenticate, `endpoint` and `authority`.
fn parse(keys: &OwnKeys<'_>) -> Result<KindParsed, ConfigError> {
    let url = keys.parsed_url()?;
    let (namespace, entity) =
        namespace_and_entity(&url).map_err(|e| keys.url_error(format!("{:?}: {e}", keys.url())))?;
    let credential = credential(keys)?;
    let endpoint = match keys.string("endpoint")? {
        Some(text) => base_url(&text).map_err(|e| keys.error("endpoint", e))?,
        None => base_url(&format!("https://{namespace}")).map_err(|e| keys.url_error(e))?,
    };
    let authority = match keys.string("authority")? {
        Some(text) => {
            if !matches!(credential, Credential::Entra { .. }) {
                return Err(keys.error(
                    "authority",
                    "goes with Entra ID (tenant_id, client_id, client_secret_file)",
                ));
            }
            base_url(&text).map_err(|e| keys.error("authority", e))?
        }
        None => base_url(DEFAULT_AUTHORITY).map_err(|e| keys.error("authority", e))?,
    };
    Ok(KindParsed {
        url,
        settings: KindConfig::with(
            CONFIG.name,
            ServiceBusSettings {
                namespace,
                entity,
                credential,
                endpoint,
                authority,
            },
        ),
    })
}

/// The namespace's host and the queue or topic of a `servicebus://` URL.
fn namespace_and_entity(url: &url::Url) -> Result<(String, String), String> {
    const SHAPE: &str = "give servicebus://<namespace>.servicebus.windows.net/<queue-or-topic>";
    if !url.username().is_empty() || url.password().is_some() || url.port().is_some() {
        return Err(format!("no user, password or port in a Service Bus url; {SHAPE}"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("no ?query or #fragment in a Service Bus url; {SHAPE}"));
    }
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let mut labels = host.split('.');
    let name = labels.next().unwrap_or_default();
    let rest: Vec<&str> = labels.collect();
    if rest.len() < 2 || rest.iter().any(|l| !is_dns_label(l)) {
        return Err(format!("{host:?} is not a namespace's host name; {SHAPE}"));
    }
    check_namespace_name(name)?;
    let entity = url.path().trim_start_matches('/');
    check_entity_name(entity).map_err(|e| format!("{e}; {SHAPE}"))?;
    Ok((host, entity.to_string()))
}

fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// Azure's rule for a namespace name: 6 to 50 letters, digits and hyphens,
/// starting with a letter, ending with a letter or digit.
fn check_namespace_name(name: &str) -> Result<(), String> {
    let ok = (6..=50).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "namespace {name:?}: 6 to 50 letters, digits and hyphens, starting with a letter and ending with a letter or digit"
        ))
    }
}

/// A queue or topic name as this agent takes it: one path segment of 1 to
/// 260 letters, digits, `.`, `-` and `_`, starting and ending with a letter
/// or digit (Azure's rules, without the nested paths a queue may have).
fn check_entity_name(entity: &str) -> Result<(), String> {
    if entity.is_empty() {
        return Err("no queue or topic after the namespace".into());
    }
    let ok = entity.len() <= 260
        && entity.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && entity.starts_with(|c: char| c.is_ascii_alphanumeric())
        && entity.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "queue or topic {entity:?}: 1 to 260 letters, digits, '.', '-' and '_', starting and ending with a letter or digit (no '/')"
        ))
    }
}

/// Exactly one of SAS and Entra ID, each complete.
fn credential(keys: &OwnKeys<'_>) -> Result<Credential, ConfigError> {
    let sas = SAS_KEYS.iter().copied().find(|k| keys.has(k));
    let entra = ENTRA_KEYS.iter().copied().find(|k| keys.has(k));
    match (sas, entra) {
        (Some(_), Some(_)) => {
            let second = ENTRA_KEYS.iter().copied().find(|k| keys.has(k)).unwrap_or("tenant_id");
            Err(keys.error(
                second,
                "give one way to authenticate: sas_key_name + sas_key_file, or tenant_id + client_id + client_secret_file (Entra ID)",
            ))
        }
        (None, None) => Err(keys.missing(
            "sas_key_name",
            "a servicebus:// url needs sas_key_name + sas_key_file, or tenant_id + client_id + client_secret_file (Entra ID)",
        )),
        (Some(_), None) => {
            let key_name = required(keys, "sas_key_name", "the shared access policy's name, e.g. \"store-sender\"")?;
            check_word(&key_name, 256, "._-").map_err(|e| keys.error("sas_key_name", e))?;
            let key_file = required_path(keys, "sas_key_file", "the file holding the policy's key")?;
            Ok(Credential::Sas { key_name, key_file })
        }
        (None, Some(_)) => {
            let tenant_id = required(keys, "tenant_id", "the directory (tenant) id of the Entra ID application")?;
            check_word(&tenant_id, 100, ".-").map_err(|e| keys.error("tenant_id", e))?;
            let client_id = required(keys, "client_id", "the application (client) id")?;
            check_word(&client_id, 100, ".-_").map_err(|e| keys.error("client_id", e))?;
            let client_secret_file = required_path(keys, "client_secret_file", "the file holding the client secret")?;
            Ok(Credential::Entra {
                tenant_id,
                client_id,
                client_secret_file,
            })
        }
    }
}

fn required(keys: &OwnKeys<'_>, key: &str, what: &str) -> Result<String, ConfigError> {
    match keys.string(key)? {
        Some(value) if value.trim().is_empty() => Err(keys.error(key, format!("empty; give {what}"))),
        Some(value) => Ok(value),
        None => Err(keys.missing(key, what)),
    }
}

fn required_path(keys: &OwnKeys<'_>, key: &str, what: &str) -> Result<PathBuf, ConfigError> {
    required(keys, key, what)?;
    keys.path(key)?.ok_or_else(|| keys.missing(key, what))
}

/// Letters, digits and `extra`, at most `max` bytes: a name that goes
/// into a token or a URL path as it is.
fn check_word(value: &str, max: usize, extra: &str) -> Result<(), String> {
    if value.len() <= max && value.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c)) {
        Ok(())
    } else {
        let shown: Vec<String> = extra.chars().map(|c| format!("'{c}'")).collect();
        Err(format!(
            "{value:?}: at most {max} letters, digits and {}",
            shown.join(", ")
        ))
    }
}

/// `endpoint` or `authority`: an `http(s)://host[:port][/path]` without
/// user, query or fragment, its trailing slash dropped. Plain `http://`
/// only to this machine: a token must not cross a network in clear.
fn base_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text.trim_end_matches('/')).map_err(|e| format!("{text:?}: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?}: give an https://host URL"));
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text:?}: no user, password, ?query or #fragment"));
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if url.scheme() == "http" && !loopback {
        return Err(format!(
            "{text:?}: plain http only to this machine (127.0.0.1, [::1], localhost); tokens go over https"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::destinations::parse_config;

    const URL: &str = "servicebus://retail.servicebus.windows.net/pos-events";

    fn parse_sub(keys: &str) -> Result<crate::config::SubscriptionConfig, String> {
        let text = format!("[[subscription]]\nname = \"azure\"\nurl = \"{URL}\"\n{keys}");
        parse_config(&text, None)
            .map(|mut c| c.subscriptions.remove(0))
            .map_err(|e| e.to_string())
    }

    fn error_of(keys: &str) -> String {
        parse_sub(keys).expect_err("refused")
    }

    fn url_error(url: &str) -> String {
        let text = format!(
            "[[subscription]]\nname = \"azure\"\nurl = \"{url}\"\nsas_key_name = \"s\"\nsas_key_file = \"k\"\n"
        );
        parse_config(&text, None).expect_err("refused").to_string()
    }

    #[test]
    fn a_batch_over_what_one_request_takes_is_refused_with_its_line() {
        let sas = "sas_key_name = \"s\"\nsas_key_file = \"k\"\n";
        let e = error_of(&format!("{sas}batch = {{ max_bytes = \"2MiB\" }}\n"));
        assert!(
            e.contains("line 6: subscription[0].batch.max_bytes")
                && e.contains("more than one Azure Service Bus request takes (1048576 bytes)"),
            "{e}"
        );
        let ok = parse_sub(&format!("{sas}batch = {{ max_bytes = \"250KiB\" }}\n")).expect("valid");
        assert_eq!(ok.batch.map(|b| b.max_bytes), Some(250 * 1024));
    }

    #[test]
    fn sas_and_entra_configs_are_read_with_their_defaults() {
        let sub = parse_sub("sas_key_name = \"store-sender\"\nsas_key_file = \"/etc/store-outbox/azure.key\"\n")
            .expect("valid");
        let s = sub.kind.settings::<ServiceBusSettings>().expect("settings");
        assert_eq!(s.namespace, "retail.servicebus.windows.net");
        assert_eq!(s.entity, "pos-events");
        assert_eq!(s.endpoint.as_str(), "https://retail.servicebus.windows.net/");
        assert_eq!(
            s.messages_url().expect("url").as_str(),
            "https://retail.servicebus.windows.net/pos-events/messages"
        );
        assert_eq!(s.resource_uri(), "https://retail.servicebus.windows.net/pos-events");
        assert_eq!(
            s.credential,
            Credential::Sas {
                key_name: "store-sender".into(),
                key_file: "/etc/store-outbox/azure.key".into()
            }
        );
        assert!(sub.secrets.is_empty(), "secret is optional");
        assert_eq!(sub.url_for_logs(), URL);

        let sub = parse_sub(
            "tenant_id = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"\nclient_id = \"app-1\"\n\
             client_secret_file = \"/etc/azure.secret\"\nendpoint = \"http://127.0.0.1:9000/\"\n\
             authority = \"http://127.0.0.1:9000\"\nbatch = { max_events = 10 }\n",
        )
        .expect("valid");
        let s = sub.kind.settings::<ServiceBusSettings>().expect("settings");
        assert_eq!(
            s.messages_url().expect("url").as_str(),
            "http://127.0.0.1:9000/pos-events/messages"
        );
        assert_eq!(
            s.token_url("t1").expect("url").as_str(),
            "http://127.0.0.1:9000/t1/oauth2/v2.0/token"
        );
        assert_eq!(s.resource_uri(), "https://retail.servicebus.windows.net/pos-events");
        assert!(sub.batch.is_some(), "batch is taken");
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let e = error_of("");
        assert!(
            e.contains("line 1") && e.contains("subscription[0].sas_key_name") && e.contains("missing"),
            "{e}"
        );
        let e = error_of("sas_key_name = \"s\"\n");
        assert!(
            e.contains("subscription[0].sas_key_file") && e.contains("missing"),
            "{e}"
        );
        let e = error_of("sas_key_name = \"s\"\nsas_key_file = \"k\"\ntenant_id = \"t\"\n");
        assert!(
            e.contains("line 6") && e.contains("subscription[0].tenant_id") && e.contains("one way"),
            "{e}"
        );
        let e = error_of("tenant_id = \"t\"\nclient_id = \"c\"\n");
        assert!(e.contains("subscription[0].client_secret_file"), "{e}");
        let e = error_of("sas_key_name = \"bad name&x\"\nsas_key_file = \"k\"\n");
        assert!(
            e.contains("line 4") && e.contains("subscription[0].sas_key_name"),
            "{e}"
        );
        let e = error_of("sas_key_name = \"s\"\nsas_key_file = \"k\"\ncompression = \"gzip\"\n");
        assert!(
            e.contains("line 6") && e.contains("subscription[0].compression") && e.contains("content-encoding"),
            "{e}"
        );
        let e = error_of("sas_key_name = \"s\"\nsas_key_file = \"k\"\nformat = \"cloudevents\"\n");
        assert!(
            e.contains("subscription[0].format") && e.contains("webhook envelope"),
            "{e}"
        );
        let e = error_of("sas_key_name = \"s\"\nsas_key_file = \"k\"\nendpoint = \"http://sb.example.com\"\n");
        assert!(
            e.contains("line 6") && e.contains("subscription[0].endpoint") && e.contains("plain http"),
            "{e}"
        );
        let e = error_of("sas_key_name = \"s\"\nsas_key_file = \"k\"\nauthority = \"https://login.example\"\n");
        assert!(e.contains("subscription[0].authority") && e.contains("Entra ID"), "{e}");
        let e = error_of("sas_key_name = \"s\"\nsas_key_file = \"k\"\nsubject = \"x\"\n");
        assert!(
            e.contains("subscription[0].subject") && e.contains("only for nats://"),
            "{e}"
        );
    }

    #[test]
    fn the_namespace_and_the_queue_or_topic_are_checked() {
        for (url, why) in [
            ("servicebus://retail.servicebus.windows.net", "no queue or topic"),
            ("servicebus://retail.servicebus.windows.net/", "no queue or topic"),
            ("servicebus://retail.servicebus.windows.net/a/b", "no '/'"),
            (
                "servicebus://retail.servicebus.windows.net/pos%20events",
                "queue or topic",
            ),
            ("servicebus://retail.servicebus.windows.net/-pos", "starting and ending"),
            ("servicebus://rtl.servicebus.windows.net/pos", "6 to 50"),
            (
                "servicebus://9retail.servicebus.windows.net/pos",
                "starting with a letter",
            ),
            ("servicebus://retail/pos", "not a namespace's host"),
            (
                "servicebus://retail.servicebus.windows.net:443/pos",
                "no user, password or port",
            ),
            ("servicebus://retail.servicebus.windows.net/pos?x=1", "no ?query"),
        ] {
            let e = url_error(url);
            assert!(
                e.contains("subscription[0].url") && e.contains(why),
                "{url}: want {why}: {e}"
            );
        }
        let long = format!("servicebus://retail.servicebus.windows.net/{}", "q".repeat(261));
        assert!(url_error(&long).contains("1 to 260"));
    }
}
