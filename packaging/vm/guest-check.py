#!/usr/bin/python3
"""The guest side of packaging/vm-check.sh: runs at boot in the bookworm VM
(vm-check.service) and reports on the second serial port (/dev/ttyS1), one
line per fact, which the host reads from a file:

    CHECK ok|FAIL <what>: <detail>     a check and its outcome
    INFO <text>                        a figure for the record
    ACK <event_id>                     the agent acknowledged this event
    HANDED <file> <lines>              a spool file is handed over (fsynced,
                                       renamed, directory fsynced)
    PRODUCING                          producers run: the host may cut power
    RELOAD-START <n>                   config variant n is on disk (fsynced,
                                       renamed, directory fsynced); `systemctl
                                       reload` follows
    RELOAD-DONE <n> <seconds>          `systemctl reload` returned
    DPKG-START                         `dpkg -i` of the newer package begins
    DPKG-STATUS <line>                 a line of dpkg's --status-fd
    DPKG-END <rc>                      dpkg returned
    DONE <phase> ok|FAIL               the phase is over

The phase comes from the kernel command line (vmcheck.phase=...):
    install     dpkg -i, READY, reload, KILL, STOP (watchdog), sandbox,
                backlog kept by an upgrade; then a clean reboot
    reboot      the backlog and the journal survived the reboot, then produce
                until the host cuts power
    cut         check every earlier acknowledgement, then produce again
    cut-reload  check, then produce while a reloader rewrites the config
                and runs `systemctl reload` again and again, until the host
                cuts power around or within one of them
    cut-dpkg    check, and that the agent runs the config left on disk by
                the cut; then a backlog (an endpoint that is down), producers
                and `dpkg -i` of a newer package, cut by the host during it
    final       dpkg's state after the cut (repaired as an admin would), the
                checks, the backlog kept and then delivered, the
                subscription drained; then a second agent on a small ext4
                disk (/dev/vdb) filled up
The host serves what it collected (acks.txt: ACK, HANDED and RELOAD lines) on
10.0.2.2 (vmcheck.acks=URL).
"""

import http.client
import json
import os
import random
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request

UNIT = "store-outbox"
CONFIG = "/etc/store-outbox/config.toml"
DB = "/var/lib/store-outbox/outbox.db"
SOCK = "/run/store-outbox/ingest.sock"
SPOOL = "/var/spool/store-outbox/incoming"
STATE = "/root/vm/state.json"
# The newer package that the power cut during dpkg -i interrupts.
DEB_NEWER = "/root/vm/store-outbox-3.deb"
# Events for the subscription that nobody answers before that dpkg -i.
BACKLOG = 300
DEAD = "http://127.0.0.1:9"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

OUT = open("/dev/ttyS1", "w", buffering=1)
OUT_LOCK = threading.Lock()
FAILED = []


def say(line):
    with OUT_LOCK:
        OUT.write(line + "\n")
        OUT.flush()


def check(ok, what, detail=""):
    say(f"CHECK {'ok' if ok else 'FAIL'} {what}: {detail}")
    if not ok:
        FAILED.append(what)
    return ok


def sh(*args, check_rc=True, timeout=300):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check_rc and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {r.returncode}: {r.stderr.strip()[-400:]}")
    return r


def cmdline():
    args = {}
    for word in open("/proc/cmdline").read().split():
        if word.startswith("vmcheck."):
            k, _, v = word[len("vmcheck."):].partition("=")
            args[k] = v
    return args


def wait(what, cond, timeout=180, every=0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = cond()
            if value:
                return value
        except Exception:
            pass
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def prop(name):
    return sh("systemctl", "show", "-p", name, "--value", UNIT).stdout.strip()


def active():
    return sh("systemctl", "is-active", UNIT, check_rc=False).stdout.strip() == "active"


def status():
    return json.loads(sh("store-outbox", "status", "--json").stdout)


def sub_status(name):
    return next((s for s in status()["subscriptions"] if s["name"] == name), None)


def write_config(subscriptions, note=""):
    """The config as an admin's tool should write it: a temporary file,
    fsynced, renamed, the directory fsynced (so after a power cut the file
    on disk is the last one written). A subscription is (name, url) or
    (name, url, {key: value}), each value written as JSON (an integer, a
    list of strings: TOML as well)."""
    text = open("/root/vm/config.base.toml").read()
    if note:
        text = f"# {note}\n" + text
    for name, url, *extra in subscriptions:
        text += f'\n[[subscription]]\nname = "{name}"\nurl = "{url}"\nsecret = "{SECRET}"\n'
        text += 'retry = { initial = "200ms", max = "2s" }\n'
        for key, value in (extra[0] if extra else {}).items():
            text += f"{key} = {json.dumps(value)}\n"
    tmp = CONFIG + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, CONFIG)
    fsync_dir(os.path.dirname(CONFIG))


