//! The systemd side of `Type=notify`: a `NOTIFY_SOCKET` for the agent and
//! the datagrams it sends there.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A bound `NOTIFY_SOCKET`, as systemd listens on one.
pub struct NotifySocket {
    pub path: PathBuf,
    path_text: String,
    socket: UnixDatagram,
}

impl NotifySocket {
    /// Binds `notify.sock` in `dir` (a short read timeout, so
    /// [`NotifySocket::messages`] keeps to its timeout).
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        NotifySocket {
            path_text: path.display().to_string(),
            path,
            socket,
        }
    }

    /// `NOTIFY_SOCKET=<path>`, for [`super::Agent::start_with_env`].
    pub fn env(&self) -> (&'static str, &str) {
        ("NOTIFY_SOCKET", self.path_text.as_str())
    }

    /// sd_notify datagrams received until one matches `until`, or the
    /// timeout.
    pub fn messages(&self, timeout: Duration, until: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
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
}
