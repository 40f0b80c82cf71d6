//! The TOML configuration file (`deliver::destinations::parse_config`), on lossy UTF-8 input.
//! A `secret_file` key makes the parser read that file. Relative paths resolve
//! under a directory that does not exist, so they just fail; an input that
//! might name a device or a kernel file (`/dev/zero`, `/dev/stdin` would hang
//! or eat memory: false crashes) is skipped.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use store_outbox::deliver::destinations::parse_config as parse;

/// Whether a `secret_file` in `text` might name a device or kernel file,
/// literally or spelled with escapes or line continuations.
fn might_read_a_device(text: &str) -> bool {
    let sneaky = ["\\u", "\\U", "\\\n", "\\\r", "\\ ", "\\\t"];
    let names_file = text.contains("secret_file") || sneaky.iter().any(|s| text.contains(s));
    let special = ["/dev", "/proc", "/sys", "/run"];
    names_file && (special.iter().any(|s| text.contains(s)) || sneaky.iter().any(|s| text.contains(s)))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if might_read_a_device(&text) {
        return;
    }
    match parse(&text, Some(Path::new("/nonexistent/store-outbox-fuzz/config.toml"))) {
        Ok(c) => {
            assert!(c.ingest.max_request_bytes >= c.ingest.max_event_bytes);
            for s in &c.subscriptions {
                // A webhook is always signed; a bus message only if asked to.
                if s.kind.name() == "webhook" {
                    assert!(!s.secrets.is_empty(), "subscription {:?} without a secret", s.name);
                    assert!(matches!(s.url.scheme(), "http" | "https"));
                }
                assert!((1..=1024).contains(&s.max_in_flight));
                assert!(!s.retry.initial.is_zero() && s.retry.initial <= s.retry.max);
                let _ = s.url_for_logs();
            }
        }
        Err(e) => {
            // Every message names the file.
            assert!(e.0.starts_with("/nonexistent/store-outbox-fuzz/config.toml"), "{}", e.0);
        }
    }
});
