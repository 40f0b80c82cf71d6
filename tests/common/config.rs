//! The TOML the tests write into an agent's config: the secret every test
//! subscription signs with, a `[[subscription]]` section, retry presets.

/// The secret every test subscription uses.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A subscription section pointing at `url`; `extra` adds keys.
pub fn subscription(name: &str, url: &str, extra: &str) -> String {
    format!("[[subscription]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n{extra}\n")
}

/// Retries that park a failing event within about a second.
pub const PARK_FAST: &str = "retry = { initial = \"100ms\", max = \"200ms\", give_up_after = \"300ms\" }";
