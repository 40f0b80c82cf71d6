//! Who may use the agent's HTTP servers, checked before any route: the
//! `Host` header against DNS rebinding (a web page whose name is made to
//! resolve to 127.0.0.1 sends its own name as `Host`), and `Origin` against
//! web pages on the store PC (a browser sends `Origin` with every POST a
//! page makes, even a `no-cors` one, which needs no preflight).
//!
//! Ingest refuses any request with an `Origin` (no page may post events);
//! admin refuses a POST whose `Origin` is not the admin page itself (its
//! mutations need the token too). Refusals are logged at most once a
//! minute per server, with their count, so a page retrying in a loop cannot
//! flood the journal.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// What a server does with an `Origin` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginRule {
    /// Any request with one is refused (ingest).
    RefuseAll,
    /// A POST with one is refused unless it is this server's own page
    /// (admin: the page's resend form).
    SameOriginPosts,
}

/// The checks of one server.
pub struct Guard {
    /// Names the server in the log.
    what: &'static str,
    /// The address it listens on (the real port, once bound).
    listen: SocketAddr,
    /// Off loopback by the operator's choice (`*allow_remote`): any IP
    /// address is a valid `Host` (rebinding needs a name, never an address).
    any_ip: bool,
    origins: OriginRule,
    /// Refusals since the last log line, and when that was (ms).
    refused: AtomicU64,
    logged_at_ms: AtomicI64,
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// 403 or 421.
    pub status: StatusCode,
    /// `forbidden_origin` or `wrong_host`.
    pub code: &'static str,
    /// For the client.
    pub message: String,
}

impl Guard {
    /// The checks for a server listening on `listen`.
    pub fn new(what: &'static str, listen: SocketAddr, allow_remote: bool, origins: OriginRule) -> Arc<Guard> {
        Arc::new(Guard {
            what,
            listen,
            any_ip: allow_remote,
            origins,
            refused: AtomicU64::new(0),
            logged_at_ms: AtomicI64::new(0),
        })
    }

    /// Whether `host` (a `Host` header) names this server: the listen
    /// address, `localhost`, `127.0.0.1` or `[::1]`, with its port (no port
    /// only when it is 80); with `allow_remote`, any IP address too.
    pub fn host_ok(&self, host: &str) -> bool {
        let host = host.trim();
        let (name, port) = match host.strip_prefix('[') {
            Some(rest) => match rest.split_once(']') {
                Some((name, after)) => (name, after.strip_prefix(':')),
                None => return false,
            },
            None => match host.rsplit_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (host, None),
            },
        };
        let port_ok = match port {
            // RFC 3986: port = *DIGIT, so "07391" is 7391, but "+7391"
            // (which u16's parser takes) is no port at all.
            Some(p) => {
                !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && p.parse::<u16>().ok() == Some(self.listen.port())
            }
            None => self.listen.port() == 80,
        };
        if !port_ok {
            return false;
        }
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        match name.parse::<IpAddr>() {
            Ok(ip) => {
                self.any_ip
                    || ip == self.listen.ip()
                    || ip == IpAddr::from([127, 0, 0, 1])
                    || ip == IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
            }
            Err(_) => false,
        }
    }

    /// Checks a request's head.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
        // Exactly one: with two, a proxy in front may have read the other.
        let mut hosts = headers.get_all(header::HOST).iter();
        let host = match (hosts.next(), hosts.next()) {
            (Some(one), None) => one.to_str().ok(),
            _ => None,
        };
        match host {
            Some(h) if self.host_ok(h) => {}
            _ => {
                return Err(Refusal {
                    status: StatusCode::MISDIRECTED_REQUEST,
                    code: "wrong_host",
                    message: format!(
                        "Host {:?} is not this agent's address: use 127.0.0.1:{port}, localhost:{port} or \
                         [::1]:{port} (a name that only resolves here is how a web page reaches loopback)",
                        host.unwrap_or(""),
                        port = self.listen.port()
                    ),
                });
            }
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let refuse = match self.origins {
            OriginRule::RefuseAll => true,
            OriginRule::SameOriginPosts => {
                *method == Method::POST
                    && origin
                        .to_str()
                        .ok()
                        .and_then(|o| o.strip_prefix("http://"))
                        .is_none_or(|o| Some(o) != host)
            }
        };
        if refuse {
            return Err(Refusal {
                status: StatusCode::FORBIDDEN,
                code: "forbidden_origin",
                message: format!(
                    "a request from a web page (Origin {:?}) is refused: {}",
                    String::from_utf8_lossy(origin.as_bytes()),
                    match self.origins {
                        OriginRule::RefuseAll => "events come from producers, never from a browser",
                        OriginRule::SameOriginPosts => "only the status page itself may post here",
                    }
                ),
            });
        }
        Ok(())
    }

    /// Counts a refusal and logs, at most once a minute, how many there were.
    fn note(&self, refusal: &Refusal) {
        let count = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = crate::outbox::now_ms();
        let last = self.logged_at_ms.load(Ordering::Relaxed);
        if now - last >= 60_000
            && self
                .logged_at_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.refused.fetch_sub(count, Ordering::Relaxed);
            tracing::warn!(
                server = self.what,
                refused = count,
                code = refusal.code,
                "refused requests (at most one line a minute): {}",
                refusal.message
            );
        }
    }
}

