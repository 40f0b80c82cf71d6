//! The hand-written backend of [`Endpoint`] (the default): hyper's own
//! HTTP/1.1 client connection (`hyper::client::conn::http1`) with a LIFO pool
//! of keep-alive connections, the request and connect timeouts, rustls, and a
//! `CONNECT` tunnel through the environment's proxy. Why not reqwest: see the
//! parent module.

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

use super::proxy::{proxy_for, shown_url, Proxy};
use super::tls::tls_for;
use super::{Failure, Reply, TlsFiles, BODY_LIMIT, HEADERS_LIMIT, HEAD_LIMIT, IDLE_TIMEOUT};
use crate::error_text::innermost;

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
        let (https, config) = tls_for(url, &shown, tls_files)?;
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