def event(event_id, entity, n, event_type="PowerCut"):
    return {"event_id": event_id, "type": event_type, "entity": entity, "payload": {"n": n}}


def socket_send(events):
    """Pipelines events on the socket; returns one reply per event."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(SOCK)
        s.sendall("".join(json.dumps(e) + "\n" for e in events).encode())
        replies, buf = [], b""
        while len(replies) < len(events):
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("socket closed before every reply")
            buf += chunk
            *lines, buf = buf.split(b"\n")
            replies += [json.loads(l) for l in lines if l]
        return replies


def http_send(events):
    req = urllib.request.Request(
        "http://127.0.0.1:7390/v1/events",
        data=json.dumps(events).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["results"]


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hand_over_spool_file(name, lines):
    """What the README asks of producers: write under a temporary name,
    fsync the file, rename it into incoming/, fsync the directory. Only
    then is the file handed over."""
    tmp = os.path.join(SPOOL, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write("".join(json.dumps(l) + "\n" for l in lines))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(SPOOL, name))
    fsync_dir(SPOOL)


# ---- install -------------------------------------------------------------


def phase_install(args):
    receiver = args["receiver"]
    t0 = time.monotonic()
    sh("dpkg", "-i", "/root/vm/store-outbox-1.deb")
    wait("the service active", active, 120)
    check(
        prop("Type") == "notify" and active(),
        "READY reached (Type=notify, active)",
        f"{time.monotonic() - t0:.1f} s after dpkg -i; {prop('StatusText')}",
    )

    # systemctl reload applies a new subscription.
    pid = prop("MainPID")
    write_config([("central", receiver)])
    sh("systemctl", "reload", UNIT)
    central = wait("the reloaded subscription in status", lambda: sub_status("central"), 60)
    check(central["configured"] and prop("MainPID") == pid, "systemctl reload applies a new subscription",
          f"central configured, same MainPID {pid}")
    replies = socket_send([event(f"install-{i}", f"till:{i % 4}", i) for i in range(40)])
    check(all(r["ok"] for r in replies), "events acknowledged after the reload", f"{len(replies)}")
    wait("delivery to the host receiver", lambda: sub_status("central")["delivered_total"] >= 40, 120)
    check(True, "the new subscription delivers", "40 events delivered to the host's receiver")

    # SIGKILL: restarted by Restart=on-failure.
    restarts = int(prop("NRestarts"))
    t0 = time.monotonic()
    sh("systemctl", "kill", "-s", "KILL", UNIT)
    wait("a new main process", lambda: prop("MainPID") not in ("0", pid) and active(), 120)
    check(int(prop("NRestarts")) == restarts + 1, "systemctl kill -s KILL: restarted",
          f"active again after {time.monotonic() - t0:.1f} s (RestartSec=5s), NRestarts {prop('NRestarts')}")

    # SIGSTOP: no more WATCHDOG=1, killed by the watchdog and restarted.
    pid = prop("MainPID")
    t0 = time.monotonic()
    sh("systemctl", "kill", "-s", "STOP", UNIT)
    wait("a restart after the watchdog", lambda: prop("MainPID") not in ("0", pid) and active(), 180)
    elapsed = time.monotonic() - t0
    journal = sh("journalctl", "-u", UNIT, "-o", "cat", "--no-pager").stdout
    check("Watchdog timeout" in journal and elapsed <= 30 + 5 + 20, "systemctl kill -s STOP: killed by the watchdog and restarted",
          f"active again {elapsed:.1f} s after SIGSTOP (WatchdogSec=30s + RestartSec=5s), journal: 'Watchdog timeout'")

    # The sandbox, from inside the agent's own mount namespace, as its user.
    pid = prop("MainPID")
    uid = sh("id", "-u", "store-outbox").stdout.strip()
    gid = sh("id", "-g", "store-outbox").stdout.strip()

    def as_agent(script):
        return sh("nsenter", "-t", pid, "-m", "-S", uid, "-G", gid, "--", "sh", "-c", script, check_rc=False)

    for path in ("/usr/vm-check", "/home/vm-check", "/etc/vm-check", "/root/vm-check"):
        r = as_agent(f"touch {path}")
        check(r.returncode != 0, f"sandbox: the agent cannot write {path}", r.stderr.strip())
    r = as_agent("touch /var/lib/store-outbox/vm-check && rm /var/lib/store-outbox/vm-check")
    check(r.returncode == 0, "sandbox: the agent writes its state directory", r.stderr.strip())
    status_file = open(f"/proc/{pid}/status").read()
    check(re.search(r"NoNewPrivs:\s+1", status_file) is not None and re.search(r"CapEff:\s+0+\n", status_file) is not None,
          "sandbox: no new privileges, no capabilities", "NoNewPrivs 1, CapEff 0")

    # A backlog kept by an upgrade: a subscription nobody answers.
    write_config([("central", receiver), ("held", "http://127.0.0.1:9/hooks")])
    sh("systemctl", "reload", UNIT)
    wait("the held subscription", lambda: sub_status("held"), 60)
    held_ids = [f"held-{i}" for i in range(200)]
    replies = socket_send([event(i, f"till:{n % 4}", n) for n, i in enumerate(held_ids)])
    check(all(r["ok"] for r in replies), "200 events for the backlog acknowledged")
    pending = wait("the backlog in status", lambda: sub_status("held")["pending"] >= 240 and sub_status("held")["pending"], 60)
    pid = prop("MainPID")
    t0 = time.monotonic()
    sh("dpkg", "-i", "/root/vm/store-outbox-2.deb")
    # The host draws the moment of the power cut during the later dpkg -i
    # (phase cut-dpkg) from this duration.
    say(f"INFO dpkg -i upgrade took {time.monotonic() - t0:.1f} s (the restart included)")
    wait("the upgraded service", lambda: active() and prop("MainPID") not in ("0", pid), 120)
    version = sh("dpkg-query", "-W", "-f=${Version}", "store-outbox").stdout
    after = sub_status("held")["pending"]
    listed = {e["event_id"] for e in json.loads(sh("store-outbox", "events", "--json", "--subscription", "held",
                                                    "--state", "pending", "--limit", "100000").stdout)}
    check(after == pending and set(held_ids) <= listed, "dpkg -i upgrade keeps the backlog",
          f"{version}: held pending {pending} before, {after} after; events --json lists all 200")
    check_journal()
    with open(STATE, "w") as f:
        json.dump({"held_pending": pending, "held_ids": held_ids}, f)
        f.flush()
        os.fsync(f.fileno())


def check_journal():
    text = sh("journalctl", "-u", UNIT, "-o", "cat", "--no-pager").stdout
    lines = [l for l in text.splitlines() if l.strip()]
    check("\x1b[" not in text and any("store-outbox started" in l for l in lines) and any("config reloaded" in l for l in lines),
          "journald: readable logs", f"{len(lines)} lines, no colour codes, start-up and reload lines present")


# ---- after the reboot ----------------------------------------------------


def phase_reboot(args):
    wait("the service active after the reboot", active, 180)
    state = json.load(open(STATE))
    held = sub_status("held")
    listed = {e["event_id"] for e in json.loads(sh("store-outbox", "events", "--json", "--subscription", "held",
                                                    "--state", "pending", "--limit", "100000").stdout)}
    check(held["pending"] == state["held_pending"] and set(state["held_ids"]) <= listed, "a reboot keeps the backlog",
          f"held pending {held['pending']} (was {state['held_pending']})")
    previous = sh("journalctl", "-b", "-1", "-u", UNIT, "-o", "cat", "--no-pager", check_rc=False).stdout
    check("stopped" in previous or "stopping" in previous, "journald: the previous boot's log is kept",
          f"{len(previous.splitlines())} lines of the boot before, ending with a clean stop")
    # From here on only the subscription that delivers: power cuts follow.
    write_config([("central", args["receiver"])])
    sh("systemctl", "reload", UNIT)
    wait("held removed", lambda: not sub_status("held")["configured"], 60)
    produce(args)


# ---- power cuts ----------------------------------------------------------


def acked_so_far(args):
    """What the host collected from the earlier boots: ACK and HANDED lines."""
    with urllib.request.urlopen(args["acks"], timeout=60) as r:
        text = r.read().decode()
    acked, handed = [], {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "ACK":
            acked.append(parts[1])
        elif len(parts) == 3 and parts[0] == "HANDED":
            handed[parts[1]] = int(parts[2])
    return acked, handed


def verify(args):
    wait("the service active after the power cut", active, 180)
    acked, handed = acked_so_far(args)
    conn = sqlite3.connect(f"file:{DB}?mode=ro", uri=True, timeout=30)
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    check(integrity == "ok", "PRAGMA integrity_check", integrity)
    # Every acknowledged event is there: the agent says so itself.
    missing = []
    for chunk in range(0, len(acked), 500):
        ids = acked[chunk:chunk + 500]
        replies = socket_send([event(i, "resend:check", 0) for i in ids])
        missing += [i for i, r in zip(ids, replies) if not (r.get("ok") and r.get("duplicate"))]
    check(not missing, "every acknowledged event answers duplicate: true when sent again",
          f"{len(acked)} acknowledged, {len(missing)} missing {missing[:5]}")
    listed = {e["event_id"] for e in json.loads(sh("store-outbox", "events", "--json", "--subscription", "central",
                                                    "--limit", "10000000").stdout)}
    not_listed = [i for i in acked if i not in listed]
    check(not not_listed, "events --json lists every acknowledged event", f"{len(not_listed)} not listed {not_listed[:5]}")
    # Spool files: once incoming/ is empty, each handed file is in the
    # outbox exactly once (its events carry no id: a file read twice would
    # be stored twice if the agent did not keep its side), and a file the
    # host did not see handed over is there whole or not at all.
    wait("incoming/ empty", lambda: not [f for f in os.listdir(SPOOL) if not f.startswith(".")], 120)
    stored = dict(conn.execute(
        "SELECT json_extract(payload, '$.file'), COUNT(*) FROM events WHERE json_extract(payload, '$.file') IS NOT NULL GROUP BY 1"
    ).fetchall())
    bad = {f: (n, stored.get(f, 0)) for f, n in handed.items() if stored.get(f, 0) != n}
    for f, n in stored.items():
        m = re.match(r"spool-\d+-\d+-(\d+)\.ndjson$", f)
        if m and f not in handed and n != int(m.group(1)):
            bad[f] = (int(m.group(1)), n)
    failed = os.listdir("/var/spool/store-outbox/failed")
    check(not bad and not failed, "spool files neither lost after the handover nor enqueued twice",
          f"{len(handed)} handed over, {len(stored)} stored, {len(failed)} in failed/; mismatches {dict(list(bad.items())[:5])}")
    conn.close()
    return len(acked), len(handed)


def produce(args, reloads=False, upgrade=False):
    """Producers on the socket, on loopback HTTP and in the spool, until the
    power goes. Each acknowledgement is reported only after the reply.
    reloads: meanwhile a reloader rewrites the config and runs `systemctl
    reload`, again and again. upgrade: meanwhile `dpkg -i` of the newer
    package runs, and the producers ride out the restart it makes: a batch
    whose connection is refused or cut goes again with the same ids."""
    cycle = args.get("cycle", "0")
    stop = threading.Event()

    def sending(send, batch):
        try:
            return send(batch)
        except (OSError, RuntimeError, ValueError, http.client.HTTPException):
            if not upgrade:
                raise
            time.sleep(0.3)
            return None

    def socket_producer():
        n = 0
        while not stop.is_set():
            batch = [event(f"s-{cycle}-{n + i}", f"sock:{(n + i) % 8}", n + i) for i in range(25)]
            replies = sending(socket_send, batch)
            if replies is None:
                continue
            for e, r in zip(batch, replies):
                if r.get("ok"):
                    say(f"ACK {e['event_id']}")
            n += 25

    def http_producer():
        n = 0
        while not stop.is_set():
            batch = [event(f"h-{cycle}-{n + i}", f"http:{(n + i) % 8}", n + i) for i in range(20)]
            replies = sending(http_send, batch)
            if replies is None:
                continue
            for e, r in zip(batch, replies):
                if r.get("ok"):
                    say(f"ACK {e['event_id']}")
            n += 20

    def spool_producer():
        n = 0
        while not stop.is_set():
            lines = random.randint(1, 30)
            name = f"spool-{cycle}-{n:06d}-{lines}.ndjson"
            hand_over_spool_file(name, [{"type": "PowerCut", "entity": f"spool:{n % 4}",
                                         "payload": {"file": name, "line": i}} for i in range(lines)])
            say(f"HANDED {name} {lines}")
            n += 1
            time.sleep(0.05)

    def reloader():
        v = 0
        while not stop.is_set():
            v += 1
            write_config(reload_variant(v, args["receiver"]), f"vm-check config variant {v}")
            say(f"RELOAD-START {v}")
            t0 = time.monotonic()
            sh("systemctl", "reload", UNIT, timeout=120)
            say(f"RELOAD-DONE {v} {time.monotonic() - t0:.2f}")
            time.sleep(random.uniform(0, 0.5))

    targets = [socket_producer, http_producer, spool_producer] + ([reloader] if reloads else [])
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    say("PRODUCING")
    if upgrade:
        time.sleep(2)  # the producers under way
        upgrade_under_load()
    # Until the host cuts the power; a producer that dies is a failure.
    while all(t.is_alive() for t in threads):
        time.sleep(1)
    check(False, "producers run until the power cut", "a producer or the reloader thread ended")


def upgrade_under_load():
    """dpkg -i of the newer package, each line of its --status-fd on the
    serial port as it comes (the host cuts the power during the run)."""
    pid = prop("MainPID")
    r, w = os.pipe()
    log = open("/root/vm/dpkg-cut.log", "w")
    say("DPKG-START")
    t0 = time.monotonic()
    p = subprocess.Popen(["dpkg", "--status-fd", str(w), "-i", DEB_NEWER], pass_fds=(w,), stdout=log,
                         stderr=subprocess.STDOUT)
    os.close(w)

    def relay():
        with os.fdopen(r) as f:
            for line in f:
                say(f"DPKG-STATUS {line.strip()}")

    relay_thread = threading.Thread(target=relay, daemon=True)
    relay_thread.start()
    rc = p.wait()
    relay_thread.join(5)
    say(f"DPKG-END {rc}")
    took = time.monotonic() - t0
    check(rc == 0, "dpkg -i of the newer package under load", f"exit {rc} after {took:.1f} s")
    wait("the upgraded service", lambda: active() and prop("MainPID") not in ("0", pid), 120)
    say(f"INFO dpkg -i ended {took:.1f} s after it began and the power is still on; the agent restarted")


def phase_cut(args):
    acked, handed = verify(args)
    say(f"INFO verified {acked} acknowledged events and {handed} spool files after power cut {int(args['cycle']) - 1}")
    if FAILED:
        return
    produce(args)


# ---- a power cut around or within a reload --------------------------------


def reload_variant(v, receiver):
    """Config variant v of the reload cut: central's max_in_flight changes
    each time (a changed subscription: its scheduler is replaced), and a
    subscription standby comes and goes, with another url each time."""
    subs = [("central", receiver, {"max_in_flight": 2 + v % 4})]
    if v % 2:
        subs.append(("standby", f"{DEAD}/standby-{v}"))
    return subs


def phase_cut_reload(args):
    acked, handed = verify(args)
    say(f"INFO verified {acked} acknowledged events and {handed} spool files after power cut {int(args['cycle']) - 1}")
    if FAILED:
        return
    produce(args, reloads=True)


def reloads_so_far(args):
    """The RELOAD-START and RELOAD-DONE variants the host saw."""
    with urllib.request.urlopen(args["acks"], timeout=60) as r:
        lines = r.read().decode().splitlines()
    started = [int(l.split()[1]) for l in lines if l.startswith("RELOAD-START ")]
    returned = [int(l.split()[1]) for l in lines if l.startswith("RELOAD-DONE ")]
    return started, returned


def config_on_disk(args):
    """After the power cut around or within a reload: the config file is
    the last variant whose write was reported (or the one written after
    it), and the agent runs that one: the same subscriptions, urls and
    max_in_flight in status, no reload failure."""
    text = open(CONFIG).read()
    m = re.match(r"# vm-check config variant (\d+)\n", text)
    variant = int(m.group(1)) if m else None
    started, returned = reloads_so_far(args)
    last = started[-1] if started else None
    check(variant is not None and last is not None and variant in (last, last + 1),
          "after a power cut around a reload: the config on disk is the last one written",
          f"variant {variant} on disk; the host saw {len(started)} reloads start (the last {last}), "
          f"{len(returned)} return (the last {returned[-1] if returned else None})")
    want = {s["name"]: (s["url"].rstrip("/"), s.get("max_in_flight", 16)) for s in tomllib.loads(text).get("subscription", [])}

    def running():
        subs = {s["name"]: s for s in status()["subscriptions"] if s["configured"]}
        got = {n: ((s["url"] or "").rstrip("/"), s["max_in_flight"]) for n, s in subs.items()}
        return got if got == want else None

    try:
        got = wait("status to show the config on disk", running, 60)
    except RuntimeError:
        got = {s["name"]: (s["url"], s["max_in_flight"]) for s in status()["subscriptions"] if s["configured"]}
    failed = status()["reload_failed"]
    check(got == want and failed is None, "after a power cut around a reload: the agent runs the config on disk",
          f"on disk {sorted(want.items())}; status {sorted(got.items())}; reload_failed {failed}")


# ---- a power cut during dpkg -i with a backlog -------------------------------


def phase_cut_dpkg(args):
    acked, handed = verify(args)
    started, returned = reloads_so_far(args)
    say(f"INFO verified {acked} acknowledged events and {handed} spool files after power cut "
        f"{int(args['cycle']) - 1} (around reload {started[-1] if started else None})")
    config_on_disk(args)
    if FAILED:
        return
    # A backlog: a subscription nobody answers, then events for it.
    write_config(backlog_config(f"{DEAD}/backlog", args["receiver"]))
    sh("systemctl", "reload", UNIT)
    wait("the backlog subscription", lambda: sub_status("backlog")["configured"], 60)
    ids = [f"backlog-{i}" for i in range(BACKLOG)]
    replies = socket_send([event(i, f"backlog:{n % 4}", n, "Backlog") for n, i in enumerate(ids)])
    for i, r in zip(ids, replies):
        if r.get("ok"):
            say(f"ACK {i}")
    check(all(r.get("ok") for r in replies), f"{BACKLOG} events for the backlog acknowledged")
    pending = wait("the backlog in status", lambda: sub_status("backlog")["pending"] >= BACKLOG and sub_status("backlog")["pending"], 60)
    say(f"INFO backlog pending {pending} before dpkg -i of the newer package (under load)")
    produce(args, upgrade=True)


def backlog_config(backlog_url, receiver):
    """central, and backlog for the Backlog events only: a new subscription
    gets every event still in the outbox, thousands more to deliver in the
    last boot."""
    return [("central", receiver), ("backlog", backlog_url, {"events": ["Backlog"]})]


def dpkg_state():
    """dpkg's record of the package, as an admin would look at it."""
    out = sh("dpkg-query", "-W", "-f=${Status}|${Version}", "store-outbox", check_rc=False).stdout
    state, _, version = out.partition("|")
    # Its first sentence says it; the package's description follows.
    audit = " ".join(sh("dpkg", "--audit", check_rc=False).stdout.split()).split(": ")[0]
    journal = [f for f in os.listdir("/var/lib/dpkg/updates") if f.isdigit()]
    text = f"store-outbox {version} '{state}'"
    if journal:
        text += f", {len(journal)} entries in dpkg's journal (/var/lib/dpkg/updates)"
    text += f"; dpkg --audit: {audit}" if audit else "; dpkg --audit: clean"
    return state, version, bool(audit or journal), text


