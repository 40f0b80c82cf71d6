"""Raw SQLite experiment behind docs/BENCHMARKS.md's "next step for the drain":
how much a partial index keyed by entity costs the drain's outcome commits,
against a plain index on the same columns that a state change does not touch.
Run: python3 bench/index-experiment.py (writes /tmp/idx/t.db; about a minute)."""
import sqlite3, time, os, sys
N=200_000; E=10_000; BATCH=30
def setup(path, partial):
    if os.path.exists(path): os.remove(path)
    for ext in ("-wal","-shm"):
        if os.path.exists(path+ext): os.remove(path+ext)
    c=sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=FULL")
    c.execute("""CREATE TABLE deliveries (sub_id INTEGER NOT NULL, event_seq INTEGER NOT NULL, entity_id INTEGER NOT NULL,
      entity_seq INTEGER NOT NULL, state INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
      first_failed_at INTEGER, next_attempt_at INTEGER, delivered_at INTEGER, last_status INTEGER, last_error TEXT,
      PRIMARY KEY (sub_id, event_seq)) WITHOUT ROWID""")
    if partial:
        c.execute("CREATE INDEX deliveries_open ON deliveries(sub_id, entity_id, entity_seq) WHERE state <> 1")
    else:
        c.execute("CREATE INDEX deliveries_by_entity ON deliveries(sub_id, entity_id, entity_seq)")
    c.execute("CREATE INDEX deliveries_waiting ON deliveries(sub_id, state, event_seq) WHERE state <> 1")
    c.execute("BEGIN")
    for seq in range(1, N+1):
        c.execute("INSERT INTO deliveries(sub_id,event_seq,entity_id,entity_seq) VALUES (1,?,?,?)", (seq, seq % E, seq // E + 1))
    c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.execute("PRAGMA wal_autocheckpoint=0")
    return c
def run(path, partial):
    c=setup(path, partial)
    t=time.time(); frames=0
    for start in range(1, N+1, BATCH):
        c.execute("BEGIN IMMEDIATE")
        for seq in range(start, min(start+BATCH, N+1)):
            c.execute("UPDATE deliveries SET state=1, attempts=attempts+1, delivered_at=1, last_status=200 WHERE sub_id=1 AND event_seq=?", (seq,))
        c.execute("COMMIT")
    dt=time.time()-t
    wal=os.path.getsize(path+"-wal")
    print(f"{'partial deliveries_open' if partial else 'plain by-entity index'}: {N/dt:,.0f} outcomes/s, {dt/N*1e6:.1f} us each; WAL {wal/1e6:.0f} MB = {wal/4120/ (N/BATCH):.1f} pages per commit of {BATCH}")
for partial in (True, False, True, False):
    os.makedirs("/tmp/idx", exist_ok=True)
    run("/tmp/idx/t.db", partial)
