//! The `store_outbox_reqwest` backend (`RUSTFLAGS="--cfg store_outbox_reqwest"`) of [`Endpoint`]: reqwest 0.12 behind the
//! hand-written client's API, so that the two can be measured against each
//! other with nothing else in the agent changed (docs/BENCHMARKS.md,
//! "Session 13"). Off by default.
//!
//! What is kept the same: the TLS config (the shared `tls.rs`: ring, the
//! web roots, `ca_file`, the client certificate, HTTP/1.1 by ALPN), the
//! proxy the environment names and its `NO_PROXY` (the shared `proxy.rs`,
//! handed to reqwest as its only proxy, reqwest's own environment lookup
//! off), the pool (as many idle connections as requests in flight, closed
//! after 60 s unused), no redirects, the request and connect timeouts, and
//! at most [`BODY_LIMIT`] of an answer's body read.
//!
//! What reqwest cannot match:
//! - **The head limit.** reqwest 0.12 exposes no HTTP/1 head size: hyper's
//!   defaults apply, a read buffer of about 408 KiB and 100 headers. A head
//!   of 100 headers or more is still a failed attempt (with the same text);
//!   one of 64-408 KiB in fewer headers is an answer like any other.
//! - **Plain `http://` through a proxy** is forwarded in absolute form
//!   (`POST http://host/path`), not tunnelled with `CONNECT`; `https://` is
//!   tunnelled as before.

use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::Method;

use super::proxy::{proxy_for, shown_url, Proxy};
use super::tls::tls_for;
use super::{Failure, Reply, TlsFiles, BODY_LIMIT, HEADERS_LIMIT, HEAD_LIMIT, IDLE_TIMEOUT};
use crate::error_text::innermost;

/// One endpoint's connections: a reqwest client of its own (its own pool,
/// TLS config and proxy) and the URL every request goes to.
pub struct Endpoint {
    client: reqwest::Client,
    /// The subscription's URL without user info or fragment: reqwest would
    /// turn user info into an `Authorization` header, which the hand-written
    /// client never sends.
    url: url::Url,
    proxy: Option<Proxy>,
    connect_timeout: Duration,
}

impl Endpoint {
    /// The endpoint of `url` (`http://` or `https://`), or what is wrong
    /// with the URL or the TLS files: the same checks, in the same order and
    /// words, as the hand-written client.
    pub fn new(
        url: &url::Url,
        tls_files: TlsFiles<'_>,
        timeout: Duration,
        connect_timeout: Duration,
        max_idle: usize,
    ) -> Result<Self, String> {
        let shown = shown_url(url);
        if url.host().is_none() {
            return Err(format!("{shown}: no host"));
        }
        url.port_or_known_default().ok_or_else(|| format!("{shown}: no port"))?;
        let (_, config) = tls_for(url, &shown, tls_files)?;
        let proxy = proxy_for(url)?;
        // reqwest reads the proxy variables itself unless told not to; its
        // reading of `NO_PROXY` differs from ours, so ours decides.
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(max_idle.max(1))
            .pool_idle_timeout(IDLE_TIMEOUT)
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http1_only();
        if let Some(config) = config {
            builder = builder.use_preconfigured_tls(config);
        }
        if let Some(p) = &proxy {
            let mut via = reqwest::Proxy::all(format!("http://{}:{}", p.host, p.port))
                .map_err(|e| format!("proxy {}: {}", p.shown, innermost(&e)))?;
            if let Some(authorization) = &p.authorization {
                let mut value =
                    HeaderValue::from_str(authorization).map_err(|e| format!("proxy {}: credentials: {e}", p.shown))?;
                value.set_sensitive(true);
                via = via.custom_http_auth(value);
            }
            builder = builder.proxy(via);
        }
        let client = builder.build().map_err(|e| format!("{shown}: {}", innermost(&e)))?;
        let mut target = url.clone();
        // Both only fail for URLs that cannot have user info (no host),
        // refused above.
        let _ = target.set_username("");
        let _ = target.set_password(None);
        target.set_fragment(None);
        Ok(Endpoint {
            client,
            url: target,
            proxy,
            connect_timeout,
        })
    }

    /// The proxy requests go through (`host:port`), if the environment
    /// names one for this endpoint.
    pub fn proxy(&self) -> Option<&str> {
        self.proxy.as_ref().map(|p| p.shown.as_str())
    }

    /// POSTs `body` with `headers`, on an idle connection if there is one,
    /// and reads the answer; all of it within the timeout.
    pub async fn post(&self, headers: HeaderMap, body: Bytes) -> Result<Reply, Failure> {
        self.request(Method::POST, headers, body).await
    }

    /// Sends one request: see [`Endpoint::post`].
    pub async fn request(&self, method: Method, headers: HeaderMap, body: Bytes) -> Result<Reply, Failure> {
        let sent = self
            .client
            .request(method, self.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await;
        let mut response = sent.map_err(|e| self.failure(&e))?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(None) => break,
                Ok(Some(data)) => {
                    body.extend_from_slice(&data[..data.len().min(BODY_LIMIT - body.len())]);
                    // Dropping the response before its end closes the
                    // connection (hyper does not drain it): the rest is
                    // never read.
                    if body.len() >= BODY_LIMIT {
                        break;
                    }
                }
                Err(e) if e.is_timeout() => return Err(Failure::Timeout),
                Err(e) => {
                    let cut_off = Reply {
                        status,
                        headers,
                        body: Bytes::from(body),
                    };
                    return Err(Failure::Broken(Some(Box::new(cut_off)), innermost(&e)));
                }
            }
        }
        Ok(Reply {
            status,
            headers,
            body: Bytes::from(body),
        })
    }

    /// What a failed `send` was, in the hand-written client's terms. The
    /// texts are the innermost cause only: reqwest's own text names the URL,
    /// which may carry a token in its query.
    fn failure(&self, e: &reqwest::Error) -> Failure {
        if e.is_connect() {
            if e.is_timeout() {
                return Failure::Connect(format!(
                    "no connection within {}",
                    humantime::format_duration(self.connect_timeout)
                ));
            }
            if is_tls(e) {
                return Failure::Tls(innermost(e));
            }
            return Failure::Connect(match &self.proxy {
                Some(p) => format!("proxy {}: {}", p.shown, innermost(e)),
                None => innermost(e),
            });
        }
        if e.is_timeout() {
            return Failure::Timeout;
        }
        if head_too_large(e) {
            return Failure::Broken(
                None,
                format!(
                    "the answer's head is over {} KiB or {HEADERS_LIMIT} headers; not read",
                    HEAD_LIMIT / 1024
                ),
            );
        }
        Failure::Broken(None, innermost(e))
    }
}

/// Whether a rustls error is in `e`'s causes. tokio-rustls wraps it in an
/// `io::Error`, whose `source()` skips the error it holds: so each
/// `io::Error` is looked into as well.
fn is_tls(e: &reqwest::Error) -> bool {
    let mut cause = e.source();
    while let Some(c) = cause {
        if c.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

/// Whether hyper refused the answer's head as too large (its buffer or its
/// header count).
fn head_too_large(e: &reqwest::Error) -> bool {
    let mut cause = e.source();
    while let Some(c) = cause {
        if c.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse_too_large)
        {
            return true;
        }
        cause = c.source();
    }
    false
}
