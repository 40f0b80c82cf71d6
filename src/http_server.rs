//! Serving a router on a TCP listener, the same way for both of the agent's
//! HTTP servers (ingest and admin), against clients that never finish: a
//! request head must be in within [`HEAD_TIMEOUT`] (also what an idle
//! keep-alive connection gets before its next request), at most
//! [`MAX_CONNECTIONS`] connections at once (more wait in the kernel's listen
//! backlog, not in memory), and on shutdown the requests in progress are
//! answered before the server returns.
//!
//! `axum::serve` has neither limit: 100 connections holding half-sent heads
//! were all still open after 32 s.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;

use crate::shutdown::Shutdown;

/// How long a client has to send a request head (the contract's 10 s).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once per server (the contract's 256).
pub const MAX_CONNECTIONS: usize = 256;

/// Serves `app` on `listener` until `shutdown`; `what` names the server in
/// the log.
pub async fn serve(listener: TcpListener, app: Router, mut shutdown: Shutdown, what: &'static str) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut full_logged = false;
    loop {
        // A permit first: at the cap, connections wait in the backlog.
        let permit = if let Ok(permit) = permits.clone().try_acquire_owned() {
            full_logged = false;
            permit
        } else {
            if !full_logged {
                tracing::warn!(
                    server = what,
                    limit = MAX_CONNECTIONS,
                    "connection limit reached; new connections wait until one closes"
                );
                full_logged = true;
            }
            tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = shutdown.wait() => break,
            }
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(server = what, error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        let (app, stop) = (app.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, app, stop, what).await;
        });
    }
    // Every connection returns its permit when it ends.
    let _ = permits.acquire_many(MAX_CONNECTIONS as u32).await;
}

/// Serves one connection (any byte stream: the fuzz target feeds one from
/// memory) until the client is done, its head times out, or `stop`, when
/// the request in progress is answered and no more are taken.
pub async fn serve_connection<I>(io: I, app: Router, mut stop: Shutdown, what: &'static str)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    // half_close: a client that shuts its side after the request (`nc -N`,
    // a script) still gets its answer.
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .half_close(true);
    let service = hyper::service::service_fn(move |request| {
        let mut app = app.clone();
        async move { app.call(request).await }
    });
    let connection = http.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop.wait() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(server = what, error = %e, "connection ended");
    }
}
