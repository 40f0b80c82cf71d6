#!/usr/bin/env python3
"""Where the agent's CPU goes during a drain, by part of the agent.

Reads `perf script -F comm,tid,period,ip,sym,dso` of a profile taken with
`outbox-bench --only nginx --nginx-perf FILE` (perf record --call-graph
dwarf) and puts every sample in the first category below whose pattern is
somewhere on its stack (so the order matters: the specific before the
general). Prints the share of each, and what that is in µs per event when
given the drain's CPU µs per event.

    perf script -i FILE -F comm,tid,period,ip,sym,dso > drain.script
    python3 bench/perf-drain.py drain.script [CPU_US_PER_EVENT]
"""

import sys
from collections import Counter

# (category, substrings of a frame's symbol; any one matches)
CATEGORIES = [
    ("start-up: register the subscription, backfill its deliveries", ["register_subscriptions"]),
    ("writer thread: delivery outcomes (apply_outcome)", ["apply_outcome"]),
    ("writer thread: other (commit, fsync, checkpoint, queue)", ["WriterState", "outbox::writer"]),
    ("scheduler: catch_up_resends (its read::meta)", ["catch_up_resends"]),
    ("scheduler: read::heads (SQLite, per dispatch)", ["outbox::read::heads"]),
    ("scheduler: read::meta", ["outbox::read::meta"]),
    ("scheduler: read::pending_page", ["pending_page"]),
    ("scheduler: other", ["deliver::scheduler"]),
    ("courier: signature (HMAC-SHA256, base64)", ["signing::"]),
    ("courier: webhook body (serde_json)", ["deliver::webhook::body"]),
    ("reqwest: the URL parsed again per request (redirect policy, response URL)", ["url::parser", "url::ParseOptions"]),
    ("hyper: read the response (read, parse)", ["Http1Transaction>::parse", "poll_read", "parse_headers"]),
    ("hyper: write the request (encode, writev)", ["Http1Transaction>::encode", "poll_flush", "poll_write"]),
    ("hyper/reqwest: other (pool, dispatch, channels)", ["hyper::", "hyper_util::", "reqwest::"]),
    ("courier: other", ["deliver::courier", "deliver::webhook"]),
    ("tokio: park, epoll, wake", ["park", "epoll_wait", "unpark", "wake"]),
    ("tokio: other scheduling", ["tokio::runtime"]),
]


def samples(path):
    # perf script: a line "comm tid period" per sample, then its frames
    # ("ip symbol (dso)"), innermost first, then an empty line.
    """Yields (comm, period, [frame symbols, innermost first])."""
    head, frames = None, []
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                if head:
                    yield head[0], head[1], frames
                head, frames = None, []
            elif line[0] not in " \t":
                parts = line.split()
                period = int(parts[-1]) if parts[-1].isdigit() else 1
                head = (parts[0], period)
            else:
                parts = line.strip().split(" ", 1)
                frames.append(parts[1] if len(parts) > 1 else "")
    if head:
        yield head[0], head[1], frames


def main():
    per_event = float(sys.argv[2]) if len(sys.argv) > 2 else None
    total = 0
    by, kernel = Counter(), Counter()
    for comm, period, frames in samples(sys.argv[1]):
        total += period
        cat = next(
            (name for name, pats in CATEGORIES if any(p in fr for fr in frames for p in pats)),
            None,
        )
        if cat is None:
            inner = frames[0] if frames else "?"
            cat = f"unattributed ({comm}: {'kernel' if 'kernel' in inner else 'user'})"
        by[cat] += period
        if frames and "[kernel" in frames[0]:
            kernel[cat] += period
    print(f"{'share':>8}{'µs/event' if per_event else '':>10}  {'in kernel':>9}  category")
    for cat, p in by.most_common():
        share = p / total
        extra = f"{share * per_event:10.1f}" if per_event else ""
        print(f"{share * 100:6.1f} %{extra}  {kernel[cat] * 100 / p:7.0f} %  {cat}")
    k = sum(kernel.values()) / total
    print(f"{100.0:6.1f} %{per_event or 0:10.1f}  {k * 100:7.0f} %  all ({total} ns sampled)")


if __name__ == "__main__":
    main()
