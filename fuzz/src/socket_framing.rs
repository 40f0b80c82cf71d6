//! The socket's framing and parsing (`ingest::socket::{read_line, parse_line}`)
//! driven over bytes in memory, checked against a reference framer.
//!
//! Shared by the `socket_framing` fuzz target and by the main crate's
//! `tests/fuzz_regressions.rs` (which includes this file with `#[path]`), so a
//! saved input is replayed through exactly the same checks. It needs only
//! `store_outbox` and `tokio`.
//!
//! The input is the byte stream a producer wrote, as is (the seed corpus is
//! plain NDJSON). How it is cut into reads, the `BufReader`'s capacity and the
//! line limit come from a hash of the input, in five settings per input (see
//! [`settings`]), so every mutation also tries other cuts.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use store_outbox::event::{ErrorCode, NewEvent};
use store_outbox::ingest::socket::{parse_line, read_line, Line};
use tokio::io::{AsyncRead, BufReader, ReadBuf};

/// The socket's default `ingest.max_event_bytes`.
const DEFAULT_MAX: u64 = 1024 * 1024;
/// The socket's `BufReader` capacity.
const SOCKET_CAPACITY: usize = 64 * 1024;

/// What [`read_line`] produced for one line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Frame {
    Text(Vec<u8>),
    TooLong(u64),
}

/// One way of delivering the stream.
#[derive(Debug)]
struct Setting {
    /// The line limit given to `read_line`.
    max: u64,
    /// The `BufReader`'s capacity.
    capacity: usize,
    /// Sizes of the reads the stream answers, cycled; 0 answers `Pending` once.
    reads: Vec<usize>,
}

/// Checks one input: frames it in every setting, compares with the reference,
/// and parses each line as the socket does, calling `on_event(line, event)`
/// for each accepted one. Panics on any violated invariant.
pub fn check_stream(data: &[u8], on_event: &mut dyn FnMut(&[u8], &NewEvent)) {
    for setting in settings(data) {
        let frames = frame(data, &setting);
        let expected = reference(data, setting.max);
        if frames != expected {
            let at = frames.iter().zip(&expected).take_while(|(a, b)| a == b).count();
            panic!(
                "framing differs from splitting on \\n, at line {at} of {} (reference has {}): got {:?}, expected {:?}; {setting:?}",
                frames.len(),
                expected.len(),
                frames.get(at).map(short),
                expected.get(at).map(short),
            );
        }
        // Parsing depends on the limit only (lines are never over it), so parse
        // once, in the socket's own setting.
        if setting.max == DEFAULT_MAX {
            for f in &frames {
                if let Frame::Text(line) = f {
                    check_parse(line, setting.max, on_event);
                }
            }
        }
    }
}

/// What the socket answers a [`Line::Text`]: an event or an error about the line.
fn check_parse(line: &[u8], max: u64, on_event: &mut dyn FnMut(&[u8], &NewEvent)) {
    match parse_line(line, max) {
        Ok(event) => on_event(line, &event),
        Err(e) => {
            assert!(!e.message.is_empty(), "error without a message");
            // A framed line is within the limit, so never `too_large` here.
            assert!(
                matches!(e.code, ErrorCode::InvalidJson | ErrorCode::InvalidEvent),
                "unexpected error code {:?} for a line of {} bytes (limit {max})",
                e.code,
                line.len()
            );
        }
    }
}

/// The stream framed by the code under test, checking as it goes that the
/// buffer stays within the limit.
fn frame(data: &[u8], setting: &Setting) -> Vec<Frame> {
    let stream = ChunkedReader {
        data,
        reads: &setting.reads,
        next: 0,
    };
    let mut reader = BufReader::with_capacity(setting.capacity, stream);
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let max = setting.max;
    // Twice the limit (Vec's amortised growth) plus its smallest allocation:
    // bounded by the limit, whatever the length of the lines.
    let cap_bound = max.saturating_mul(2).saturating_add(8);
    loop {
        let line = match block_on(read_line(&mut reader, &mut buf, max)) {
            Ok(line) => line,
            Err(e) => panic!("read_line failed on a stream that cannot fail: {e}"),
        };
        assert!(
            buf.len() as u64 <= max,
            "buffer holds {} bytes, the limit is {max}",
            buf.len()
        );
        assert!(
            buf.capacity() as u64 <= cap_bound,
            "buffer grew to {} bytes for a limit of {max}",
            buf.capacity()
        );
        match line {
            Line::End => break,
            Line::Text => frames.push(Frame::Text(buf.clone())),
            Line::TooLong(n) => {
                assert!(
                    buf.is_empty(),
                    "too long, yet {} bytes of it are in the buffer",
                    buf.len()
                );
                assert!(n > max, "too long at {n} bytes for a limit of {max}");
                frames.push(Frame::TooLong(n));
            }
        }
        assert!(frames.len() <= data.len() + 1, "more lines than bytes");
    }
    // The end stays the end.
    match block_on(read_line(&mut reader, &mut buf, max)) {
        Ok(Line::End) => {}
        other => panic!("after the end: {other:?}"),
    }
    frames
}

