//! The binary's own checking receiver (`store-outbox receive`) as the
//! endpoint: started on a free loopback port, stopped with SIGTERM, and what
//! it printed read back (with `--json`, one object per event).

use std::process::{Child, Command, Stdio};

use super::{binary, free_port, spawn_listening};

/// A running `store-outbox receive`; killed when it drops.
pub struct Receive {
    pub port: u16,
    child: Option<Child>,
}

impl Receive {
    /// `store-outbox receive --listen 127.0.0.1:<free port> <args>` (the
    /// `--secret`, `--json`, ...), once it listens. Its stdout is kept when
    /// `args` has `--json`.
    pub fn start(args: &[&str]) -> Receive {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let stdout = if args.contains(&"--json") {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let child = spawn_listening(
            Command::new(binary()).args(["receive", "--listen", &listen]).args(args),
            stdout,
            port,
            "store-outbox receive",
        );
        Receive {
            port,
            child: Some(child),
        }
    }

    /// The webhook URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    /// SIGTERM, waits for the exit, and returns the JSON lines it printed.
    pub fn stop_json(mut self) -> Vec<serde_json::Value> {
        let child = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let out = child.wait_with_output().expect("wait");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    }
}

impl Drop for Receive {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
