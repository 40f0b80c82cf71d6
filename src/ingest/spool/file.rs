//! Reading and parsing one spool file: opened without following a link or
//! waiting on a FIFO, checked on the open descriptor, at most
//! [`MAX_FILE_BYTES`]; then JSON, NDJSON or POSLog XML to events, the
//! first bad one named by line, element or index. Whole or not at all.

use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::{FileError, MAX_FILE_BYTES};
use crate::event::{parse_event_with, ErrorCode, NewEvent};
use crate::ingest::poslog::Stopped;

/// Why an entry of `incoming/` is not a file the spool takes; `None` for a
/// regular file. Only the entry itself is looked at: a link's target is
/// never opened or read.
pub(super) fn not_a_file(path: &Path, kind: std::fs::FileType) -> Option<String> {
    let what = if kind.is_file() {
        return None;
    } else if kind.is_symlink() {
        let target = std::fs::read_link(path)
            .map(|t| format!(" (to {})", t.display()))
            .unwrap_or_default();
        return Some(format!(
            "a symbolic link{target}, not a regular file: links are never followed, the link itself was moved here and its target left alone; rename the file itself into incoming/"
        ));
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    };
    Some(format!(
        "{what}, not a regular file: it was not opened; producers rename a finished regular file into incoming/"
    ))
}

/// Parses a spool file into events (all or an error).
pub fn parse_file(name: &str, bytes: &[u8], max_event_bytes: u64) -> Result<Vec<NewEvent>, Box<FileError>> {
    parse_file_unless(name, bytes, max_event_bytes, &|| false).unwrap_or_else(|Stopped| {
        // Never reached: nothing asks this parse to stop.
        Err(FileError::whole(name, ErrorCode::Internal, "parse stopped").into())
    })
}

/// How often (in lines or array items) a parse asks whether to give up.
pub(super) const STOP_CHECK_EVERY: usize = 1024;

/// Why parsing a spool file ended without events.
pub(super) enum Halt {
    /// The file is refused.
    Refused(Box<FileError>),
    /// The caller asked to stop.
    Stopped,
}

impl From<FileError> for Halt {
    fn from(e: FileError) -> Self {
        Halt::Refused(Box::new(e))
    }
}

/// Like [`parse_file`], asking `stop` now and then whether to give up (the
/// agent is stopping): `Err(Stopped)` once it says yes.
pub fn parse_file_unless(
    name: &str,
    bytes: &[u8],
    max_event_bytes: u64,
    stop: &dyn Fn() -> bool,
) -> Result<Result<Vec<NewEvent>, Box<FileError>>, Stopped> {
    match events_of(name, bytes, max_event_bytes, stop) {
        Ok(events) => Ok(Ok(events)),
        Err(Halt::Refused(e)) => Ok(Err(e)),
        Err(Halt::Stopped) => Err(Stopped),
    }
}

