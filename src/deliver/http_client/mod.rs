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
//! "nginx as the raw limit"). This is hyper's own client connection with the
//! little a webhook needs on top: a pool, the timeouts, TLS, a proxy.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, HOST};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::error_text::innermost;

mod proxy;
mod subscription;
mod tls;

use proxy::{proxy_for, Proxy};
pub use proxy::{redact_userinfo, shown_url};
pub use subscription::{subscription_endpoint, subscription_headers, USER_AGENT};
use tls::tls_config;

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

/// Where requests go: the address parts of the subscription's URL.
struct Target {
    /// `host` or `[v6]`, for DNS and the `Host` header.
    host: url::Host<String>,
    port: u16,
    /// The `Host` header: the URL's authority without user info.
    authority: HeaderValue,
    /// The request target: path and query (origin form).
    path: Uri,
}

/// One endpoint's connections.
pub struct Endpoint {
    target: Target,
    proxy: Option<Proxy>,
    /// TLS for `https://`, with the server name to check.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Whole request: connecting, sending, the answer and its body.
    timeout: Duration,
    connect_timeout: Duration,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<(SendRequest<Full<Bytes>>, Instant)>>,
    max_idle: usize,
}

/// The TLS settings of a subscription.
pub struct TlsFiles<'a> {
    pub ca_file: Option<&'a std::path::Path>,
    pub client_cert: Option<(&'a std::path::Path, &'a std::path::Path)>,
}

