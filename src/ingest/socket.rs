//! Unix socket ingest: newline-delimited JSON, one reply line per line, in
//! order, with pipelining.
//!
//! A bad line is answered with an error and never closes the connection. An
//! over-long line is answered with `too_large` without being buffered whole:
//! its bytes are skipped up to the next newline.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::event::{parse_event, ErrorCode, IngestError, NewEvent, Reply};
use crate::outbox::writer::{Ticket, Writer};
use crate::shutdown::Shutdown;

/// Replies a connection may owe at once before its reading pauses.
const MAX_PIPELINED: usize = 1024;
/// How long connections keep answering `shutting_down` after a stop request.
const SHUTDOWN_LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// Binds the socket: a stale file left by a crash is replaced, a live one
/// (another agent answering) is an error. Mode 0660 so POS software in the
/// agent's group can write.
pub async fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create directory: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(format!(
                "{}: another store-outbox is already listening on this socket; stop it first",
                path.display()
            ));
        }
        std::fs::remove_file(path).map_err(|e| format!("{}: cannot remove the stale socket: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("{}: cannot listen: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("{}: cannot set permissions: {e}", path.display()))?;
    Ok(listener)
}

/// Serves connections until shutdown, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    writer: Writer,
    max_event_bytes: u64,
    mut shutdown: Shutdown,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(handle(stream, writer.clone(), max_event_bytes, shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.wait() => break,
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(&path);
    // Connections answer what they already read, then close.
    while connections.join_next().await.is_some() {}
}

/// One line as read from the stream by [`read_line`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// A complete line, now in the buffer without its `\n` (a `\r` before
    /// it is kept; the caller strips it). At the end of the stream, the
    /// non-empty unterminated rest counts as a line too.
    Text,
    /// A line of this many bytes (not counting its `\n`), more than the
    /// limit; its bytes were skipped and the buffer is empty.
    TooLong(u64),
    /// End of stream, with nothing left of a line.
    End,
}

/// Reads one line into `buf` (cleared first), never holding more than `max`
/// bytes of it: the socket's framing, public so that it can be tested and
/// fuzzed without a socket (`fuzz/fuzz_targets/socket_framing.rs`).
///
/// Not cancellation safe: dropped mid-line, the bytes already consumed from
/// `reader` are lost.
pub async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>, max: u64) -> io::Result<Line> {
    buf.clear();
    let mut skipped: u64 = 0;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (skipped, buf.is_empty()) {
                (0, true) => Line::End,
                (0, false) => Line::Text,
                (n, _) => Line::TooLong(n),
            });
        }
        let (chunk, found) = match memchr(available) {
            Some(pos) => (&available[..pos], Some(pos)),
            None => (available, None),
        };
        if skipped > 0 || (buf.len() + chunk.len()) as u64 > max {
            skipped += (buf.len() + chunk.len()) as u64;
            buf.clear();
        } else {
            buf.extend_from_slice(chunk);
        }
        let consumed = found.map_or(chunk.len(), |pos| pos + 1);
        reader.consume(consumed);
        if found.is_some() {
            return Ok(if skipped > 0 {
                Line::TooLong(skipped)
            } else {
                Line::Text
            });
        }
    }
}

fn memchr(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// Parses a line [`read_line`] returned as [`Line::Text`]: a `\r` before the
/// newline is dropped (CRLF producers), the rest is one event.
pub fn parse_line(line: &[u8], max_event_bytes: u64) -> Result<NewEvent, IngestError> {
    parse_event(line.strip_suffix(b"\r").unwrap_or(line), max_event_bytes)
}

async fn handle(stream: UnixStream, writer: Writer, max_event_bytes: u64, mut shutdown: Shutdown) {
    let (read_half, write_half) = stream.into_split();
    let (reply_tx, mut reply_rx) = mpsc::channel::<Owed>(MAX_PIPELINED);
    // Replies go out in line order: each line's future is queued as it is read.
    let replier = tokio::spawn(async move {
        let mut out = BufWriter::new(write_half);
        while let Some(owed) = reply_rx.recv().await {
            let reply = match owed {
                Owed::Now(reply) => reply,
                Owed::AfterCommit(ticket) => ticket
                    .wait()
                    .await
                    .pop()
                    .unwrap_or_else(|| IngestError::new(ErrorCode::Internal, "no reply from storage").into()),
            };
            let mut line = reply.to_json();
            line.push('\n');
            if out.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            // Flush when nothing more is ready, so pipelined replies share a write.
            if reply_rx.is_empty() && out.flush().await.is_err() {
                return;
            }
        }
        let _ = out.flush().await;
    });
    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    let mut buf = Vec::new();
    // After a stop request, lines still arriving for a short while are
    // answered `shutting_down` (so the producer knows to resend them later),
    // then the connection closes.
    let mut closing_at: Option<tokio::time::Instant> = None;
    loop {
        let line = match closing_at {
            Some(deadline) => {
                match tokio::time::timeout_at(deadline, read_line(&mut reader, &mut buf, max_event_bytes)).await {
                    Ok(line) => line,
                    Err(_) => break,
                }
            }
            None => tokio::select! {
                line = read_line(&mut reader, &mut buf, max_event_bytes) => line,
                _ = shutdown.wait() => {
                    closing_at = Some(tokio::time::Instant::now() + SHUTDOWN_LINGER);
                    continue;
                }
            },
        };
        let reply = match line {
            Ok(Line::End) | Err(_) => break,
            Ok(Line::TooLong(n)) => {
                writer.count_rejected(ErrorCode::TooLarge);
                Owed::Now(
                    IngestError::new(
                        ErrorCode::TooLarge,
                        format!("line of {n} bytes, the limit is {max_event_bytes}"),
                    )
                    .into(),
                )
            }
            Ok(Line::Text) => {
                if shutdown.is_started() {
                    writer.count_rejected(ErrorCode::ShuttingDown);
                    Owed::Now(IngestError::new(ErrorCode::ShuttingDown, "the agent is stopping").into())
                } else {
                    match parse_line(&buf, max_event_bytes) {
                        // Submitted here, in line order; only the wait is deferred.
                        Ok(event) => Owed::AfterCommit(writer.submit(vec![event]).await),
                        Err(e) => {
                            writer.count_rejected(e.code);
                            Owed::Now(e.into())
                        }
                    }
                }
            }
        };
        if reply_tx.send(reply).await.is_err() {
            break;
        }
    }
    drop(reply_tx);
    let _ = replier.await;
}

/// A reply owed to the producer, in line order.
enum Owed {
    /// Known without storage (a rejected line).
    Now(Reply),
    /// Known once the event's transaction committed.
    AfterCommit(Ticket),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_skipped_not_buffered() {
        let data = format!("{}\nshort\n{}", "x".repeat(5000), "y".repeat(20));
        let mut reader = BufReader::with_capacity(64, data.as_bytes());
        let mut buf = Vec::new();
        assert!(matches!(
            read_line(&mut reader, &mut buf, 100).await,
            Ok(Line::TooLong(5000))
        ));
        assert!(buf.capacity() <= 200, "buffered {}", buf.capacity());
        assert!(matches!(read_line(&mut reader, &mut buf, 100).await, Ok(Line::Text)));
        assert_eq!(buf, b"short");
        assert!(matches!(read_line(&mut reader, &mut buf, 100).await, Ok(Line::Text)));
        assert_eq!(buf.len(), 20);
        assert!(matches!(read_line(&mut reader, &mut buf, 100).await, Ok(Line::End)));
    }
}
