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

/// An HTTP proxy on loopback that takes `CONNECT host:port` and pipes the
/// bytes both ways; it records each CONNECT's request head.
fn connect_proxy() -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split_whitespace().nth(1).unwrap_or_default().to_string();
                seen.lock().expect("heads").push(head.clone());
                let Ok(upstream) = std::net::TcpStream::connect(&target) else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                    return;
                };
                let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                let (mut up_r, mut up_w) = (upstream.try_clone().expect("clone"), upstream);
                let (mut down_r, mut down_w) = (client.try_clone().expect("clone"), client);
                std::thread::spawn(move || std::io::copy(&mut up_r, &mut down_w));
                let _ = std::io::copy(&mut down_r, &mut up_w);
            });
        }
    });
    (addr, heads)
}

#[test]
fn with_a_proxy_in_the_environment_requests_go_through_it_unless_no_proxy_names_the_host() {
    let rx = Receiver::start();
    let (proxy, heads) = connect_proxy();
    let mut agent = Agent::new(&subscription("erp", &rx.url(), ""));
    // user "store", password "s3cr:t" (percent-encoded in the URL).
    let proxy_url = format!("http://store:s3cr%3At@{proxy}");
    agent.start_with_env(&[("HTTP_PROXY", &proxy_url), ("NO_PROXY", "other.example")]);
    agent.send_events(&Events::new("px", 0..30, "SaleCreated").spread_over("till", 3));
    wait_until(Duration::from_secs(60), "30 delivered through the proxy", || {
        rx.delivered_ids().len() == 30
    });
    assert_eq!(assert_entity_order(&rx.delivered()), 0, "no duplicates");
    let tunnels = heads.lock().expect("heads").clone();
    assert!(!tunnels.is_empty(), "the requests went through the proxy");
    let target = format!("CONNECT {} HTTP/1.1\r\n", rx.addr);
    // base64("store:s3cr:t")
    let auth = "Proxy-Authorization: Basic c3RvcmU6czNjcjp0\r\n";
    assert!(
        tunnels.iter().all(|h| h.starts_with(&target) && h.contains(auth)),
        "{tunnels:?}"
    );

    // doctor goes the same way: no DNS or TCP of its own to the host, the
    // GET through a tunnel.
    let tunnels_before = heads.lock().expect("heads").len();
    let out = std::process::Command::new(binary())
        .args(["doctor", "--config"])
        .arg(&agent.config)
        .env("HTTP_PROXY", &proxy_url)
        .env("NO_PROXY", "")
        .output()
        .expect("doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("through the proxy {proxy}")), "{text}");
    assert!(text.contains("GET answered"), "{text}");
    assert_eq!(
        heads.lock().expect("heads").len(),
        tunnels_before + 1,
        "doctor's GET tunnelled"
    );

    // NO_PROXY naming the host: straight to it, no new tunnel.
    agent.stop();
    let before = heads.lock().expect("heads").len();
    agent.start_with_env(&[("HTTP_PROXY", &proxy_url), ("NO_PROXY", "localhost, 127.0.0.1")]);
    agent.send_events(&Events::new("direct", 0..10, "SaleCreated").spread_over("till", 2));
    wait_until(Duration::from_secs(60), "10 more delivered directly", || {
        rx.delivered_ids().iter().filter(|id| id.starts_with("direct")).count() == 10
    });
    assert_eq!(
        heads.lock().expect("heads").len(),
        before,
        "no tunnel for a NO_PROXY host"
    );
}
