//! Spool directory ingest: producers write a file under a name starting with
//! `.` or ending in `.tmp`, then rename it into `<spool_dir>/incoming/`.
//!
//! Watched with `notify`, scanned at start (name order) and rescanned
//! periodically, so a lost or overflowed inotify event never leaves a file
//! behind. A file is taken whole or not at all, in one transaction, and
//! deleted only after the commit. Events without an `event_id` get one derived
//! from the file's name and content, so a file read again after a crash
//! between commit and delete is recognised as duplicates, not stored twice.
//! A failing file moves to `failed/` with `<name>.error.json` beside it, and
//! so does anything in `incoming/` that is not a regular file (a symbolic
//! link, never followed; a FIFO, never opened; a directory) or whose name is
//! not UTF-8: nothing finished waits there forever.
//!
//! Reading and parsing a file (up to [`MAX_FILE_BYTES`], CPU work) runs on a
//! blocking thread, never on the async workers, and gives up when the agent
//! stops; the file then stays in `incoming/` for the next start.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::event::{ErrorCode, IngestError, Reply};
use crate::outbox::writer::Writer;
use crate::shutdown::Shutdown;

mod file;

use file::{hex, not_a_file, read_file, Read};
pub use file::{parse_file, parse_file_unless};

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
    ///
    /// Waiting are the finished regular files with UTF-8 names: what a scan
    /// takes. Anything else there is moved to `failed/` by the next scan, so
    /// it is not counted as waiting.
    pub fn counts(&self) -> (usize, usize) {
        let count = |dir: &Path, keep: &dyn Fn(&std::fs::DirEntry) -> bool| {
            std::fs::read_dir(dir)
                .map(|rd| rd.filter_map(Result::ok).filter(|e| keep(e)).count())
                .unwrap_or(0)
        };
        let waiting = |e: &std::fs::DirEntry| {
            let name = e.file_name();
            eligible(&name) && name.to_str().is_some() && e.file_type().is_ok_and(|t| t.is_file())
        };
        // Not the reports, nor a report being written (`.<report>.tmp`).
        let refused = |e: &std::fs::DirEntry| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.ends_with(".error.json") && !name.ends_with(".error.json.tmp")
        };
        (count(&self.incoming, &waiting), count(&self.failed, &refused))
    }
}

/// Whether a name in `incoming/` is finished (not a producer's work in
/// progress: a name starting with `.` or ending in `.tmp`, which stays
/// untouched whatever it is).
pub fn eligible(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    !bytes.starts_with(b".") && !bytes.ends_with(b".tmp")
}

