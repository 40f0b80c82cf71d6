//! systemd's notify protocol, against a NOTIFY_SOCKET the test listens on.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn ready_status_watchdog_and_stopping_reach_systemd() {
    let rx = Receiver::start();
    let mut agent = Agent::new(&subscription("erp", &rx.url(), ""));
    let notify = NotifySocket::bind(agent.dir.path());
    agent.start_with_env(&[notify.env(), ("WATCHDOG_USEC", "1000000")]);

    let first = notify.messages(Duration::from_secs(20), |m| m.contains("READY=1"));
    let ready = first.iter().find(|m| m.contains("READY=1")).expect("READY=1 sent");
    assert!(ready.contains("STATUS=backlog 0"), "{ready}");
    // READY comes after the listeners: the socket answers now.
    assert!(std::os::unix::net::UnixStream::connect(agent.socket()).is_ok());

    let pets = notify
        .messages(Duration::from_secs(10), |_| false)
        .into_iter()
        .filter(|m| m.contains("WATCHDOG=1"))
        .count();
    assert!(
        pets >= 3,
        "WATCHDOG=1 about every 0.5 s with WATCHDOG_USEC=1s, got {pets} in 10 s"
    );

    let pid = agent.child.as_ref().expect("running").id();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let last = notify.messages(Duration::from_secs(20), |m| m.contains("STOPPING=1"));
    assert!(last.iter().any(|m| m.contains("STOPPING=1")), "{last:?}");
    let status = agent.child.take().expect("child").wait().expect("wait");
    assert!(status.success());
}

#[test]
fn without_notify_socket_nothing_changes() {
    let mut agent = Agent::new("");
    agent.start();
    assert_eq!(
        send_lines(
            &agent.socket(),
            &[event("n-1", "till:1", "SaleCreated", serde_json::json!(1))]
        )[0]["ok"],
        true
    );
    assert!(agent.stop().success());
}
