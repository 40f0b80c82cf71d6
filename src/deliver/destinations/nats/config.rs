//! The keys of a NATS JetStream subscription (`nats://`, `tls://` URLs):
//! the servers of `url`, the `subject` template, at most one way to
//! authenticate; and what the config keeps of them ([`NatsSettings`]).

use crate::config::{ConfigError, DestinationKind, KindConfig, KindParsed, KindSettings, OwnKeys};

/// The NATS kind as the config file sees it.
pub static CONFIG: DestinationKind = DestinationKind {
    name: "NATS JetStream",
    schemes: &["nats", "tls"],
    keys: &["subject", "credentials_file", "token", "user", "password"],
    refuses: &[
        ("batch", ONE_PER_MESSAGE),
        ("compression", ONE_PER_MESSAGE),
        ("format", ONE_PER_MESSAGE),
    ],
    secret_required: false,
    batch_limits: None,
    parse,
};

const ONE_PER_MESSAGE: &str = "only for http(s) urls; a NATS subscription publishes one event per message";

/// The placeholders a NATS `subject` may hold.
pub const SUBJECT_PLACEHOLDERS: [&str; 4] = ["{store_id}", "{agent_id}", "{type}", "{entity}"];

/// The NATS side of a subscription whose `url` is `nats://` or `tls://`.
#[derive(Clone, PartialEq)]
pub struct NatsSettings {
    /// The servers of `url`, as written (comma-separated in the file).
    pub servers: Vec<String>,
    /// `subject`: the subject template, with `{store_id}`, `{agent_id}`,
    /// `{type}` and `{entity}` placeholders.
    pub subject: String,
    /// `credentials_file`: a NATS `.creds` file (JWT and NKey seed).
    pub credentials_file: Option<std::path::PathBuf>,
    /// `token`: a token for token authentication.
    pub token: Option<String>,
    /// `user` and `password`, which go together.
    pub user_password: Option<(String, String)>,
}

impl std::fmt::Debug for NatsSettings {
    /// Like the derived one, without the token and password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettings")
            .field("servers", &self.servers)
            .field("subject", &self.subject)
            .field("credentials_file", &self.credentials_file)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("user", &self.user_password.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl KindSettings for NatsSettings {
    /// Every server, without credentials, comma-separated.
    fn url_for_logs(&self) -> Option<String> {
        Some(
            self.servers
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
                .join(","),
        )
    }
}

/// `url` (one or more servers), `subject` (required) and at most one way
/// to authenticate (`credentials_file`, `token`, or `user` + `password`).
fn parse(keys: &OwnKeys<'_>) -> Result<KindParsed, ConfigError> {
    let (first, servers) = servers(keys)?;
    let Some(subject) = keys.string("subject")? else {
        return Err(keys.missing(
            "subject",
            "a nats:// or tls:// url needs a subject, e.g. subject = \"pos.{store_id}.{type}\"",
        ));
    };
    check_subject_template(&subject).map_err(|e| keys.error("subject", e))?;
    let user_password = match (keys.string("user")?, keys.string("password")?) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        (user, _) => {
            let which = if user.is_some() { "user" } else { "password" };
            return Err(keys.error(which, "user and password go together"));
        }
    };
    keys.at_most_one(
        &["credentials_file", "token", "user"],
        "credentials_file, token or user + password",
    )?;
    Ok(KindParsed {
        url: first,
        settings: KindConfig::with(
            CONFIG.name,
            NatsSettings {
                servers,
                subject,
                credentials_file: keys.path("credentials_file")?,
                token: keys.string("token")?,
                user_password,
            },
        ),
    })
}

/// `url` of a NATS subscription: one or more comma-separated `nats://` or
/// `tls://` servers. Returns the first, parsed, and all of them as written.
fn servers(keys: &OwnKeys<'_>) -> Result<(url::Url, Vec<String>), ConfigError> {
    let mut servers = Vec::new();
    let mut first = None;
    for part in keys.url().split(',').map(str::trim) {
        let parsed = url::Url::parse(part).map_err(|e| keys.url_error(format!("{part:?}: {e}")))?;
        if !matches!(parsed.scheme(), "nats" | "tls") || parsed.host_str().is_none_or(str::is_empty) {
            return Err(keys.url_error(format!(
                "{part:?}: every server must be nats://host:port or tls://host:port"
            )));
        }
        first.get_or_insert(parsed);
        servers.push(part.to_string());
    }
    match first {
        Some(first) => Ok((first, servers)),
        None => Err(keys.url_error("no server given")),
    }
}
/// A subject template is valid if, with every placeholder filled in, it is a
/// subject one can publish to: dot-separated tokens, none empty, no
/// whitespace, no wildcard (`*`, `>`). Placeholder values are encoded to one
/// token each when an event is sent (`deliver::destinations::nats::subject_token`).
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
