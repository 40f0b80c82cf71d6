//! The seam between a subscription's shared keys and the keys of its kind of
//! destination. Each kind (a folder of `deliver::destinations`) describes
//! itself with a [`DestinationKind`]: the URL schemes that pick it, its own
//! keys, the shared keys it does not take, and a parser. This module hands
//! a subscription's own keys, with their places in the file ([`OwnKeys`]),
//! to the kind its URL names, and keeps what the kind made of them
//! ([`super::KindConfig`]) in the [`super::SubscriptionConfig`], opaque to
//! everything but that kind.
//!
//! The kinds are passed in ([`super::parse_with`]), not named here: the
//! config layer knows no destination.

use std::path::PathBuf;

use serde_spanned::Spanned;

use super::model::{ConfigError, KindConfig};
use super::source::{Source, Table};

/// Keys as written, each with its value, and where both are in the file.
pub(super) type WrittenKeys = Vec<(Spanned<String>, Spanned<toml::Value>)>;

/// A kind of destination as the config file sees it.
pub struct DestinationKind {
    /// Its name in messages and `status` ("webhook", "NATS JetStream").
    pub name: &'static str,
    /// The URL schemes, lower case, that pick it (`url`'s first
    /// comma-separated part).
    pub schemes: &'static [&'static str],
    /// Its own keys, beside the shared ones every subscription has.
    pub keys: &'static [&'static str],
    /// Shared keys this kind does not take, each with the message that
    /// says why (`batch`: "a NATS subscription publishes one event per
    /// message").
    pub refuses: &'static [(&'static str, &'static str)],
    /// Whether a subscription of this kind needs `secret` (a webhook is
    /// always signed; a bus message only when asked to).
    pub secret_required: bool,
    /// The most a batch may hold for this kind (its API's limits per
    /// request); `None`: the shared bounds only.
    pub batch_limits: Option<BatchLimits>,
    /// Reads `url` and the kind's own keys.
    pub parse: fn(&OwnKeys<'_>) -> Result<KindParsed, ConfigError>,
}

/// A kind's bounds on `batch.max_events` and `batch.max_bytes`.
pub struct BatchLimits {
    /// Messages in one request at most.
    pub max_events: usize,
    /// Bytes of one request's messages at most.
    pub max_bytes: u64,
}

impl DestinationKind {
    /// The schemes as people write them: `http:// or https://`.
    pub fn schemes_text(&self) -> String {
        let all: Vec<String> = self.schemes.iter().map(|s| format!("{s}://")).collect();
        match all.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

/// What a kind's parser made of `url` and its keys.
pub struct KindParsed {
    /// The URL the rest of the agent uses (a webhook's endpoint, the first
    /// NATS server).
    pub url: url::Url,
    /// The kind's own settings.
    pub settings: KindConfig,
}

/// One subscription's `url` and its kind's own keys, with where they are in
/// the file, for the kind's parser. Its errors name file, line and key like
/// every other config error.
pub struct OwnKeys<'a> {
    pub(super) src: &'a Source<'a>,
    pub(super) table: &'a Table,
    pub(super) url: &'a Spanned<String>,
    pub(super) values: WrittenKeys,
}

impl OwnKeys<'_> {
    /// `url` as written.
    pub fn url(&self) -> &str {
        self.url.get_ref()
    }

    /// `url` parsed as one URL (the kind's scheme is already checked).
    pub fn parsed_url(&self) -> Result<url::Url, ConfigError> {
        url::Url::parse(self.url()).map_err(|e| self.url_error(format!("{:?}: {e}", self.url())))
    }

    /// An error about `url`.
    pub fn url_error(&self, msg: impl Into<String>) -> ConfigError {
        self.src.at(self.url.span(), &self.table.key("url"), msg.into())
    }

    /// The full name of `key` in messages (`subscription[0].subject`).
    pub fn key_name(&self, key: &str) -> String {
        self.table.key(key)
    }

    fn value(&self, key: &str) -> Option<&Spanned<toml::Value>> {
        self.values.iter().find(|(k, _)| k.get_ref() == key).map(|(_, v)| v)
    }

    /// Whether `key` is written.
    pub fn has(&self, key: &str) -> bool {
        self.value(key).is_some()
    }

