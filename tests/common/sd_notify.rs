//! The systemd side of `Type=notify`: the datagrams the agent sends to
//! `NOTIFY_SOCKET`.

use std::time::{Duration, Instant};

/// sd_notify datagrams received on `sock` until one matches `until`, or the
/// timeout (the socket needs a short read timeout).
pub fn notify_messages(
    sock: &std::os::unix::net::UnixDatagram,
    timeout: Duration,
    until: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = until(&msg);
            out.push(msg);
            if done {
                break;
            }
        }
    }
    out
}