/// A name as reports and logs show it: a UTF-8 name as it is; in any other,
/// each byte that is not UTF-8 as `\xNN` and a backslash as `\\`, so two
/// different names never show the same.
pub fn shown_name(name: &OsStr) -> String {
    if let Some(text) = name.to_str() {
        return text.to_string();
    }
    let mut out = String::new();
    for chunk in name.as_bytes().utf8_chunks() {
        out.push_str(&chunk.valid().replace('\\', "\\\\"));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
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

    /// Takes every finished entry of `incoming/`, in name (byte) order.
    pub async fn scan(&self) {
        let mut names: Vec<OsString> = match std::fs::read_dir(&self.dirs.incoming) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.file_name())
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

    async fn take(&self, name: &OsStr) -> Taken {
        let path = self.dirs.incoming.join(name);
        // The entry itself, never what a link points to.
        let kind = match std::fs::symlink_metadata(&path) {
            Ok(m) => m.file_type(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Taken::Done, // gone meanwhile
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot look at a spool entry; will retry");
                return Taken::Later;
            }
        };
        let shown = shown_name(name);
        if let Some(why) = not_a_file(&path, kind) {
            return self.fail(name, FileError::whole(&shown, ErrorCode::InvalidEvent, why));
        }
        let Some(utf8) = name.to_str() else {
            let why = format!(
                "the file name is not UTF-8 (bytes {}): it was not read; rename it to a UTF-8 name ending in .json, .ndjson or .xml and move it into incoming/ again",
                hex(name.as_bytes())
            );
            return self.fail(name, FileError::whole(&shown, ErrorCode::InvalidEvent, why));
        };
        // Reading and parsing up to 64 MiB is CPU work: on a blocking
        // thread, so it holds no async worker, and given up on shutdown.
        let read = {
            let (path, name, max_event_bytes) = (path.clone(), utf8.to_string(), self.max_event_bytes);
            let shutdown = self.shutdown.clone();
            tokio::task::spawn_blocking(move || read_file(&path, &name, max_event_bytes, &|| shutdown.is_started()))
                .await
        };
        let events = match read {
            Ok(Read::Events(events)) => events,
            Ok(Read::Invalid(err)) => {
                self.writer.count_rejected(err.code);
                return self.fail(name, *err);
            }
            Ok(Read::Refused(err)) => return self.fail(name, err),
            Ok(Read::Gone) => return Taken::Done,
            Ok(Read::Unreadable(e)) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read a spool file; will retry");
                return Taken::Later;
            }
            Ok(Read::Stopped) => {
                tracing::info!(file = utf8, "stopping: spool file left in incoming/ for the next start");
                return Taken::Later;
            }
            Err(e) => {
                // A bug in a parser: the file would fail the same way again.
                let msg = format!("the file could not be parsed: {e}");
                return self.fail(name, FileError::whole(utf8, ErrorCode::Internal, msg));
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
                tracing::debug!(file = utf8, events = n, "spool file taken");
                Taken::Done
            }
            Some(e) => {
                tracing::warn!(file = utf8, code = e.code.as_str(), error = %e.message, "spool file left in incoming/, will retry");
                Taken::Later
            }
        }
    }

    /// Moves a refused entry (the entry itself: a link, not its target) to
    /// `failed/` under its own name, with its `.error.json` beside it. Neither
    /// may replace what is there: a name taken gets a suffix.
    fn fail(&self, name: &OsStr, err: FileError) -> Taken {
        let taken = |p: &Path| p.symlink_metadata().is_ok();
        let shown = shown_name(name);
        let stamp = crate::outbox::now_ms();
        let (target, report_name) = (0u64..1000)
            .map(|n| {
                let suffix = match n {
                    0 => String::new(),
                    1 => format!(".{stamp}"),
                    n => format!(".{stamp}.{n}"),
                };
                let mut target = name.to_os_string();
                target.push(&suffix);
                (self.dirs.failed.join(target), format!("{shown}{suffix}.error.json"))
            })
            .find(|(target, report)| !taken(target) && !taken(&self.dirs.failed.join(report)))
            .unwrap_or_default(); // none free: the rename below fails and says so
        let mut report = serde_json::json!({
            "file": err.file, "line": err.line, "index": err.index, "field": err.field, "element": err.element,
            "code": err.code, "message": err.message, "failed_at": crate::event::now_rfc3339(),
        });
        if name.to_str().is_none() {
            // The name's bytes, for a name `file` can only show escaped.
            report["file_bytes_hex"] = hex(name.as_bytes()).into();
        }
        let report_path = self.dirs.failed.join(&report_name);
        let tmp = self.dirs.failed.join(format!(".{report_name}.tmp"));
        let written = serde_json::to_vec_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|body| std::fs::write(&tmp, body))
            .and_then(|()| std::fs::rename(&tmp, &report_path));
        // `rename` moves a link itself, never its target.
        if let Err(e) = written.and_then(|()| std::fs::rename(self.dirs.incoming.join(name), &target)) {
            tracing::error!(file = shown, error = %e, "cannot move a refused spool entry to failed/");
            return Taken::Later;
        }
        tracing::warn!(file = shown, line = ?err.line, index = ?err.index, element = ?err.element, error = %err.message,
            "spool entry refused, moved to failed/");
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
        let eligible = |n: &str| eligible(OsStr::new(n));
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

    #[test]
    fn shown_names_keep_different_bytes_apart() {
        let name = |b: &[u8]| shown_name(OsStr::from_bytes(b));
        assert_eq!(name(b"caf\xc3\xa9.json"), "caf\u{e9}.json", "UTF-8 as it is");
        assert_eq!(name(b"caf\xe9.json"), "caf\\xE9.json");
        assert_ne!(name(b"caf\xe9.json"), name(b"caf\xe8.json"));
        // A backslash in a name that is not UTF-8 is doubled, so it cannot
        // pass for an escape.
        assert_ne!(name(b"a\\xE9\xff"), name(b"a\xe9\xff"));
        assert_eq!(name(b"a\\\xff"), "a\\\\\\xFF");
    }

    #[test]
    fn counts_take_only_what_a_scan_would_take_as_waiting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dirs = SpoolDirs::new(dir.path());
        dirs.create().expect("create");
        let incoming = &dirs.incoming;
        std::fs::write(incoming.join("a.json"), b"{}").expect("file");
        std::fs::write(incoming.join(".b.json.tmp"), b"{}").expect("work in progress");
        std::fs::write(incoming.join(OsStr::from_bytes(b"caf\xe9.json")), b"{}").expect("non-UTF-8 name");
        std::os::unix::fs::symlink(incoming.join("a.json"), incoming.join("link.json")).expect("symlink");
        std::fs::create_dir(incoming.join("sub.json")).expect("dir");
        mkfifo(&incoming.join("pipe.json"));
        std::fs::write(dirs.failed.join("x.json"), b"{}").expect("failed file");
        std::fs::write(dirs.failed.join("x.json.error.json"), b"{}").expect("its report");
        std::fs::write(dirs.failed.join(".y.json.error.json.tmp"), b"{}").expect("a report being written");
        assert_eq!(dirs.counts(), (1, 1));
    }

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(
            unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
            0,
            "mkfifo {}",
            path.display()
        );
    }

    /// What the scan found a regular file may be a FIFO or a link by the time
    /// it is opened: refused, never waited on (a FIFO without a writer would
    /// block the open) nor followed.
    #[test]
    fn reading_never_waits_on_a_fifo_nor_follows_a_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let event = br#"{"type":"T","entity":"e","payload":1}"#;
        let (pipe, link, target) = (
            dir.path().join("p.json"),
            dir.path().join("l.json"),
            dir.path().join("t.json"),
        );
        mkfifo(&pipe);
        std::fs::write(&target, event).expect("target");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let read = |p: &Path| match read_file(p, "x.json", 1 << 20, &|| false) {
                Read::Refused(e) => Ok(e.message),
                Read::Events(_) => Err("read as events"),
                _ => Err("another answer"),
            };
            let _ = tx.send((
                read(&pipe),
                read(&link),
                matches!(read_file(&target, "x.json", 1 << 20, &|| false), Read::Events(_)),
            ));
        });
        let (pipe, link, target_read) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("reading answers at once (a blocking open of the FIFO never returns)");
        assert!(pipe.as_deref().is_ok_and(|m| m.starts_with("a FIFO")), "{pipe:?}");
        assert!(
            link.as_deref().is_ok_and(|m| m.starts_with("a symbolic link")),
            "{link:?}"
        );
        assert!(target_read, "the regular file itself is read");
    }
}
