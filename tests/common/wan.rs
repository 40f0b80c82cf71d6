//! A store's uplink between two loopback ports: a TCP proxy with a one-way
//! delay in each direction and one bandwidth cap per direction, shared by
//! every connection through it (as a DSL or 4G line is shared by all of a
//! store's connections).
//!
//! Used by the end-to-end tests (`tests/common`) and by the benchmark
//! (`bench/`, which includes this file), so both see the same link.
//!
//! How a chunk crosses: the reader of one direction reads up to
//! [`CHUNK`] bytes, books them on that direction's shared line (the line is
//! busy `bytes × 8 / bits_per_s` from when it is free, after the chunks
//! booked before), and hands them to the writer with the time they arrive:
//! when the line has sent them, plus the delay. The writer sleeps until then.
//! The queue between them is short, so a sender that outruns the line is
//! held back by TCP, as behind a real router.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Most bytes read and booked at once (about 13 ms of a 10 Mbit/s line).
pub const CHUNK: usize = 16 * 1024;
/// Chunks queued per connection and direction between reader and writer.
const QUEUE: usize = 8;

/// What the link is like.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// One-way delay, the same in each direction.
    pub delay: Duration,
    /// Bandwidth of each direction, bits per second; `None`: unlimited.
    pub bits_per_s: Option<u64>,
}

impl Link {
    /// The store uplink: 25 ms each way, 10 Mbit/s.
    pub const STORE_UPLINK: Link = Link {
        delay: Duration::from_millis(25),
        bits_per_s: Some(10_000_000),
    };

    /// How long `bytes` occupy the line.
    fn busy_for(&self, bytes: usize) -> Duration {
        match self.bits_per_s {
            Some(bps) if bps > 0 => Duration::from_nanos((bytes as u64 * 8).saturating_mul(1_000_000_000) / bps),
            _ => Duration::ZERO,
        }
    }
}

/// One direction of the line: when it is free again, and what it carried.
#[derive(Default)]
struct Line {
    /// The line is busy until then.
    free_at: Mutex<Option<Instant>>,
    /// Bytes carried so far.
    bytes: AtomicU64,
    /// Time the line was busy so far, ns (for its utilisation).
    busy_ns: AtomicU64,
}

impl Line {
    /// Books `bytes` on the line; returns when they have left it.
    fn book(&self, link: &Link, bytes: usize, now: Instant) -> Instant {
        let busy = link.busy_for(bytes);
        let mut free_at = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
        let start = free_at.map_or(now, |t| t.max(now));
        let done = start + busy;
        *free_at = Some(done);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.busy_ns.fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
        done
    }
}

/// What crossed the link so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes from the client side to the server side (the store's uplink).
    pub up_bytes: u64,
    /// Bytes from the server side back.
    pub down_bytes: u64,
    /// Time the uplink was busy sending.
    pub up_busy: Duration,
    /// Connections accepted.
    pub connections: u64,
}

/// The shared state of a running proxy.
struct Shared {
    link: Link,
    target: SocketAddr,
    up: Line,
    down: Line,
    connections: AtomicU64,
}

/// A running proxy: connect to [`Wan::addr`] to reach the target through the
/// link. Stops when dropped.
pub struct Wan {
    /// Where to connect.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Wan {
    /// Starts a proxy to `target` on a free loopback port, in its own thread
    /// and runtime.
    pub fn start(target: SocketAddr, link: Link) -> Wan {
        let shared = Arc::new(Shared {
            link,
            target,
            up: Line::default(),
            down: Line::default(),
            connections: AtomicU64::new(0),
        });
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind the link proxy");
        std_listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = std_listener.local_addr().expect("proxy address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let accept_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("wan-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                    tokio::select! {
                        _ = accept_loop(listener, accept_shared) => {}
                        _ = stopped => {}
                    }
                });
                runtime.shutdown_background();
            })
            .expect("spawn the proxy thread");
        Wan {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// A URL like `url` with its host and port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let target = self.shared.target.to_string();
        assert!(url.contains(&target), "{url} does not point at {target}");
        url.replacen(&target, &self.addr.to_string(), 1)
    }

    /// What crossed so far.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            up_bytes: self.shared.up.bytes.load(Ordering::Relaxed),
            down_bytes: self.shared.down.bytes.load(Ordering::Relaxed),
            up_busy: Duration::from_nanos(self.shared.up.busy_ns.load(Ordering::Relaxed)),
            connections: self.shared.connections.load(Ordering::Relaxed),
        }
    }

    /// The link it simulates.
    pub fn link(&self) -> Link {
        self.shared.link
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        tokio::spawn(async move {
            // The connection itself crosses the link: the client's SYN
            // takes the delay before the server sees it.
            tokio::time::sleep(shared.link.delay).await;
            let Ok(server) = TcpStream::connect(shared.target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let up = tokio::spawn(carry(client_read, server_write, shared.clone(), true));
            let down = tokio::spawn(carry(server_read, client_write, shared, false));
            let _ = tokio::join!(up, down);
        });
    }
}

/// Carries one direction of one connection across its line.
async fn carry(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: Arc<Shared>,
    upstream: bool,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let reader_shared = shared.clone();
    let reader = tokio::spawn(async move {
        let line = if upstream {
            &reader_shared.up
        } else {
            &reader_shared.down
        };
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let left_line = line.book(&reader_shared.link, n, Instant::now());
            if tx
                .send((left_line + reader_shared.link.delay, buf[..n].to_vec()))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    while let Some((arrives, bytes)) = rx.recv().await {
        tokio::time::sleep_until(arrives).await;
        if to.write_all(&bytes).await.is_err() {
            break;
        }
    }
    // The other side closed: pass the close on (after the data before it).
    let _ = to.shutdown().await;
    reader.abort();
}