/// The events of a spool file, all or none.
pub(super) fn events_of(
    name: &str,
    bytes: &[u8],
    max_event_bytes: u64,
    stop: &dyn Fn() -> bool,
) -> Result<Vec<NewEvent>, Halt> {
    // Asked before the i-th line or array item, every so many.
    let go_on = |i: usize| {
        if i % STOP_CHECK_EVERY == STOP_CHECK_EVERY - 1 && stop() {
            Err(Halt::Stopped)
        } else {
            Ok(())
        }
    };
    // A stable identity for events without `event_id`: name + content.
    let digest = {
        let mut h = Sha256::new();
        h.update(name.as_bytes());
        h.update([0]);
        h.update(bytes);
        let d = h.finalize();
        d[..10].iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let id_for = |n: usize| format!("spool:{digest}:{n}");
    let text = std::str::from_utf8(bytes)
        .map_err(|e| FileError::whole(name, ErrorCode::InvalidJson, format!("not UTF-8: {e}")))?;
    let events = if name.ends_with(".ndjson") {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            go_on(i)?;
            if line.trim().is_empty() {
                continue;
            }
            let ev = parse_event_with(line.as_bytes(), max_event_bytes, || id_for(i + 1)).map_err(|e| FileError {
                line: Some(i + 1),
                ..FileError::of_event(name, e)
            })?;
            out.push(ev);
        }
        out
    } else if name.ends_with(".json") {
        let first = text.trim_start().chars().next();
        if first == Some('[') {
            let items: Vec<&RawValue> = serde_json::from_str(text)
                .map_err(|e| FileError::whole(name, ErrorCode::InvalidJson, e.to_string()))?;
            let mut out = Vec::new();
            for (i, raw) in items.iter().enumerate() {
                go_on(i)?;
                let ev =
                    parse_event_with(raw.get().as_bytes(), max_event_bytes, || id_for(i)).map_err(|e| FileError {
                        index: Some(i),
                        ..FileError::of_event(name, e)
                    })?;
                out.push(ev);
            }
            out
        } else {
            vec![parse_event_with(bytes, max_event_bytes, || id_for(0)).map_err(|e| FileError::of_event(name, e))?]
        }
    } else if name.ends_with(".xml") {
        crate::ingest::poslog::parse_unless(text, stop)
            .map_err(|Stopped| Halt::Stopped)?
            .map_err(|e| FileError {
                line: Some(e.line),
                element: Some(e.element.clone()),
                ..FileError::whole(name, ErrorCode::InvalidEvent, e.message)
            })?
    } else {
        return Err(FileError::whole(
            name,
            ErrorCode::InvalidEvent,
            "unknown file type: name it *.json, *.ndjson or *.xml",
        )
        .into());
    };
    if events.is_empty() {
        return Err(FileError::whole(name, ErrorCode::InvalidEvent, "the file holds no event").into());
    }
    Ok(events)
}

/// What reading one file gave.
pub(super) enum Read {
    /// Its events, all valid.
    Events(Vec<NewEvent>),
    /// Its content is refused (counted as a rejection).
    Invalid(Box<FileError>),
    /// It is refused unread: too large, or not a regular file after all.
    Refused(FileError),
    /// It is gone.
    Gone,
    /// It cannot be read now (permissions, I/O).
    Unreadable(std::io::Error),
    /// The agent is stopping.
    Stopped,
}

/// Reads and parses `path` (blocking). Opened without following a link and
/// without waiting for a writer, then checked on the open descriptor: an entry
/// swapped for a link or a FIFO after the scan looked at it is refused, never
/// read or waited on.
pub(super) fn read_file(path: &Path, name: &str, max_event_bytes: u64, stop: &dyn Fn() -> bool) -> Read {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let unless_not_a_file = |e: std::io::Error| match std::fs::symlink_metadata(path) {
        Err(gone) if gone.kind() == std::io::ErrorKind::NotFound => Read::Gone,
        Ok(m) => match not_a_file(path, m.file_type()) {
            Some(why) => Read::Refused(FileError::whole(name, ErrorCode::InvalidEvent, why)),
            None => Read::Unreadable(e),
        },
        Err(_) => Read::Unreadable(e),
    };
    let file = match opened {
        Ok(f) => f,
        // Retrying would not help (and would hold every later file): only a
        // person can give the agent's user read access.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let why = format!(
                "cannot read it: {e}; the agent runs as a user that may not read this file: give that user read access (chmod or chown) and move it into incoming/ again"
            );
            return Read::Refused(FileError::whole(name, ErrorCode::Internal, why));
        }
        Err(e) => return unless_not_a_file(e),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return Read::Unreadable(e),
    };
    if let Some(why) = not_a_file(path, meta.file_type()) {
        return Read::Refused(FileError::whole(name, ErrorCode::InvalidEvent, why));
    }
    let too_large = |size: u64| {
        let msg = format!("{size} bytes, the limit is {MAX_FILE_BYTES}: split it");
        Read::Refused(FileError::whole(name, ErrorCode::TooLarge, msg))
    };
    if meta.len() > MAX_FILE_BYTES {
        return too_large(meta.len());
    }
    // No more than the limit, even if the file grows meanwhile.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    if let Err(e) = file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
        return Read::Unreadable(e);
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return too_large(bytes.len() as u64);
    }
    match parse_file_unless(name, &bytes, max_event_bytes, stop) {
        Ok(Ok(events)) => Read::Events(events),
        Ok(Err(err)) => Read::Invalid(err),
        Err(Stopped) => Read::Stopped,
    }
}

/// Bytes as lower-case hex.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
