//! The official Standard Webhooks library (Python's `standardwebhooks`,
//! installed by `scripts/install-test-peers`) checking what a receiver got:
//! code we did not write verifies our signatures. The scripts are in
//! `tests/support/`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use super::{run_ok, Request};

/// A webhook as the verifier reads it: its headers and its body as text
/// (after undoing any content encoding).
#[derive(Clone, Debug)]
pub struct Captured {
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// A request as received (its body UTF-8).
impl From<&Request> for Captured {
    fn from(r: &Request) -> Captured {
        Captured {
            headers: r.headers.clone(),
            body: String::from_utf8(r.body.clone()).expect("utf-8 body"),
        }
    }
}

impl From<&Captured> for Captured {
    fn from(c: &Captured) -> Captured {
        c.clone()
    }
}

/// Which check of `tests/support/` to run.
#[derive(Clone, Copy, Debug)]
pub enum Verifier {
    /// `verify_standardwebhooks.py`: one event per request, each verifies
    /// with every secret given (rotation); prints `verified N`.
    OneEventEach,
    /// `verify_batches.py`: one event or a batch (or a CloudEvent in binary
    /// mode) per request, its `webhook-id` checked against its events, with
    /// the first secret given (the others are not used); prints `verified N requests, M events`.
    Batches,
}

impl Verifier {
    fn script(self) -> &'static str {
        match self {
            Verifier::OneEventEach => concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/verify_standardwebhooks.py"),
            Verifier::Batches => concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/verify_batches.py"),
        }
    }
}

/// Writes `requests` (received [`Request`]s, or [`Captured`] ones) to
/// `dir/capture.json`, runs `verifier` on them with `secrets` and returns
/// what it printed (trimmed). A request that does not verify fails the test
/// with the library's message.
pub fn verify_with_python<R: Into<Captured>>(
    verifier: Verifier,
    requests: impl IntoIterator<Item = R>,
    dir: &Path,
    secrets: &[&str],
) -> String {
    let capture: Vec<serde_json::Value> = requests
        .into_iter()
        .map(|r| {
            let r: Captured = r.into();
            serde_json::json!({"headers": r.headers, "body": r.body})
        })
        .collect();
    let path = dir.join("capture.json");
    std::fs::write(&path, serde_json::to_vec(&capture).expect("json")).expect("write capture");
    let out = run_ok(
        Command::new("python3").arg(verifier.script()).arg(&path).args(secrets),
        "the official verifier (python3 and `pip install standardwebhooks`, see scripts/install-test-peers)",
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