impl Endpoint {
    /// The endpoint of `url` (`http://` or `https://`), or what is wrong
    /// with the URL or the TLS files.
    pub fn new(
        url: &url::Url,
        tls_files: TlsFiles<'_>,
        timeout: Duration,
        connect_timeout: Duration,
        max_idle: usize,
    ) -> Result<Self, String> {
        // Messages name the URL without its password or query (a token).
        let shown = shown_url(url);
        let host = match url.host() {
            Some(h) => h.to_owned(),
            None => return Err(format!("{shown}: no host")),
        };
        let port = url.port_or_known_default().ok_or_else(|| format!("{shown}: no port"))?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let authority = HeaderValue::from_str(&authority).map_err(|e| format!("{shown}: host {authority:?}: {e}"))?;
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let path: Uri = path.parse().map_err(|e| format!("{shown}: path: {e}"))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("{shown}: scheme {other:?} is not http or https")),
        };
        // The TLS files are read even for an `http://` URL: a file that is
        // missing or wrong is named now, not when the URL changes.
        let config = if https || tls_files.ca_file.is_some() || tls_files.client_cert.is_some() {
            Some(tls_config(tls_files)?)
        } else {
            None
        };
        let tls = match config {
            Some(config) if https => {
                let name = match &host {
                    url::Host::Domain(d) => ServerName::try_from(d.clone()).map_err(|e| format!("{shown}: {e}"))?,
                    url::Host::Ipv4(ip) => ServerName::IpAddress((*ip).into()),
                    url::Host::Ipv6(ip) => ServerName::IpAddress((*ip).into()),
                };
                Some((TlsConnector::from(Arc::new(config)), name))
            }
            _ => None,
        };
        let proxy = proxy_for(url)?;
        Ok(Endpoint {
            target: Target {
                host,
                port,
                authority,
                path,
            },
            proxy,
            tls,
            timeout,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
        })
    }

    /// The proxy requests go through (`host:port`), if the environment
    /// names one for this endpoint.
    pub fn proxy(&self) -> Option<&str> {
        self.proxy.as_ref().map(|p| p.shown.as_str())
    }

    /// POSTs `body` with `headers` (plus `Host`), on an idle connection if
    /// there is one, and reads the answer; all of it within the timeout.
    pub async fn post(&self, headers: HeaderMap, body: Bytes) -> Result<Reply, Failure> {
        self.request(Method::POST, headers, body).await
    }

    /// Sends one request: see [`Endpoint::post`].
    pub async fn request(&self, method: Method, headers: HeaderMap, body: Bytes) -> Result<Reply, Failure> {
        match tokio::time::timeout(self.timeout, self.exchange(method, headers, body)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout),
        }
    }

    async fn exchange(&self, method: Method, mut headers: HeaderMap, body: Bytes) -> Result<Reply, Failure> {
        headers.insert(HOST, self.target.authority.clone());
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = self.target.path.clone();
        *request.headers_mut() = headers;
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            if let Err(e) = sender.ready().await {
                if reused {
                    continue; // closed while idle: another one
                }
                return Err(Failure::Connect(e.to_string()));
            }
            let response = match sender.try_send_request(request).await {
                Ok(response) => response,
                Err(mut e) => match e.take_message() {
                    // Not sent: the idle connection had been closed. Sending
                    // it on another one cannot make a duplicate.
                    Some(unsent) if reused => {
                        request = unsent;
                        continue;
                    }
                    _ if e.error().is_parse_too_large() => {
                        return Err(Failure::Broken(
                            None,
                            format!(
                                "the answer's head is over {} KiB or {HEADERS_LIMIT} headers; not read",
                                HEAD_LIMIT / 1024
                            ),
                        ))
                    }
                    _ => return Err(Failure::Broken(None, innermost(e.error()))),
                },
            };
            let (parts, mut incoming) = response.into_parts();
            let mut body = Vec::new();
            let mut whole = true;
            loop {
                match incoming.frame().await {
                    None => break,
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            body.extend_from_slice(&data[..data.len().min(BODY_LIMIT - body.len())]);
                            if body.len() >= BODY_LIMIT {
                                whole = false;
                                break;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        let cut_off = Reply {
                            status: parts.status,
                            headers: parts.headers,
                            body: Bytes::from(body),
                        };
                        return Err(Failure::Broken(Some(Box::new(cut_off)), innermost(&e)));
                    }
                }
            }
            if whole {
                self.checkin(sender);
            }
            return Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body: Bytes::from(body),
            });
        }
    }

    /// The most recently used idle connection still open, if any.
    fn checkout(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    fn checkin(&self, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(s, since)| !s.is_closed() && since.elapsed() < IDLE_TIMEOUT);
        if idle.len() < self.max_idle {
            idle.push((sender, Instant::now()));
        }
    }

    /// A new connection (DNS, TCP, TLS, the HTTP/1.1 handshake) within the
    /// connect timeout; its reading and writing run on a task of their own.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        let within = self.connect_timeout;
        let connected = tokio::time::timeout(within, async {
            let tcp = match &self.proxy {
                None => tcp(&self.target.host, self.target.port).await?,
                Some(proxy) => self.tunnel(proxy).await?,
            };
            let _ = tcp.set_nodelay(true);
            let stream = match &self.tls {
                None => Stream::Plain(tcp),
                Some((connector, name)) => Stream::Tls(Box::new(
                    connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| Failure::Tls(e.to_string()))?,
                )),
            };
            handshake(stream).await
        })
        .await;
        match connected {
            Ok(result) => result,
            Err(_) => Err(Failure::Connect(format!(
                "no connection within {}",
                humantime::format_duration(within)
            ))),
        }
    }

    /// A TCP connection to the endpoint through `proxy`: `CONNECT`, and
    /// the proxy's `200`.
    async fn tunnel(&self, proxy: &Proxy) -> Result<TcpStream, Failure> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let via = |what: String| Failure::Connect(format!("proxy {}: {what}", proxy.shown));
        let mut tcp = tcp(&proxy.host, proxy.port).await.map_err(|f| match f {
            Failure::Connect(reason) => via(reason),
            other => other,
        })?;
        let target = format!("{}:{}", self.target.host, self.target.port);
        let mut hello = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(authorization) = &proxy.authorization {
            hello.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
        }
        hello.push_str("\r\n");
        tcp.write_all(hello.as_bytes()).await.map_err(|e| via(e.to_string()))?;
        // The proxy's answer: a status line and headers, no body.
        let mut answer = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            if answer.len() > 8192 {
                return Err(via("an answer to CONNECT longer than 8 KiB".into()));
            }
            match tcp.read(&mut byte).await {
                Ok(0) => return Err(via("closed the connection after CONNECT".into())),
                Ok(_) => answer.push(byte[0]),
                Err(e) => return Err(via(e.to_string())),
            }
        }
        let text = String::from_utf8_lossy(&answer);
        let status_line = text.lines().next().unwrap_or_default();
        match status_line.split_whitespace().nth(1) {
            Some(code) if code.starts_with('2') => Ok(tcp),
            _ => Err(via(format!("CONNECT {target} answered {status_line:?}"))),
        }
    }
}

/// TCP to the first of the host's addresses that answers.
async fn tcp(host: &url::Host<String>, port: u16) -> Result<TcpStream, Failure> {
    let addrs: Vec<SocketAddr> = match host {
        url::Host::Ipv4(ip) => vec![SocketAddr::new((*ip).into(), port)],
        url::Host::Ipv6(ip) => vec![SocketAddr::new((*ip).into(), port)],
        url::Host::Domain(name) => tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| Failure::Connect(format!("{name}: {e}")))?
            .collect(),
    };
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(Failure::Connect(match last {
        Some(e) => e.to_string(),
        None => format!("{host}: no address"),
    }))
}

/// A connection's byte stream: one type for both, so that hyper's client
/// is built once into the binary, not once per stream type.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The HTTP/1.1 handshake on `stream`, its connection driven by a task that
/// ends when the connection closes or its last sender is dropped.
async fn handshake(stream: Stream) -> Result<SendRequest<Full<Bytes>>, Failure> {
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_header_size(HEAD_LIMIT)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Connect(innermost(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "webhook connection ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::proxy::{no_proxy_covers, proxy_from};
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};

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
        for (what, head) in [
            ("100 KiB in 50 headers", head_with_headers(50, 2048)),
            ("5,000 headers", head_with_headers(5_000, 1)),
            ("one header of 70 KiB", head_with_headers(1, 70 * 1024)),
        ] {
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
