//! Validation of `[agent]`, `[ingest]`, `[storage]` and `[admin]`: each
//! file section to its settings, or an error naming its line and key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_spanned::Spanned;

use crate::timefmt::parse_duration;

use super::file::*;
use super::model::*;
use super::source::*;

pub(super) fn agent_section(src: &Source, file: FileAgent) -> Result<AgentConfig, ConfigError> {
    Ok(AgentConfig {
        store_id: file.store_id.unwrap_or_else(|| "unset".to_string()),
        agent_id: file.agent_id.unwrap_or_else(default_agent_id),
        data_dir: src.resolve(file.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))),
        heartbeat: heartbeat_period(src, file.heartbeat)?,
    })
}

/// `agent.heartbeat`: a duration of at least a second, or "off".
pub(super) fn heartbeat_period(src: &Source, value: Option<Spanned<String>>) -> Result<Option<Duration>, ConfigError> {
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
pub(super) fn listen_addr(
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

pub(super) fn ingest_section(src: &Source, file: FileIngest, data_dir: &Path) -> Result<IngestConfig, ConfigError> {
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

pub(super) fn storage_section(src: &Source, file: FileStorage) -> Result<StorageConfig, ConfigError> {
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

pub(super) fn admin_section(src: &Source, file: FileAdmin) -> Result<AdminConfig, ConfigError> {
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

pub(super) fn default_agent_id() -> String {
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