def backlog_pending():
    return {e["event_id"] for e in json.loads(sh("store-outbox", "events", "--json", "--subscription", "backlog",
                                                 "--state", "pending", "--limit", "10000000").stdout)}


def after_dpkg_cut(args):
    """The boot after the power cut during dpkg -i: the agent up before
    anything is repaired, what dpkg says, nothing lost, the backlog there;
    then dpkg finished as an admin would, and the backlog delivered."""
    wait("the service active after the power cut", active, 180)
    newer = sh("dpkg-deb", "-f", DEB_NEWER, "Version").stdout.strip()
    state, version, unclean, text = dpkg_state()
    check(active(), "after a power cut during dpkg -i: the agent up after the boot", f"before any repair; {text}")
    acked, handed = verify(args)
    say(f"INFO verified {acked} acknowledged events and {handed} spool files after power cut "
        f"{int(args['cycle']) - 1} (during dpkg -i)")
    # Every backlog event acknowledged before dpkg -i waits for it still.
    ids = [i for i in acked_so_far(args)[0] if i.startswith("backlog-")]
    pending = backlog_pending()
    missing = [i for i in ids if i not in pending]
    check(len(ids) == BACKLOG and not missing, "after a power cut during dpkg -i: the backlog is still there",
          f"{len(pending)} pending for backlog, {len(ids)} acknowledged for it before dpkg -i, "
          f"{len(missing)} missing {missing[:5]}")
    if state == "install ok installed" and version == newer and not unclean:
        say(f"INFO dpkg had finished before the power cut ({newer} installed): nothing to repair")
    else:
        # An admin's step: configure what was unpacked; a package whose
        # unpacking was cut (or had not begun) is installed again.
        cmd = ["dpkg", "-i", DEB_NEWER]
        if version == newer and "half-installed" not in state and "reinstreq" not in state:
            cmd = ["dpkg", "--configure", "-a"]
        r = sh(*cmd, check_rc=False)
        try:
            wait("the service active after the repair", active, 120)
        except RuntimeError:
            pass
        state, version, unclean, text = dpkg_state()
        check(r.returncode == 0 and state == "install ok installed" and version == newer and not unclean and active(),
              f"after a power cut during dpkg -i: `{' '.join(cmd)}`, run by this check as an admin would, completes the upgrade",
              f"exit {r.returncode}; {text}; the agent active")
        kept = backlog_pending()
        check(set(ids) <= kept, "after a power cut during dpkg -i: the repair keeps the backlog",
              f"{len(kept)} pending for backlog, {len(set(ids) - kept)} missing")
    # The endpoint comes up: the backlog goes out.
    write_config(backlog_config(args["receiver"], args["receiver"]))
    sh("systemctl", "reload", UNIT)
    wait("the backlog delivered", lambda: sub_status("backlog")["configured"] and sub_status("backlog")["pending"] == 0, 600, 2)
    backlog = sub_status("backlog")
    check(backlog["pending"] == 0 and backlog["parked"] == 0 and backlog["delivered_total"] >= len(ids),
          "after a power cut during dpkg -i: the backlog delivered once its endpoint is up",
          f"delivered_total {backlog['delivered_total']} (at least the {len(ids)} acknowledged for it)")


