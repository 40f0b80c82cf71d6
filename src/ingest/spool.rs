//! Spool directory ingest: producers write a file under a name starting with
//! `.` or ending in `.tmp`, then rename it into `<spool_dir>/incoming/`.
//!
//! Watched with `notify`, scanned at start (name order) and rescanned
//! periodically, so a lost or overflowed inotify event never leaves a file
//! behind. A file is taken whole or not at all, in one transaction, and
//! deleted only after the commit. Events without an `event_id` get one derived
//! from the file's name and content, so a file read again after a crash
//! between commit and delete is recognised as duplicates, not stored twice.
//! A failing file moves to `failed/` with `<name>.error.json` beside it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::event::{parse_event_with, ErrorCode, IngestError, NewEvent, Reply};
use crate::outbox::writer::Writer;
use crate::shutdown::Shutdown;

/// Rescan period, the safety net under inotify.
const RESCAN_EVERY: Duration = Duration::from_secs(5);
/// Largest spool file taken.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Why a file was refused; written as `<name>.error.json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileError {
    /// The file's name.
    pub file: String,
    /// Line (NDJSON, XML), 1-based.
    pub line: Option<usize>,
    /// Position in a JSON array, 0-based.
    pub index: Option<usize>,
    /// Event field at fault.
    pub field: Option<String>,
    /// XML element at fault.
    pub element: Option<String>,
    /// Error code (as on the socket).
    pub code: ErrorCode,
    /// What is wrong.
    pub message: String,
}

impl FileError {
    fn whole(file: &str, code: ErrorCode, message: impl Into<String>) -> Self {
        FileError {
            file: file.into(),
            line: None,
            index: None,
            field: None,
            element: None,
            code,
            message: message.into(),
        }
    }

    /// The error of one event of the file, with the field it names.
    fn of_event(file: &str, e: IngestError) -> Self {
        FileError {
            field: e.field,
            ..FileError::whole(file, e.code, e.message)
        }
    }
}

/// The spool's directories.
#[derive(Debug, Clone)]
pub struct SpoolDirs {
    /// Where producers rename files into.
    pub incoming: PathBuf,
    /// Where refused files go.
    pub failed: PathBuf,
}

impl SpoolDirs {
    /// The directories under `spool_dir`.
    pub fn new(spool_dir: &Path) -> Self {
        SpoolDirs {
            incoming: spool_dir.join("incoming"),
            failed: spool_dir.join("failed"),
        }
    }

    /// Creates them.
    pub fn create(&self) -> Result<(), String> {
        for d in [&self.incoming, &self.failed] {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("{}: cannot create the spool directory: {e}", d.display()))?;
        }
        Ok(())
    }

    /// Files waiting in `incoming/` and refused files in `failed/`.
    pub fn counts(&self) -> (usize, usize) {
        let count = |dir: &Path, keep: &dyn Fn(&str) -> bool| {
            std::fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .filter(|e| keep(&e.file_name().to_string_lossy()))
                        .count()
                })
                .unwrap_or(0)
        };
        (
            count(&self.incoming, &|n| eligible(n)),
            count(&self.failed, &|n| !n.ends_with(".error.json")),
        )
    }
}

/// Whether a name in `incoming/` is a finished file (not one being written).
pub fn eligible(name: &str) -> bool {
    !name.starts_with('.') && !name.ends_with(".tmp")
}