    /// An error about `key`, at its value (at the table when it is absent).
    pub fn error(&self, key: &str, msg: impl Into<String>) -> ConfigError {
        let span = self.value(key).map_or_else(|| self.table.span.clone(), Spanned::span);
        self.src.at(span, &self.table.key(key), msg.into())
    }

    /// A key the kind needs and the table lacks: named with the line of
    /// the table.
    pub fn missing(&self, key: &str, msg: impl Into<String>) -> ConfigError {
        self.src.at(
            self.table.span.clone(),
            &self.table.key(key),
            format!("missing: {}", msg.into()),
        )
    }

    /// `key` as a string, if written; another type is an error naming it.
    pub fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.value(key).map(Spanned::get_ref) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.error(key, format!("must be a string, not {}", other.type_str()))),
        }
    }

    /// `key` as a path, relative ones against the config file's directory.
    pub fn path(&self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self.string(key)?.map(|p| self.src.resolve(PathBuf::from(p))))
    }

    /// At most one of `keys` is written (ways to authenticate, say): the
    /// second one is the error.
    pub fn at_most_one(&self, keys: &[&str], what: &str) -> Result<(), ConfigError> {
        let mut given = keys.iter().filter(|k| self.has(k));
        given.next();
        match given.next() {
            Some(second) => Err(self.error(second, format!("give one of {what}"))),
            None => Ok(()),
        }
    }
}

/// Which kind `url` (its first comma-separated part) names; the error lists
/// the schemes there are.
pub(super) fn kind_of<'k>(
    src: &Source,
    table: &Table,
    url: &Spanned<String>,
    kinds: &[&'k DestinationKind],
) -> Result<&'k DestinationKind, ConfigError> {
    let first = url.get_ref().split(',').next().unwrap_or_default().trim();
    let scheme = first.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if let Some(kind) = kinds
        .iter()
        .find(|k| scheme.as_deref().is_some_and(|s| k.schemes.contains(&s)))
    {
        return Ok(kind);
    }
    let known: Vec<String> = kinds
        .iter()
        .map(|k| format!("{} for {}", k.schemes_text(), k.name))
        .collect();
    Err(src.at(
        url.span(),
        &table.key("url"),
        format!("{first:?}: give {}", known.join("; ")),
    ))
}

/// Splits a subscription's keys: those every subscription has stay (the
/// shared struct read them), the kind's own go to its parser; a key of
/// neither, or a shared one the kind refuses, is an error naming it.
pub(super) fn own_keys(
    src: &Source,
    table: &Table,
    kind: &DestinationKind,
    kinds: &[&DestinationKind],
    shared: &[&str],
    all: WrittenKeys,
) -> Result<WrittenKeys, ConfigError> {
    let mut own = Vec::new();
    for (key, value) in all {
        let name = key.get_ref().as_str();
        if let Some((_, why)) = kind.refuses.iter().find(|(k, _)| *k == name) {
            return Err(src.at(key.span(), &table.key(name), (*why).to_string()));
        }
        if kind.keys.contains(&name) {
            own.push((key, value));
            continue;
        }
        if shared.contains(&name) {
            continue;
        }
        let owners: Vec<String> = kinds
            .iter()
            .filter(|k| k.keys.contains(&name))
            .map(|k| k.schemes_text())
            .collect();
        let msg = if owners.is_empty() {
            let mut takes: Vec<&str> = shared
                .iter()
                .chain(kind.keys)
                .copied()
                .filter(|k| !kind.refuses.iter().any(|(refused, _)| refused == k))
                .collect();
            takes.sort_unstable();
            format!("unknown key; a {} subscription takes {}", kind.name, takes.join(", "))
        } else {
            format!(
                "only for {} urls; a {} subscription does not take it",
                owners.join(" and "),
                kind.name
            )
        };
        return Err(src.at(key.span(), &table.key(name), msg));
    }
    Ok(own)
}

/// The field names a `Deserialize` struct reads, as serde's derive lists
/// them: the shared subscription keys, from the struct itself, so the list
/// cannot drift from it.
pub(super) fn struct_fields<'de, T: serde::Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("fields read")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Fields {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields = Fields(None);
    let _ = T::deserialize(&mut fields);
    fields.0.unwrap_or(&[])
}
