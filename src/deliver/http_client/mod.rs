//! The agent's HTTP/1.1 client, for every destination over HTTP (the
//! webhook, Pub/Sub's REST API, its token exchange): keep-alive connections to one
//! endpoint (plain TCP or rustls, directly or through the proxy the
//! environment names), used one request at a time each, kept for the next
//! request while they stay open. `doctor` checks endpoints with it too, so
//! its verdict is delivery's.
//!
//! Why not reqwest: one event per request is the default mode, and
//! reqwest's per-request layers (request builder, redirect and retry
//! layers, the URL parsed again per request, its pool's checkout) cost more
//! CPU per event than reading and committing the event (docs/BENCHMARKS.md,
//! "nginx as the raw limit"). The default [`Endpoint`] (`hyper_backend.rs`)
//! is hyper's own client connection with the little a webhook needs on top:
//! a pool, the timeouts, TLS, a proxy. The `store_outbox_reqwest` cfg (`RUSTFLAGS="--cfg store_outbox_reqwest"`) swaps in
//! the same API over reqwest 0.12 (`reqwest_backend.rs`), only to measure the
//! two against each other (docs/BENCHMARKS.md, "Session 13"); this file, the
//! proxy, TLS and subscription parts are shared by both.

use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderMap;

mod proxy;
mod subscription;
mod tls;

// Exactly one backend: the feature decides which `Endpoint` the rest of the
// crate sees; both have the same API and the same limits on answers.
#[cfg(not(store_outbox_reqwest))]
mod hyper_backend;
#[cfg(not(store_outbox_reqwest))]
pub use hyper_backend::Endpoint;
#[cfg(store_outbox_reqwest)]
mod reqwest_backend;
#[cfg(store_outbox_reqwest)]
pub use reqwest_backend::Endpoint;

pub use proxy::{redact_userinfo, shown_url};
pub use subscription::{subscription_endpoint, subscription_headers, USER_AGENT};

/// A connection unused for this long is not used again (the endpoint may
/// have dropped it; reqwest's pool used the same).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Of an answer's body, at most this much is read (for the error text, which
/// keeps 200 bytes); a longer body is left unread and its connection closed.
const BODY_LIMIT: usize = 64 * 1024;

/// An answer's head (status line and headers) longer than this is a failed
/// attempt, not read further (contract, "Endpoints"), as is one with more
/// than [`HEADERS_LIMIT`] headers (hyper's default): an endpoint cannot make
/// the agent buffer a head of any size.
const HEAD_LIMIT: usize = 64 * 1024;
/// Headers in an answer at most (hyper's own default, kept on its stack).
const HEADERS_LIMIT: usize = 100;

/// An HTTP answer: what the webhook needs of it.
#[derive(Debug)]
pub struct Reply {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    /// The start of the body (at most [`BODY_LIMIT`] bytes).
    pub body: Bytes,
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum Failure {
    /// No connection (DNS, TCP, the proxy), with the reason.
    Connect(String),
    /// The TLS handshake failed (the certificate, mostly).
    Tls(String),
    /// No complete answer within the request timeout.
    Timeout,
    /// The connection failed after the request was sent, or the answer's
    /// body was cut off: then its status line and headers (a 429's
    /// `Retry-After` still counts) and the body so far.
    Broken(Option<Box<Reply>>, String),
}

/// The TLS settings of a subscription.
pub struct TlsFiles<'a> {
    pub ca_file: Option<&'a std::path::Path>,
    pub client_cert: Option<(&'a std::path::Path, &'a std::path::Path)>,
}

