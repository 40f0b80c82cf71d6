//! The keys of a NATS JetStream subscription (`nats://`, `tls://` URLs):
//! servers, subject template, credentials; and their refusal on an HTTP one.

use serde_spanned::Spanned;

use super::file::*;
use super::model::*;
use super::source::*;

/// Whether `url` names NATS servers (`nats://` or `tls://`) rather than a
/// webhook endpoint.
pub(super) fn is_nats_url(url: &str) -> bool {
    let first = url.split(',').next().unwrap_or_default().trim().to_ascii_lowercase();
    first.starts_with("nats://") || first.starts_with("tls://")
}

/// `url` of a NATS subscription: one or more comma-separated `nats://` or
/// `tls://` servers. Returns the first, parsed, and all of them as written.
pub(super) fn nats_servers(
    src: &Source,
    key: &str,
    url: &Spanned<String>,
) -> Result<(url::Url, Vec<String>), ConfigError> {
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
pub(super) fn nats_settings(
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

/// `subject`, `credentials_file`, `token`, `user` and `password` belong to
/// NATS subscriptions only.
pub(super) fn refuse_nats_keys(src: &Source, table: &Table, sub: &FileSubscription) -> Result<(), ConfigError> {
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
