//! Validation of `[[subscription]]`: name, URL, secrets, filter, retry,
//! batches, headers, limits, each error naming its line and key; the keys
//! of its kind of destination are that kind's (`super::destination`).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde_spanned::Spanned;

use super::destination::*;
use super::file::*;
use super::model::*;
use super::source::*;

pub(super) fn subscription_sections(
    src: &Source,
    file: Vec<Spanned<FileSubscription>>,
    keys: SubscriptionKeys,
    kinds: &[&DestinationKind],
) -> Result<Vec<SubscriptionConfig>, ConfigError> {
    let mut subscriptions: Vec<SubscriptionConfig> = Vec::new();
    let mut keys = keys.subscription.into_iter();
    for (index, sub) in file.into_iter().enumerate() {
        let table = Table {
            name: format!("subscription[{index}]"),
            span: sub.span(),
        };
        let all_keys = keys.next().unwrap_or_default().into_iter().collect();
        let parsed = subscription_section(src, &table, sub.into_inner(), all_keys, kinds, &subscriptions)?;
        subscriptions.push(parsed);
    }
    Ok(subscriptions)
}

/// One `[[subscription]]`, `all_keys` being every key written in it;
/// `earlier` are the ones before it (names must be unique).
pub(super) fn subscription_section(
    src: &Source,
    table: &Table,
    sub: FileSubscription,
    all_keys: WrittenKeys,
    kinds: &[&DestinationKind],
    earlier: &[SubscriptionConfig],
) -> Result<SubscriptionConfig, ConfigError> {
    let key = |k: &str| table.key(k);
    let name = subscription_name(src, &key("name"), &sub.name, earlier)?;
    let kind = kind_of(src, table, &sub.url, kinds)?;
    let values = own_keys(src, table, kind, kinds, struct_fields::<FileSubscription>(), all_keys)?;
    let parsed = (kind.parse)(&OwnKeys {
        src,
        table,
        url: &sub.url,
        values,
    })?;
    // A bus message is signed only if asked to: `secret` is optional there.
    let secrets = if !kind.secret_required && sub.secret.is_none() && sub.secret_file.is_none() {
        Vec::new()
    } else {
        subscription_secrets(src, table, &sub)?
    };
    let heartbeats = names_heartbeats(&sub.events);
    let (batch, compression, format) = delivery_shape(src, table, &sub)?;
    if let (Some(batch), Some(limits)) = (&batch, &kind.batch_limits) {
        check_batch_limits(src, table, &sub, kind.name, batch, limits)?;
    }
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
        url: parsed.url,
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
        kind: parsed.settings,
        batch,
        compression,
        format,
        adaptive_concurrency,
    })
}

/// `batch`, `compression` and `format` (a kind that takes none of them
/// refuses them before: `DestinationKind::refuses`).
pub(super) fn delivery_shape(
    src: &Source,
    table: &Table,
    sub: &FileSubscription,
) -> Result<(Option<BatchConfig>, Compression, Format), ConfigError> {
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
pub(super) fn batch_settings(src: &Source, table: &Table, file: &FileBatch) -> Result<BatchConfig, ConfigError> {
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

/// `batch` within what one request of the kind takes.
fn check_batch_limits(
    src: &Source,
    table: &Table,
    sub: &FileSubscription,
    kind: &str,
    batch: &BatchConfig,
    limits: &BatchLimits,
) -> Result<(), ConfigError> {
    let file = sub.batch.as_ref().map(|b| b.get_ref());
    if batch.max_events > limits.max_events {
        let span = file.and_then(|f| span_of(&f.max_events));
        return Err(src.at_or_key(
            span,
            &table.key("batch.max_events"),
            format!(
                "{} is more than one {kind} request takes ({})",
                batch.max_events, limits.max_events
            ),
        ));
    }
    if batch.max_bytes > limits.max_bytes {
        let span = file.and_then(|f| span_of(&f.max_bytes));
        return Err(src.at_or_key(
            span,
            &table.key("batch.max_bytes"),
            format!(
                "{} bytes is more than one {kind} request takes ({} bytes)",
                batch.max_bytes, limits.max_bytes
            ),
        ));
    }
    Ok(())
}

/// `retry`: backoff from `initial` (1s) to `max` (5m), parked after
/// `give_up_after` (never).
pub(super) fn retry_policy(src: &Source, table: &Table, file: &FileRetry) -> Result<RetryConfig, ConfigError> {
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
pub(super) fn request_headers(
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

/// `max_in_flight`: 1 to 1024.
pub(super) fn in_flight_limit(src: &Source, key: &str, value: &Spanned<i64>) -> Result<usize, ConfigError> {
    let n = *value.get_ref();
    if !(1..=1024).contains(&n) {
        return Err(src.at(value.span(), key, format!("{n} is not between 1 and 1024")));
    }
    Ok(n as usize)
}

/// `max_rate`: requests per second, more than 0 and at most 100,000 (one
/// request in 10 µs: beyond what any endpoint takes from one store, and the
/// bucket's arithmetic stays exact).
pub(super) fn rate_limit(src: &Source, key: &str, value: &Spanned<f64>) -> Result<f64, ConfigError> {
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
pub(super) fn check_client_identity(
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
pub(super) fn subscription_name(
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
pub(super) fn subscription_secrets(
    src: &Source,
    table: &Table,
    sub: &FileSubscription,
) -> Result<Vec<Vec<u8>>, ConfigError> {
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
pub(super) fn names_heartbeats(events: &Option<serde_spanned::Spanned<OneOrMany>>) -> bool {
    events.as_ref().is_some_and(|list| {
        list.get_ref()
            .as_slice()
            .iter()
            .any(|t| t == crate::event::HEARTBEAT_TYPE)
    })
}

/// `events`: absent or `"*"` means every type.
pub(super) fn event_filter(
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
