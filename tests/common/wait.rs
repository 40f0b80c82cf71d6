//! Waiting for a condition: polls until it holds, or fails the test naming
//! what it waited for.

use std::time::{Duration, Instant};

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
