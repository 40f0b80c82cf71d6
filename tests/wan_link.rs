//! The WAN link proxy of the harness (`tests/common/wan.rs`) behaves like a
//! store's uplink, and the agent delivers through it: in order, nothing
//! lost. Only lower bounds on time are asserted (a slow machine only makes
//! things slower).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::wan::{Link, Wan};
use common::*;

/// An echo server on loopback: returns what it reads.
fn echo_server() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn the_link_delays_each_way_and_caps_the_bandwidth_for_all_connections_together() {
    let target = echo_server();
    let wan = Wan::start(
        target,
        Link {
            delay: Duration::from_millis(40),
            bits_per_s: Some(4_000_000),
        },
    );
    // One small round trip: at least the delay twice (plus the connect's).
    let mut stream = std::net::TcpStream::connect(wan.addr).expect("connect through the link");
    let started = Instant::now();
    stream.write_all(b"ping").expect("write");
    let mut got = [0u8; 4];
    stream.read_exact(&mut got).expect("echo");
    assert_eq!(&got, b"ping");
    assert!(
        started.elapsed() >= Duration::from_millis(80),
        "{:?}",
        started.elapsed()
    );

    // Two connections sending 250 KB each share 4 Mbit/s: 500 KB take at
    // least one second up (and as long again down, in parallel).
    let started = Instant::now();
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let addr = wan.addr;
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).expect("connect");
                let mut reader = s.try_clone().expect("clone");
                let echo = std::thread::spawn(move || {
                    let mut back = vec![0u8; 250_000];
                    reader.read_exact(&mut back).expect("all of it back");
                    back
                });
                let data: Vec<u8> = (0..250_000u32).map(|i| (i % 251) as u8).collect();
                s.write_all(&data).expect("send");
                assert_eq!(echo.join().expect("echo thread"), data, "bytes intact, in order");
            })
        })
        .collect();
    for s in senders {
        s.join().expect("sender");
    }
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    let traffic = wan.traffic();
    assert_eq!(traffic.up_bytes, 500_004);
    assert_eq!(traffic.down_bytes, 500_004);
    assert_eq!(traffic.connections, 3);
    assert!(traffic.up_busy >= Duration::from_millis(1000), "{traffic:?}");
}

#[test]
fn one_event_per_request_through_the_store_uplink_arrives_in_order_and_complete() {
    let rx = Receiver::start();
    let wan = rx.behind(Link::STORE_UPLINK);
    let mut agent = Agent::new(&subscription("erp", &rx.url_via(&wan), ""));
    agent.start();
    agent.send_events(&Events::new("wan", 0..200, "SaleCreated").spread_over("till", 7));
    wait_until(Duration::from_secs(120), "200 delivered through the link", || {
        rx.delivered_ids().len() == 200
    });
    assert_eq!(assert_entity_order(&rx.delivered()), 0, "no duplicates");
    assert!(wan.traffic().up_bytes > 200 * 300, "{:?}", wan.traffic());
}

#[test]
fn with_a_proxy_in_the_environment_requests_go_through_it() {
    // `HTTP_PROXY` names the link proxy, the subscription names the
    // receiver itself: the events arrive only if the agent used the proxy
    // (the link forwards whatever it gets to the receiver, which takes the
    // proxy form of the request line as well).
    let rx = Receiver::start();
    let wan = rx.behind(Link {
        delay: Duration::ZERO,
        bits_per_s: None,
    });
    let proxy = format!("http://{}", wan.addr);
    let mut agent = Agent::new(&subscription("erp", &rx.url(), ""));
    agent.start_with_env(&[("HTTP_PROXY", &proxy), ("NO_PROXY", "")]);
    agent.send_events(&Events::new("px", 0..30, "SaleCreated").spread_over("till", 3));
    wait_until(Duration::from_secs(60), "30 delivered through the proxy", || {
        rx.delivered_ids().len() == 30
    });
    assert_eq!(assert_entity_order(&rx.delivered()), 0, "no duplicates");
    let traffic = wan.traffic();
    assert!(traffic.connections >= 1, "{traffic:?}");
    assert!(
        traffic.up_bytes > 30 * 300,
        "every request went through the proxy: {traffic:?}"
    );
}
