//! Switches a suite reads from the environment (sizes, seeds, cases).

/// The number in the environment variable `name`, if it is set; one that is
/// not a number fails the test, naming it.
pub fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={text:?}: not a number ({e})")),
    )
}