/// Parses a spool file into events (all or an error).
pub fn parse_file(name: &str, bytes: &[u8], max_event_bytes: u64) -> Result<Vec<NewEvent>, Box<FileError>> {
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
        crate::ingest::poslog::parse(text).map_err(|e| FileError {
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

/// The spool watcher.
pub struct Spool {
    /// Its directories.
    pub dirs: SpoolDirs,
    /// Where events go.
    pub writer: Writer,
    /// Largest event.
    pub max_event_bytes: u64,
    /// Stop signal.
    pub shutdown: Shutdown,
}

/// What became of one file.
enum Taken {
    /// Stored (or already stored) and deleted.
    Done,
    /// Refused and moved to `failed/`.
    Failed,
    /// Storage cannot take it now; left in `incoming/` for a later scan.
    Later,
}

impl Spool {
    /// Watches and scans until shutdown.
    pub async fn run(self) {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let watcher = {
            use notify::Watcher;
            let watched = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                // Only a new name in the directory matters. Reacting to every
                // event would loop: our own scan opens the directory, which
                // inotify reports as an access event.
                let wanted = match res {
                    Ok(event) => matches!(
                        event.kind,
                        notify::EventKind::Create(_) | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                    ),
                    Err(_) => true, // overflow or error: scan to be safe
                };
                if wanted {
                    let _ = tx.try_send(());
                }
            })
            .and_then(|mut w| {
                w.watch(&self.dirs.incoming, notify::RecursiveMode::NonRecursive)
                    .map(|()| w)
            });
            match watched {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, dir = %self.dirs.incoming.display(), "cannot watch the spool; relying on the periodic rescan");
                    None
                }
            }
        };
        let mut rescan = tokio::time::interval(RESCAN_EVERY);
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = rx.recv() => {}
                _ = rescan.tick() => {}
                _ = shutdown.wait() => break,
            }
            self.scan().await;
        }
        drop(watcher);
    }

    /// Takes every eligible file, in name order.
    pub async fn scan(&self) {
        let mut names: Vec<String> = match std::fs::read_dir(&self.dirs.incoming) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| eligible(n))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.dirs.incoming.display(), "cannot read the spool");
                return;
            }
        };
        names.sort();
        for name in names {
            if self.shutdown.is_started() {
                return;
            }
            if let Taken::Later = self.take(&name).await {
                return;
            }
        }
    }

    async fn take(&self, name: &str) -> Taken {
        let path = self.dirs.incoming.join(name);
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(_) => return Taken::Done, // gone meanwhile
        };
        if size > MAX_FILE_BYTES {
            let msg = format!("{size} bytes, the limit is {MAX_FILE_BYTES}: split it");
            return self.fail(name, FileError::whole(name, ErrorCode::TooLarge, msg));
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read a spool file; will retry");
                return Taken::Later;
            }
        };
        let events = match parse_file(name, &bytes, self.max_event_bytes) {
            Ok(events) => events,
            Err(err) => {
                self.writer.count_rejected(err.code);
                return self.fail(name, *err);
            }
        };
        let n = events.len();
        let replies = self.writer.ingest(events).await;
        let refused = replies.iter().find_map(|r| match r {
            Reply::Rejected(e) => Some(e.clone()),
            Reply::Accepted { .. } => None,
        });
        match refused {
            None => {
                if let Err(e) = std::fs::remove_file(&path) {
                    // Stored; deleting again next scan only finds duplicates.
                    tracing::warn!(file = %path.display(), error = %e, "stored but cannot delete the spool file");
                }
                tracing::debug!(file = name, events = n, "spool file taken");
                Taken::Done
            }
            Some(e) => {
                tracing::warn!(file = name, code = e.code.as_str(), error = %e.message, "spool file left in incoming/, will retry");
                Taken::Later
            }
        }
    }

    /// Moves a refused file to `failed/` with its `.error.json`.
    fn fail(&self, name: &str, err: FileError) -> Taken {
        let mut target = self.dirs.failed.join(name);
        if target.exists() {
            target = self.dirs.failed.join(format!("{name}.{}", crate::outbox::now_ms()));
        }
        let target_name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let report = serde_json::json!({
            "file": err.file, "line": err.line, "index": err.index, "field": err.field, "element": err.element,
            "code": err.code, "message": err.message, "failed_at": crate::event::now_rfc3339(),
        });
        let report_path = self.dirs.failed.join(format!("{target_name}.error.json"));
        let tmp = self.dirs.failed.join(format!(".{target_name}.error.json.tmp"));
        let written = serde_json::to_vec_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|body| std::fs::write(&tmp, body))
            .and_then(|()| std::fs::rename(&tmp, &report_path));
        if let Err(e) = written.and_then(|()| std::fs::rename(self.dirs.incoming.join(name), &target)) {
            tracing::error!(file = name, error = %e, "cannot move a refused spool file to failed/");
            return Taken::Later;
        }
        tracing::warn!(file = name, line = ?err.line, index = ?err.index, element = ?err.element, error = %err.message,
            "spool file refused, moved to failed/");
        Taken::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_errors_name_the_line_and_field() {
        let text = "{\"type\":\"T\",\"entity\":\"e\",\"payload\":1}\n\n{\"type\":\"T\",\"payload\":1}\n";
        let e = parse_file("a.ndjson", text.as_bytes(), 1 << 20).unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(3), Some("entity")));
    }

    #[test]
    fn the_field_is_the_one_validation_names() {
        // Names a message cannot be split on safely.
        for key in ["a:b", "my field"] {
            let event = format!(r#"{{"type":"T","entity":"e","payload":1,"{key}":2}}"#);
            for (name, text) in [
                ("x.json", event.clone()),
                ("x.json", format!("[{event}]")),
                ("x.ndjson", event.clone()),
            ] {
                let e = parse_file(name, text.as_bytes(), 1 << 20).unwrap_err();
                assert_eq!(e.field.as_deref(), Some(key), "{name}: {text}");
                assert_eq!(e.message, format!("{key}: unknown field"));
            }
        }
        let e = parse_file(
            "x.json",
            br#"{"type":"T","entity":"e","payload":1,"is_test":"no"}"#,
            1 << 20,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("is_test"));
        // Errors of no one field name none.
        for text in [
            &b"{\"type\": "[..],
            br#"[1]"#,
            br#"{"type":"T","entity":"e","payload":"xxxxxxxxxxxxxxxxxxxxxxxx"}"#,
        ] {
            let e = parse_file("x.json", text, 48).unwrap_err();
            assert_eq!(e.field, None, "{}", e.message);
        }
    }

    #[test]
    fn ids_without_event_id_are_stable_per_file() {
        let text = b"[{\"type\":\"T\",\"entity\":\"e\",\"payload\":1},{\"type\":\"T\",\"entity\":\"e\",\"payload\":2}]";
        let a = parse_file("x.json", text, 1 << 20).expect("valid");
        let b = parse_file("x.json", text, 1 << 20).expect("valid");
        assert_eq!(a[0].event_id, b[0].event_id);
        assert_ne!(a[0].event_id, a[1].event_id);
        let c = parse_file("y.json", text, 1 << 20).expect("valid");
        assert_ne!(a[0].event_id, c[0].event_id, "another file, other events");
    }

    #[test]
    fn eligibility_and_types() {
        assert!(!eligible(".x.json") && !eligible("x.json.tmp") && eligible("x.json"));
        assert!(parse_file("x.csv", b"a", 1024)
            .unwrap_err()
            .message
            .contains("unknown file type"));
        assert!(parse_file("x.ndjson", b"\n\n", 1024)
            .unwrap_err()
            .message
            .contains("no event"));
    }
}
