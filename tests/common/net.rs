//! Loopback TCP: free ports for servers a test starts later, waiting for a
//! server to listen, a connection reset (RST) by a peer.

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::wait_until;

/// A free TCP port on loopback, for a server a test starts later (the agent's
/// ingest and admin, chromedriver, `receive`, s_server).
///
/// Not one the kernel hands out for port 0: that range is also where every
/// outgoing connection takes its local port, so between this call and the
/// server's bind a client connection (of this or a parallel test) could take
/// it ("Address already in use"). Instead a port below the ephemeral range,
/// never the same one twice in a test process, checked free by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000; // 20000-31999, below Linux's 32768-60999
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Each test process starts somewhere else in the span (suites of other
    // checkouts may run at the same time), then walks through it.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(2_654_435_761) ^ rand_seed()) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}-{}", LOW + SPAN - 1)
}

fn rand_seed() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// Waits until something accepts connections on `port` (a server a test
/// started).
pub fn wait_for_port(port: u16, what: &str) {
    wait_until(Duration::from_secs(30), what, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// Sends an RST instead of a FIN when `stream` (and every clone of it) is
/// dropped: a peer that resets the connection.
pub fn reset_on_drop(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized option.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
