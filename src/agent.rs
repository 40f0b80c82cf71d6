//! The agent as a whole: opens the outbox, starts the writer, the ways in and
//! one scheduler per subscription, and stops them in the right order.
//!
//! Shutdown order matters for the promises: ingest stops first (new events get
//! `shutting_down`), commits already queued finish, in-flight requests get a
//! bounded time, and only then the writer thread drains and exits.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::sync::oneshot;

use crate::admin;
use crate::config::Config;
use crate::deliver::scheduler::Scheduler;
use crate::deliver::webhook::{Source, Webhook};
use crate::ingest;
use crate::metrics::Metrics;
use crate::outbox::{self, writer::Writer};
use crate::shutdown::Shutdown;

/// How long in-flight deliveries may finish after a stop request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Facts about a started agent, for callers (the demo, tests).
#[derive(Debug, Clone)]
pub struct Started {
    /// The ingest socket.
    pub socket: PathBuf,
    /// The database.
    pub db_path: PathBuf,
}

/// Holds the data directory's lock file: one agent per database.
struct DirLock {
    /// Held open for its `flock`; released when dropped.
    _file: File,
}

fn lock_data_dir(dir: &Path) -> anyhow::Result<DirLock> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the data directory", dir.display()))?;
    let path = dir.join("agent.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
                    ": the data directory must be writable by the agent's user (check owner and mode, a read-only mount, `lsattr`/`chattr -i`)"
                }
                std::io::ErrorKind::StorageFull => ": the disk is full; free space on that filesystem",
                _ => "",
            };
            anyhow!("{}: cannot open the lock file: {e}{hint}", path.display())
        })?;
    // SAFETY: flock on a file descriptor we own; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(anyhow!(
            "{}: another store-outbox already runs on this data directory; stop it first",
            dir.display()
        ));
    }
    Ok(DirLock { _file: file })
}

/// How often a start blocked by a full disk tries again.
const DISK_FULL_RETRY: Duration = Duration::from_secs(10);

/// Opens the outbox for writing and records the configured subscriptions.
fn open_storage(config: &Config, db_path: &Path) -> anyhow::Result<(rusqlite::Connection, Vec<outbox::Subscription>)> {
    let mut conn = outbox::open_writer(db_path)?;
    let write_failed = |what: &str, e: rusqlite::Error| {
        anyhow!(
            "{}: {what}: {e}: {}",
            db_path.display(),
            outbox::write_failure_hint(db_path, &e)
        )
    };
    let subs = outbox::register_subscriptions(&mut conn, &config.subscriptions)
        .map_err(|e| write_failed("cannot record the subscriptions", e))?;
    conn.execute(
        "INSERT INTO meta(key, value) VALUES ('started_at', ?1), ('version', ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        rusqlite::params![outbox::now_ms().to_string(), env!("CARGO_PKG_VERSION")],
    )
    .map_err(|e| write_failed("cannot write", e))?;
    Ok((conn, subs))
}

