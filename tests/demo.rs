//! `demo` runs end to end and checks its own outcome.

mod common;

#[test]
fn demo_delivers_everything_through_an_outage() {
    let out = std::process::Command::new(common::binary())
        .args(["demo", "--events", "600", "--outage", "2"])
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("acknowledged         600 events"), "{stdout}");
    assert!(stdout.contains("missing              0"), "{stdout}");
    assert!(stdout.contains("order violations     0"), "{stdout}");
    assert!(stdout.contains("OK: every acknowledged event arrived"), "{stdout}");
}
