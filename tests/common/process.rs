//! Processes a test starts: the binary under test, servers that are killed
//! when their handle drops, commands that must succeed, the CLI run once.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::wait_for_port;

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_store-outbox")
}

/// A child process that is killed when it drops (servers a test starts).
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns a server that is to listen on `port` (stdin and stderr closed,
/// stdout as given) and waits until it does.
pub fn spawn_listening(cmd: &mut Command, stdout: Stdio, port: u16, what: &str) -> Child {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {:?}: {e}", cmd.get_program()));
    wait_for_port(port, &format!("{what} listening on {port}"));
    child
}

/// Runs a command that must succeed; a failure fails the test with the
/// command's own message (stderr).
pub fn run_ok(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `store-outbox <command> --config <config>` in the foreground (`run` that
/// is to fail at start, `check-config`), to its exit.
pub fn cli_with_config(command: &str, config: &Path) -> std::process::Output {
    Command::new(binary())
        .arg(command)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run the binary")
}

/// A process's stderr, as text.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