/// Runs the agent until `shutdown` fires. `started` is told once every
/// listener is bound and the schedulers are running.
pub async fn run(config: Config, shutdown: Shutdown, started: Option<oneshot::Sender<Started>>) -> anyhow::Result<()> {
    let lock = lock_data_dir(&config.agent.data_dir)?;
    let db_path = config.db_path();
    // A disk that filled while the agent was stopped: wait for space rather
    // than exit, so systemd's start limit does not leave the service down
    // once space is back. Anything else wrong with the file is an error.
    let mut waited = false;
    let (conn, subs) = loop {
        match open_storage(&config, &db_path) {
            Ok(opened) => break opened,
            Err(e) if outbox::disk_full(&db_path) => {
                if !waited {
                    tracing::error!(error = %e, "the disk holding the outbox is full: waiting for free space before starting");
                    waited = true;
                }
                crate::notify::waiting("waiting for free disk space for the outbox", DISK_FULL_RETRY * 3);
                let mut stop = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(DISK_FULL_RETRY) => {}
                    _ = stop.wait() => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    };
    if waited {
        tracing::info!("disk space is back: starting");
    }

    let source = Source {
        store_id: config.agent.store_id.clone(),
        agent_id: config.agent.agent_id.clone(),
    };
    let mut endpoints = Vec::new();
    for sub in &subs {
        let endpoint = Webhook::new(sub.config.clone(), source.clone())
            .map_err(|e| anyhow!("subscription {:?}: {e}", sub.config.name))?;
        endpoints.push(Arc::new(endpoint));
    }

    let storage_full = Arc::new(tokio::sync::Notify::new());
    let (writer, writer_thread) = Writer::start(conn, &subs, config.storage.max_db_bytes, storage_full.clone());
    let listener = ingest::socket::bind(&config.ingest.socket)
        .await
        .map_err(|e| anyhow!(e))?;
    let http_listener = match config.ingest.http_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow!("ingest.http_listen {addr}: cannot listen: {e}"))?;
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "HTTP ingest listens beyond loopback (ingest.http_allow_remote): anyone who reaches it can add events");
            }
            Some(l)
        }
        None => None,
    };
    let token_digest = match &config.admin.token_file {
        Some(path) => Some(admin::load_token(path).map_err(|e| anyhow!(e))?),
        None => None,
    };
    let admin_listener = match config.admin.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow!("admin.listen {addr}: cannot listen: {e}"))?,
        ),
        None => None,
    };
    let metrics = Metrics::default();
    let spool_dirs = ingest::spool::SpoolDirs::new(&config.ingest.spool_dir);
    spool_dirs.create().map_err(|e| anyhow!(e))?;

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(ingest::socket::serve(
        listener,
        config.ingest.socket.clone(),
        writer.clone(),
        config.ingest.max_event_bytes,
        shutdown.clone(),
    ));
    if let Some(l) = http_listener {
        let state = Arc::new(ingest::http::HttpIngest {
            writer: writer.clone(),
            max_event_bytes: config.ingest.max_event_bytes,
            max_request_bytes: config.ingest.max_request_bytes,
            shutdown: shutdown.clone(),
        });
        tasks.spawn(ingest::http::serve(l, state));
    }
    tasks.spawn(
        ingest::spool::Spool {
            dirs: spool_dirs,
            writer: writer.clone(),
            max_event_bytes: config.ingest.max_event_bytes,
            shutdown: shutdown.clone(),
        }
        .run(),
    );
    tasks.spawn(
        outbox::retention::Retention {
            writer: writer.clone(),
            db_path: db_path.clone(),
            retain: config.storage.retain_delivered,
            max_db_bytes: config.storage.max_db_bytes,
            wake: storage_full,
            shutdown: shutdown.clone(),
        }
        .run(),
    );
    let mut heartbeats = Vec::new();
    for (sub, endpoint) in subs.iter().zip(endpoints) {
        let reader = outbox::open_reader(&db_path)?;
        let scheduler = Scheduler::new(
            sub.clone(),
            endpoint,
            writer.clone(),
            reader,
            shutdown.clone(),
            SHUTDOWN_GRACE,
            metrics.clone(),
        );
        heartbeats.push((sub.config.name.clone(), scheduler.heartbeat()));
        tasks.spawn(scheduler.run());
    }
    tasks.spawn(
        crate::notify::Supervisor {
            writer: writer.clone(),
            heartbeats,
            db_path: db_path.clone(),
            shutdown: shutdown.clone(),
        }
        .run(),
    );
    if let Some(l) = admin_listener {
        let admin = Arc::new(admin::Admin {
            config: Arc::new(config.clone()),
            metrics: metrics.clone(),
            writer: writer.clone(),
            token_digest,
        });
        tasks.spawn(admin::serve(l, admin, shutdown.clone()));
    }

    let backlog = outbox::open_reader(&db_path)
        .ok()
        .and_then(|c| {
            c.query_row("SELECT COUNT(*) FROM deliveries WHERE state <> 1", [], |r| {
                r.get::<_, i64>(0)
            })
            .ok()
        })
        .unwrap_or(0);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        store_id = %config.agent.store_id,
        agent_id = %config.agent.agent_id,
        db = %db_path.display(),
        socket = %config.ingest.socket.display(),
        http = %config.ingest.http_listen.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        spool = %config.ingest.spool_dir.display(),
        admin = %config.admin.listen.map(|a| format!("http://{a}/")).unwrap_or_else(|| "off".into()),
        subscriptions = subs.len(),
        backlog,
        "store-outbox started"
    );
    if subs.is_empty() {
        tracing::warn!("no [[subscription]] configured: events are stored and wait for one");
    }
    if let Some(tx) = started {
        let _ = tx.send(Started {
            socket: config.ingest.socket.clone(),
            db_path: db_path.clone(),
        });
    }

    crate::notify::ready(&crate::notify::status_line(&db_path));
    let mut stop = shutdown.clone();
    stop.wait().await;
    crate::notify::stopping();
    tracing::info!("stopping: no new events taken, finishing commits and requests in flight");
    while tasks.join_next().await.is_some() {}
    drop(writer);
    tokio::task::spawn_blocking(move || writer_thread.join())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| anyhow!("the outbox writer thread failed"))?;
    drop(lock);
    tracing::info!("stopped");
    Ok(())
}