#[cfg(test)]
mod tests {
    use super::proxy::{no_proxy_covers, proxy_from};
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// An HTTP/1.1 server on loopback answering every request `200 ok`;
    /// with `close_after_each`, it closes the connection after the answer
    /// (without saying so, as a server whose keep-alive ran out does).
    /// Counts connections and requests.
    fn server(close_after_each: bool) -> (url::Url, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let url = url::Url::parse(&format!("http://{}/hooks?x=1", listener.local_addr().expect("addr"))).expect("url");
        let (connections, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, r) = (connections.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    let mut stream = stream;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        assert_eq!(line, "POST /hooks?x=1 HTTP/1.1\r\n", "origin form");
                        let mut length = 0;
                        loop {
                            let mut header = String::new();
                            reader.read_line(&mut header).expect("header");
                            if header == "\r\n" {
                                break;
                            }
                            let lower = header.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                length = v.trim().parse().expect("length");
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).expect("body");
                        r.fetch_add(1, Ordering::SeqCst);
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                        if close_after_each {
                            return;
                        }
                    }
                });
            }
        });
        (url, connections, requests)
    }

    fn endpoint(url: &url::Url) -> Endpoint {
        let files = TlsFiles {
            ca_file: None,
            client_cert: None,
        };
        Endpoint::new(url, files, Duration::from_secs(5), Duration::from_secs(5), 4).expect("endpoint")
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_kept_alive_connection() {
        let (url, connections, requests) = server(false);
        let endpoint = endpoint(&url);
        for i in 0..5 {
            let reply = endpoint
                .post(HeaderMap::new(), Bytes::from(format!("{{\"n\":{i}}}")))
                .await;
            let reply = reply.expect("answered");
            assert_eq!(reply.status, 200);
            assert_eq!(&reply.body[..], b"ok");
        }
        assert_eq!(requests.load(Ordering::SeqCst), 5);
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_replaced_without_a_failure() {
        let (url, connections, requests) = server(true);
        let endpoint = endpoint(&url);
        for _ in 0..3 {
            endpoint
                .post(HeaderMap::new(), Bytes::from_static(b"{}"))
                .await
                .expect("answered");
            // Let the closing reach the idle connection (or not: either way
            // the next request must go through).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(requests.load(Ordering::SeqCst), 3, "each sent once");
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_answer_cut_off_keeps_its_status_and_headers() {
        // Promises 100 bytes, sends 8 and hangs up.
        let (url, _sent) = raw_server(
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 100\r\n\r\nslow dow".to_vec(),
            0,
        );
        match endpoint(&url).post(HeaderMap::new(), Bytes::new()).await {
            Err(Failure::Broken(Some(reply), _)) => {
                assert_eq!(reply.status, 429);
                assert_eq!(reply.headers.get("retry-after").map(|v| v.as_bytes()), Some(&b"7"[..]));
                assert_eq!(&reply.body[..], b"slow dow");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A server on loopback that reads one request and writes `head`, then
    /// `body_bytes` of `x` (in 64 KiB writes, so nothing of that size is ever
    /// held), then closes. Returns the URL and whether the whole body went out.
    fn raw_server(head: Vec<u8>, body_bytes: usize) -> (url::Url, std::sync::mpsc::Receiver<bool>) {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let url = url::Url::parse(&format!("http://{}/hooks", listener.local_addr().expect("addr"))).expect("url");
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut stream = stream;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = stream.write_all(&head).is_ok();
            let mut left = body_bytes;
            while sent && left > 0 {
                let n = left.min(chunk.len());
                sent = stream.write_all(&chunk[..n]).is_ok();
                left -= n;
            }
            let _ = done.send(sent);
        });
        (url, finished)
    }

    /// A head with `count` headers of `value_bytes` each.
    fn head_with_headers(count: usize, value_bytes: usize) -> Vec<u8> {
        let mut head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n".to_vec();
        for i in 0..count {
            head.extend_from_slice(format!("x-h{i}: {}\r\n", "v".repeat(value_bytes)).as_bytes());
        }
        head.extend_from_slice(b"\r\nok");
        head
    }

    #[tokio::test]
    async fn an_answer_head_over_64_kib_or_100_headers_is_a_failed_attempt_that_says_so() {
        #[cfg(not(store_outbox_reqwest))]
        let refused = [
            ("100 KiB in 50 headers", head_with_headers(50, 2048)),
            ("5,000 headers", head_with_headers(5_000, 1)),
            ("one header of 70 KiB", head_with_headers(1, 70 * 1024)),
            ("500 KiB in 50 headers", head_with_headers(50, 10 * 1024)),
        ];
        // reqwest sets no head limit of its own: hyper's read buffer (about
        // 408 KiB) and 100 headers bound it. The difference, asserted here so
        // that the comparison says what it is (reqwest_backend.rs).
        #[cfg(store_outbox_reqwest)]
        let refused = [
            ("5,000 headers", head_with_headers(5_000, 1)),
            ("500 KiB in 50 headers", head_with_headers(50, 10 * 1024)),
        ];
        #[cfg(store_outbox_reqwest)]
        for (what, head) in [
            ("100 KiB in 50 headers", head_with_headers(50, 2048)),
            ("one header of 70 KiB", head_with_headers(1, 70 * 1024)),
        ] {
            let (url, _) = raw_server(head, 0);
            let reply = endpoint(&url).post(HeaderMap::new(), Bytes::new()).await;
            assert!(matches!(reply, Ok(ref r) if r.status == 200), "{what}: read by reqwest");
        }
        for (what, head) in refused {
            let (url, _) = raw_server(head, 0);
            match endpoint(&url).post(HeaderMap::new(), Bytes::new()).await {
                Err(Failure::Broken(None, reason)) => {
                    assert!(reason.contains("over 64 KiB"), "{what}: {reason}")
                }
                other => panic!("{what}: {:?}", other.map(|r| (r.status, r.headers.len()))),
            }
        }
        // Just below the bound: an answer like any other.
        let (url, _) = raw_server(head_with_headers(60, 1000), 0);
        let reply = endpoint(&url)
            .post(HeaderMap::new(), Bytes::new())
            .await
            .expect("answered");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.headers.len(), 61);
    }

    #[tokio::test]
    async fn of_a_50_mib_body_64_kib_are_read_and_the_rest_is_not() {
        let big = 50 * 1024 * 1024;
        let head = format!("HTTP/1.1 500 Internal Server Error\r\ncontent-length: {big}\r\n\r\n");
        let (url, finished) = raw_server(head.into_bytes(), big);
        let reply = endpoint(&url)
            .post(HeaderMap::new(), Bytes::new())
            .await
            .expect("answered");
        assert_eq!(reply.status, 500);
        assert_eq!(reply.body.len(), BODY_LIMIT);
        // The connection was closed, not drained: the server could not send it all.
        // (Polled: the connection's task must run on this runtime meanwhile.)
        let mut sent_all = None;
        for _ in 0..3000 {
            if let Ok(sent) = finished.try_recv() {
                sent_all = Some(sent);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let sent_all = sent_all.expect("the server ended within 30 s");
        assert!(!sent_all, "the agent read the whole 50 MiB");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_failure_that_names_the_reason() {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let url = url::Url::parse(&format!("http://127.0.0.1:{port}/")).expect("url");
        match endpoint(&url).post(HeaderMap::new(), Bytes::new()).await {
            Err(Failure::Connect(reason)) => assert!(reason.contains("refused"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").expect("write");
        let url = url::Url::parse("https://erp.example/hooks").expect("url");
        let files = TlsFiles {
            ca_file: Some(&ca),
            client_cert: None,
        };
        let err = Endpoint::new(&url, files, Duration::from_secs(5), Duration::from_secs(5), 4)
            .err()
            .expect("refused");
        assert!(err.contains("ca.pem") && err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn user_info_is_redacted_in_every_url_shown() {
        assert_eq!(
            redact_userinfo("http://user:s3cretpass@proxy.example:3128"),
            "http://user:***@proxy.example:3128/"
        );
        assert_eq!(
            redact_userinfo("http://t0ken@proxy.example/"),
            "http://***@proxy.example/"
        );
        assert_eq!(
            redact_userinfo("http://proxy.example:3128/"),
            "http://proxy.example:3128/"
        );
        // Texts that do not parse: cut at the last '@'.
        assert_eq!(redact_userinfo("http://user:s3cretpass@[::1"), "http://user:***@[::1");
        assert_eq!(redact_userinfo("user:s3cret@pass@proxy:99999"), "user:***@proxy:99999");
        assert_eq!(redact_userinfo("s3cretpass@"), "***@");
        assert_eq!(redact_userinfo("no credentials"), "no credentials");
        let url = url::Url::parse("https://erp:s3cretpass@erp.example/hooks?code=s3cretpass#x").expect("url");
        assert_eq!(shown_url(&url), "https://erp:***@erp.example/hooks");
    }

    #[test]
    fn a_proxy_variable_that_does_not_parse_is_named_without_its_password() {
        let url = url::Url::parse("https://erp.example/hooks").expect("url");
        for value in [
            "http://user:s3cretpass@[::1",
            "http://user:s3cretpass@proxy:99999",
            "socks5://user:s3cretpass@proxy:1080",
            "user:s3cretpass@",
        ] {
            let env = |name: &str| (name == "HTTPS_PROXY").then(|| value.to_string());
            let err = proxy_from(&url, env)
                .err()
                .unwrap_or_else(|| panic!("{value}: refused"));
            assert!(err.starts_with("HTTPS_PROXY=") && err.contains("***"), "{err}");
            assert!(!err.contains("s3cretpass"), "{err}");
        }
        // A good one: its credentials go in Proxy-Authorization, never shown.
        let env = |name: &str| (name == "HTTPS_PROXY").then(|| "http://user:s3cretpass@127.0.0.1:3128".to_string());
        let proxy = proxy_from(&url, env).expect("parses").expect("a proxy");
        assert_eq!(proxy.shown, "127.0.0.1:3128");
        assert!(proxy.authorization.is_some());
    }

    #[test]
    fn url_errors_do_not_show_the_password_or_the_query() {
        let url = url::Url::parse("ftp://erp:s3cretpass@erp.example/hooks?code=s3cretpass").expect("url");
        let files = TlsFiles {
            ca_file: None,
            client_cert: None,
        };
        let err = Endpoint::new(&url, files, Duration::from_secs(5), Duration::from_secs(5), 4)
            .err()
            .expect("refused");
        assert!(
            err.contains("ftp://erp:***@erp.example/hooks") && err.contains("not http or https"),
            "{err}"
        );
        assert!(!err.contains("s3cretpass"), "{err}");
    }

    #[test]
    fn no_proxy_names_hosts_and_the_domains_they_are_in() {
        assert!(no_proxy_covers("*", "erp.example.com"));
        assert!(no_proxy_covers("localhost, example.com", "erp.example.com"));
        assert!(no_proxy_covers(".example.com", "erp.example.com"));
        assert!(no_proxy_covers("*.example.com", "erp.example.com"));
        assert!(no_proxy_covers("ERP.example.com", "erp.example.com"));
        assert!(no_proxy_covers("10.0.0.5", "10.0.0.5"));
        assert!(!no_proxy_covers("ample.com", "erp.example.com"));
        assert!(!no_proxy_covers("", "erp.example.com"));
        assert!(!no_proxy_covers("10.0.0.5", "10.0.0.50"));
    }
}