/// The stream split on `\n`, as the socket means to: one frame per
/// terminated line, plus the unterminated rest unless it is empty. `\r` is
/// part of the line (and counts towards the limit).
fn reference(data: &[u8], max: u64) -> Vec<Frame> {
    let mut pieces = data.split(|&b| b == b'\n');
    let rest = pieces.next_back().unwrap_or_default();
    let to_frame = |p: &[u8]| {
        if p.len() as u64 > max {
            Frame::TooLong(p.len() as u64)
        } else {
            Frame::Text(p.to_vec())
        }
    };
    let mut frames: Vec<Frame> = pieces.map(to_frame).collect();
    if !rest.is_empty() {
        frames.push(to_frame(rest));
    }
    frames
}

/// The settings an input is framed in: the socket's own (1 MiB limit, 64 KiB
/// buffer, short reads), a tiny limit, the limit exactly at and one below the
/// length of one of the input's lines, and a random one.
fn settings(data: &[u8]) -> Vec<Setting> {
    let mut rng = Rng::new(data);
    let lengths: Vec<u64> = data.split(|&b| b == b'\n').map(|l| l.len() as u64).collect();
    let picked = lengths[rng.below(lengths.len() as u64) as usize];
    // 1-8 read sizes up to `largest`, at least one of them not 0.
    let reads = |rng: &mut Rng, largest: u64| -> Vec<usize> {
        let mut v: Vec<usize> = (0..1 + rng.below(8)).map(|_| rng.below(largest + 1) as usize).collect();
        if v.iter().all(|&n| n == 0) {
            v.push(1);
        }
        v
    };
    vec![
        Setting {
            max: DEFAULT_MAX,
            capacity: SOCKET_CAPACITY,
            reads: reads(&mut rng, 4096),
        },
        Setting {
            max: rng.below(9),
            capacity: 1 + rng.below(4) as usize,
            reads: reads(&mut rng, 5),
        },
        Setting {
            max: picked,
            capacity: 1 + rng.below(32) as usize,
            reads: reads(&mut rng, 40),
        },
        Setting {
            max: picked.saturating_sub(1),
            capacity: 1 + rng.below(32) as usize,
            reads: reads(&mut rng, 40),
        },
        Setting {
            max: rng.below(301),
            capacity: 1 + rng.below(64) as usize,
            reads: reads(&mut rng, 100),
        },
    ]
}

/// A stream in memory answering reads of the sizes given (cycled), and
/// `Pending` (having woken its task) where the size is 0, like a socket whose
/// next bytes have not arrived yet.
struct ChunkedReader<'a> {
    data: &'a [u8],
    reads: &'a [usize],
    next: usize,
}

impl AsyncRead for ChunkedReader<'_> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let size = self.reads[self.next % self.reads.len()];
        self.next += 1;
        if size == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = size.min(out.remaining()).min(self.data.len());
        out.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// Polls a future to completion on this thread (the stream is in memory, so
/// `Pending` only means "poll again").
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// A frame for a panic message: long lines shortened.
fn short(f: &Frame) -> String {
    match f {
        Frame::Text(t) if t.len() > 80 => format!("Text({:?}… {} bytes)", String::from_utf8_lossy(&t[..80]), t.len()),
        Frame::Text(t) => format!("Text({:?})", String::from_utf8_lossy(t)),
        Frame::TooLong(n) => format!("TooLong({n})"),
    }
}

/// xorshift64*, seeded with the input's FNV-1a hash: the same input is always
/// cut the same way, and any change to it cuts it differently.
struct Rng(u64);

impl Rng {
    fn new(data: &[u8]) -> Rng {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in data {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h | 1)
    }

    fn step(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.step() % n
    }
}
