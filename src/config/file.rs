//! The file format: the TOML tables as written (serde, unknown keys
//! refused), with spans kept for messages, and the value forms people write
//! (sizes, durations, "never", one or many).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_spanned::Spanned;

use crate::timefmt::{check_size, parse_duration, parse_size};

// ---- the file format -------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    pub(super) agent: FileAgent,
    #[serde(default)]
    pub(super) ingest: FileIngest,
    #[serde(default)]
    pub(super) storage: FileStorage,
    #[serde(default)]
    pub(super) admin: FileAdmin,
    #[serde(default)]
    pub(super) subscription: Vec<Spanned<FileSubscription>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAgent {
    pub(super) store_id: Option<String>,
    pub(super) agent_id: Option<String>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) heartbeat: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileIngest {
    pub(super) socket: Option<PathBuf>,
    pub(super) http_listen: Option<serde_spanned::Spanned<String>>,
    pub(super) http_allow_remote: Option<bool>,
    pub(super) spool_dir: Option<PathBuf>,
    pub(super) max_event_bytes: Option<Spanned<Size>>,
    pub(super) max_request_bytes: Option<Spanned<Size>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileStorage {
    pub(super) max_db_bytes: Option<Spanned<Size>>,
    pub(super) retain_delivered: Option<Dur>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAdmin {
    pub(super) listen: Option<serde_spanned::Spanned<String>>,
    pub(super) allow_remote: Option<bool>,
    pub(super) token_file: Option<PathBuf>,
}

/// The keys every `[[subscription]]` may have. Not `deny_unknown_fields`:
/// the others are its kind's own ([`SubscriptionKeys`] has them all, and
/// `super::destination::own_keys` refuses what no one takes).
#[derive(Deserialize)]
pub(super) struct FileSubscription {
    pub(super) name: serde_spanned::Spanned<String>,
    pub(super) url: serde_spanned::Spanned<String>,
    pub(super) secret: Option<serde_spanned::Spanned<OneOrMany>>,
    pub(super) secret_file: Option<serde_spanned::Spanned<PathBuf>>,
    pub(super) events: Option<serde_spanned::Spanned<OneOrMany>>,
    pub(super) payload: Option<PayloadSetting>,
    pub(super) timeout: Option<Spanned<Dur>>,
    pub(super) max_in_flight: Option<serde_spanned::Spanned<i64>>,
    pub(super) max_rate: Option<Spanned<f64>>,
    #[serde(default)]
    pub(super) retry: FileRetry,
    #[serde(default)]
    pub(super) headers: BTreeMap<Spanned<String>, Spanned<String>>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) client_cert: Option<Spanned<PathBuf>>,
    pub(super) client_key: Option<Spanned<PathBuf>>,
    pub(super) batch: Option<Spanned<FileBatch>>,
    pub(super) compression: Option<Spanned<String>>,
    pub(super) format: Option<Spanned<String>>,
    pub(super) concurrency: Option<Spanned<String>>,
}

/// Every key of every `[[subscription]]`, with its place: the file read a
/// second time for the keys [`FileSubscription`] does not know.
#[derive(Deserialize, Default)]
pub(super) struct SubscriptionKeys {
    #[serde(default)]
    pub(super) subscription: Vec<BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileBatch {
    pub(super) max_events: Option<Spanned<i64>>,
    pub(super) max_bytes: Option<Spanned<Size>>,
    pub(super) linger: Option<Spanned<Dur>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRetry {
    pub(super) initial: Option<Spanned<Dur>>,
    pub(super) max: Option<Spanned<Dur>>,
    pub(super) give_up_after: Option<GiveUp>,
}

/// A size as written in the file: `"512KiB"` or a number of bytes.
#[derive(Clone, Copy)]
pub(super) struct Size(pub(super) u64);

/// A duration as written in the file: `"30s"`.
#[derive(Clone, Copy)]
pub(super) struct Dur(pub(super) Duration);

/// `give_up_after`: a duration or `"never"` (`None`).
#[derive(Clone, Copy)]
pub(super) struct GiveUp(pub(super) Option<Duration>);

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum PayloadSetting {
    Full,
    Thin,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }

    pub(super) fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum SizeValue {
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