def phase_final(args):
    after_dpkg_cut(args)
    wait("central drained", lambda: sub_status("central")["pending"] == 0, 600, 2)
    central = sub_status("central")
    check(central["pending"] == 0 and central["parked"] == 0, "the subscription drained after the power cuts",
          f"delivered_total {central['delivered_total']}")
    full_data_disk()


def full_data_disk():
    """A second agent on a small real ext4 disk (/dev/vdb), filled up: the
    agent keeps running, refuses with storage_full, stores nothing it
    refused, keeps everything it acknowledged, and takes events again once
    space is freed."""
    os.makedirs("/mnt/full", exist_ok=True)
    sh("mount", "/dev/vdb", "/mnt/full")
    # As the service's user, so ext4's blocks reserved for root are not its.
    sh("chown", "store-outbox:store-outbox", "/mnt/full")
    # Ballast, freed at the end to make room again.
    with open("/mnt/full/ballast", "wb") as f:
        f.write(os.urandom(4 << 20))
        f.flush()
        os.fsync(f.fileno())
    config = "/mnt/full/config.toml"
    with open(config, "w") as f:
        f.write('[agent]\nstore_id = "vm"\nagent_id = "full-disk"\ndata_dir = "/mnt/full/data"\n'
                '[ingest]\nsocket = "/mnt/full/ingest.sock"\nspool_dir = "/mnt/full/spool"\nhttp_listen = "off"\n'
                '[storage]\nmax_db_bytes = "1GiB"\n[admin]\nlisten = "off"\n')
    log = open("/root/vm/full-agent.log", "w")
    os.chmod(config, 0o644)
    agent = subprocess.Popen(["setpriv", "--reuid=store-outbox", "--regid=store-outbox", "--init-groups",
                              "store-outbox", "run", "--config", config], stderr=log, stdout=log)
    global SOCK
    packaged_sock, SOCK = SOCK, "/mnt/full/ingest.sock"
    try:
        wait("the second agent's socket", lambda: os.path.exists(SOCK), 60)
        filler = "x" * 16000
        acked, refused, n = [], [], 0
        while len(refused) < 60 and n < 20000:
            batch = [{"event_id": f"full-{n + i}", "type": "Fill", "entity": f"full:{(n + i) % 4}",
                      "payload": {"fill": filler}} for i in range(20)]
            for e, r in zip(batch, socket_send(batch)):
                if r.get("ok"):
                    acked.append(e["event_id"])
                elif r.get("error", {}).get("code") == "storage_full":
                    refused.append(e["event_id"])
                else:
                    raise RuntimeError(f"unexpected reply {r}")
            n += 20
        st = json.loads(sh("store-outbox", "status", "--json", "--config", config).stdout)
        df = sh("df", "-k", "/mnt/full").stdout.splitlines()[-1]
        check(agent.poll() is None and refused and st["db"]["full"], "a full ext4 data disk: storage_full, the agent keeps running",
              f"{len(acked)} acknowledged, then storage_full; status full={st['db']['full']} disk_full={st['db']['disk_full']}; df: {df}")
        conn = sqlite3.connect(f"file:/mnt/full/data/outbox.db?mode=ro", uri=True, timeout=30)
        stored = {r[0] for r in conn.execute("SELECT event_id FROM events")}
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        conn.close()
        check(set(acked) <= stored and not (set(refused) & stored) and integrity == "ok",
              "a full ext4 data disk: every acknowledged event kept, nothing refused stored",
              f"{len(stored)} stored, {len(set(refused) & stored)} refused ones stored, integrity_check {integrity}")
        os.remove("/mnt/full/ballast")
        fsync_dir("/mnt/full")
        again = wait("events taken again after freeing space",
                     lambda: socket_send([event(f"after-full-{time.monotonic_ns()}", "full:after", 0)])[0].get("ok"), 120, 2)
        check(bool(again), "a full ext4 data disk: space freed, events taken again", "without a restart")
    finally:
        SOCK = packaged_sock
        agent.terminate()
        rc = agent.wait(60)
        check(rc == 0, "a full ext4 data disk: the agent stops cleanly", f"exit {rc}")
        sh("umount", "/mnt/full", check_rc=False)


def main():
    args = cmdline()
    phase = args.get("phase", "")
    say(f"INFO phase {phase} boot {time.clock_gettime(time.CLOCK_BOOTTIME):.1f} s after power on")
    try:
        {"install": phase_install, "reboot": phase_reboot, "cut": phase_cut, "cut-reload": phase_cut_reload,
         "cut-dpkg": phase_cut_dpkg, "final": phase_final}[phase](args)
    except Exception as e:  # the report must say what broke
        check(False, f"phase {phase}", repr(e))
    say(f"DONE {phase} {'FAIL' if FAILED else 'ok'}")
    os.sync()
    if phase == "install":
        subprocess.run(["systemctl", "reboot"])
    elif phase == "final" or FAILED:
        subprocess.run(["systemctl", "poweroff"])


if __name__ == "__main__":
    sys.exit(main())