/// The middleware: runs [`Guard::check`] before the router.
pub async fn enforce(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    match guard.check(request.method(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            guard.note(&refusal);
            let body = serde_json::json!({"error": {"code": refusal.code, "message": refusal.message}});
            (
                refusal.status,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        map
    }

    #[test]
    fn only_this_agents_own_names_with_its_port_are_hosts() {
        let g = Guard::new(
            "t",
            "127.0.0.1:7390".parse().expect("addr"),
            false,
            OriginRule::RefuseAll,
        );
        for ok in [
            "127.0.0.1:7390",
            "localhost:7390",
            "LocalHost:7390",
            "[::1]:7390",
            "localhost:07390",
        ] {
            assert!(g.host_ok(ok), "{ok}");
        }
        for bad in [
            "attacker.example:7390",
            "attacker.example",
            "127.0.0.1",
            "127.0.0.1:7391",
            "localhost",
            "10.0.0.5:7390",
            "[::1]",
            "[::1:7390",
            "localhost.:7390",
            "127.0.0.1:7390:7390",
            "localhost:+7390",
            "localhost:",
            "localhost: 7390",
            "",
        ] {
            assert!(!g.host_ok(bad), "{bad}");
        }
        let remote = Guard::new("t", "0.0.0.0:7390".parse().expect("addr"), true, OriginRule::RefuseAll);
        assert!(remote.host_ok("10.0.0.5:7390") && remote.host_ok("[fe80::1]:7390"));
        assert!(!remote.host_ok("pos-store.example:7390"), "names are rebindable");
    }

    #[test]
    fn ingest_refuses_every_origin_admin_only_foreign_posts() {
        let ingest = Guard::new(
            "i",
            "127.0.0.1:7390".parse().expect("addr"),
            false,
            OriginRule::RefuseAll,
        );
        let host = ("host", "127.0.0.1:7390");
        assert_eq!(ingest.check(&Method::POST, &headers(&[host])), Ok(()));
        let e = ingest
            .check(&Method::POST, &headers(&[host, ("origin", "http://127.0.0.1:7390")]))
            .expect_err("origin");
        assert_eq!((e.status, e.code), (StatusCode::FORBIDDEN, "forbidden_origin"));
        assert!(ingest
            .check(&Method::POST, &headers(&[host, ("origin", "null")]))
            .is_err());
        let e = ingest.check(&Method::POST, &headers(&[])).expect_err("no host");
        assert_eq!((e.status, e.code), (StatusCode::MISDIRECTED_REQUEST, "wrong_host"));

        let admin = Guard::new(
            "a",
            "127.0.0.1:7391".parse().expect("addr"),
            false,
            OriginRule::SameOriginPosts,
        );
        let host = ("host", "127.0.0.1:7391");
        let own = ("origin", "http://127.0.0.1:7391");
        assert_eq!(admin.check(&Method::POST, &headers(&[host, own])), Ok(()));
        assert_eq!(
            admin.check(&Method::GET, &headers(&[host, ("origin", "http://evil.example")])),
            Ok(())
        );
        for foreign in [
            "http://evil.example",
            "null",
            "https://127.0.0.1:7391",
            "http://localhost:7391",
        ] {
            let e = admin
                .check(&Method::POST, &headers(&[host, ("origin", foreign)]))
                .expect_err(foreign);
            assert_eq!(e.code, "forbidden_origin", "{foreign}");
        }
        let e = admin
            .check(&Method::GET, &headers(&[("host", "attacker.example:7391")]))
            .expect_err("rebinding");
        assert_eq!(e.status, StatusCode::MISDIRECTED_REQUEST);
    }
}
