//! The `http_head` target's harness: raw bytes as one client connection to
//! the agent's real HTTP servers (ingest or admin, chosen by the first
//! byte), served by `http_server::serve_connection` with the routers behind
//! their guard and a real outbox in a temporary directory. Shared with
//! `tests/fuzz_regressions.rs`.
//!
//! What must hold: an answer (or a close) within a bound, a well-formed
//! status line, and the guard's word: ingest stores nothing (answers 200)
//! unless the request named one of the agent's own hosts, had no `Origin`
//! and said `content-type: application/json`; admin answers 2xx only to
//! one of its own hosts, and a POST only with the token.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The listen address both servers pretend to have.
const INGEST: &str = "127.0.0.1:7390";
const ADMIN: &str = "127.0.0.1:7391";
/// The admin token.
pub const TOKEN: &str = "fuzz-token";

struct Harness {
    runtime: tokio::runtime::Runtime,
    ingest: axum::Router,
    admin: axum::Router,
    shutdown: store_outbox::shutdown::Shutdown,
    _trigger: store_outbox::shutdown::Trigger,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("store-outbox-fuzz-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("token"), TOKEN).expect("token file");
        let d = dir.display();
        let text = format!(
            "[agent]\ndata_dir = \"{d}/data\"\n[ingest]\nsocket = \"{d}/s.sock\"\nspool_dir = \"{d}/spool\"\n\
             [admin]\ntoken_file = \"{d}/token\"\n\
             [[subscription]]\nname = \"erp\"\nurl = \"http://127.0.0.1:9/h\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"
        );
        let path = dir.join("config.toml");
        std::fs::write(&path, &text).expect("config");
        let config = store_outbox::deliver::destinations::parse_config(&text, Some(&path)).expect("config valid");
        let mut conn = store_outbox::outbox::open_writer(&config.db_path()).expect("db");
        let subs = store_outbox::outbox::register_subscriptions(&mut conn, &config.subscriptions).expect("subs");
        let (writer, _thread) = store_outbox::outbox::writer::Writer::start(
            conn,
            &subs,
            config.storage.max_db_bytes,
            Arc::new(tokio::sync::Notify::new()),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (trigger, shutdown) = store_outbox::shutdown::channel();
        let ingest_state = Arc::new(store_outbox::ingest::http::HttpIngest {
            writer: writer.clone(),
            max_event_bytes: config.ingest.max_event_bytes,
            max_request_bytes: config.ingest.max_request_bytes,
            shutdown: shutdown.clone(),
            allow_remote: false,
        });
        let token = store_outbox::admin::load_token(&dir.join("token")).expect("token");
        let admin_state = Arc::new(store_outbox::admin::Admin {
            config: Arc::new(config),
            metrics: store_outbox::metrics::Metrics::default(),
            writer,
            token_digest: Some(token),
        });
        Harness {
            ingest: store_outbox::ingest::http::app(ingest_state, INGEST.parse().expect("addr")),
            admin: store_outbox::admin::app(admin_state, ADMIN.parse().expect("addr")),
            runtime,
            shutdown,
            _trigger: trigger,
        }
    })
}

/// The first request's head as a client would have meant it: method, and
/// the headers that decide the guard's word (names in lower case).
struct Head {
    method: String,
    host: Option<Vec<u8>>,
    /// The `Origin` header, if exactly one (`Some(empty)` for several).
    origin: Option<Vec<u8>>,
    content_type: Option<Vec<u8>>,
    authorization: Option<Vec<u8>>,
}

fn head_of(request: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(request) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let find = |name: &str| -> Vec<Vec<u8>> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.to_vec())
            .collect()
    };
    let one = |name: &str| {
        let all = find(name);
        (all.len() == 1).then(|| all[0].clone())
    };
    Some(Head {
        method: req.method.unwrap_or("").to_string(),
        host: one("host"),
        origin: match find("origin").as_slice() {
            [] => None,
            [one] => Some(one.clone()),
            _ => Some(Vec::new()),
        },
        content_type: one("content-type"),
        authorization: one("authorization"),
    })
}

/// Whether `host` is one the guard may take for a server on `listen`
/// (127.0.0.1): `localhost`, 127.0.0.1 or ::1, in any spelling an address
/// parser takes, with the listen port (digits only, leading zeros allowed
/// as RFC 3986 allows them: `localhost:07391` is port 7391).
fn own_host(host: &[u8], listen: &str) -> bool {
    let port: u16 = listen.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let Ok(text) = std::str::from_utf8(host) else {
        return false;
    };
    let text = text.trim();
    let Some((name, given)) = text.rsplit_once(':') else {
        return false;
    };
    if given.is_empty() || !given.bytes().all(|b| b.is_ascii_digit()) || given.parse::<u16>().ok() != Some(port) {
        return false;
    }
    let name = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip == std::net::Ipv4Addr::LOCALHOST || ip == std::net::Ipv6Addr::LOCALHOST)
}

/// Runs `data` (first byte: which server; the rest: the bytes a client
/// sends) and checks the answer. Panics on a violation.
pub fn check_connection(data: &[u8]) {
    let Some((selector, request)) = data.split_first() else {
        return;
    };
    let to_admin = selector & 1 == 1;
    let h = harness();
    let app = if to_admin { h.admin.clone() } else { h.ingest.clone() };
    let answer = h.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let serving = tokio::spawn(store_outbox::http_server::serve_connection(
            server,
            app,
            h.shutdown.clone(),
            "fuzz",
        ));
        let _ = client.write_all(request).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "no answer and no close within 30 s");
        let _ = serving.await;
        out
    });
    if answer.is_empty() {
        return;
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 ") || answer.starts_with(b"HTTP/1.0 "),
        "not an HTTP/1 answer: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(64)])
    );
    let status: u16 = std::str::from_utf8(&answer[9..answer.len().min(12)])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no status: {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(64)])
            )
        });
    if !(200..300).contains(&status) {
        return;
    }
    let head = head_of(request).unwrap_or_else(|| panic!("{status} to a request httparse cannot read: {request:?}"));
    let listen = if to_admin { ADMIN } else { INGEST };
    assert!(
        head.host.as_deref().is_some_and(|host| own_host(host, listen)),
        "{status} to Host {:?}",
        head.host.map(|h| String::from_utf8_lossy(&h).into_owned())
    );
    if to_admin {
        if head.method == "POST" {
            let own_origin = head.host.as_deref().map(|h| [b"http://".as_slice(), h].concat());
            assert!(
                head.origin.as_ref().is_none_or(|o| Some(o) == own_origin.as_ref()),
                "{status} to an admin POST from another origin"
            );
            let bearer = format!("Bearer {TOKEN}");
            assert!(
                head.authorization
                    .as_deref()
                    .is_some_and(|a| String::from_utf8_lossy(a).trim() == bearer),
                "{status} to an admin POST without the token"
            );
        }
    } else {
        assert!(
            head.origin.is_none(),
            "ingest answered {status} to a request with an Origin"
        );
        let json = head.content_type.as_deref().is_some_and(|t| {
            String::from_utf8_lossy(t)
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
        assert!(json, "ingest answered {status} without content-type application/json");
    }
}
