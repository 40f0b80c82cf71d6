//! The agent as a whole: opens the outbox, starts the writer, the ways in and
//! one scheduler per subscription, applies reloads to the schedulers, and
//! stops everything in the right order.
//!
//! Shutdown order matters for the promises: ingest stops first (new events get
//! `shutting_down`), commits already queued finish, in-flight requests get a
//! bounded time, and only then the writer thread drains and exits.
//!
//! A reload (`deliveries::Deliveries::reload`) never stops ingest: the schedulers of
//! changed and removed subscriptions stop once their requests in flight are
//! recorded, the writer takes the new list between two batches, and the new
//! schedulers start from the committed state, so nothing in flight is lost
//! or overtaken.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::admin;
use crate::config::Config;
use crate::deliver::envelope::Source;
use crate::ingest;
use crate::metrics::Metrics;
use crate::notify::Heartbeats;
use crate::outbox::{self, writer::Writer};
use crate::reload;
use crate::shutdown::Shutdown;

mod deliveries;

use crate::deliver::destinations::{self, Built};
use deliveries::Deliveries;

/// How long in-flight deliveries may finish after a stop request.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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

/// Runs the agent until `shutdown` fires, reloading the config file at each
/// of `reloads`. `started` is told once every listener is bound and the
/// schedulers are running.
pub async fn run(
    config: Config,
    shutdown: Shutdown,
    reloads: reload::Requests,
    started: Option<oneshot::Sender<Started>>,
) -> anyhow::Result<()> {
    let lock = lock_data_dir(&config.agent.data_dir)?;
    let db_path = config.db_path();
    let Some((conn, subs)) = open_storage_once_disk_has_space(&config, &db_path, &shutdown).await? else {
        return Ok(());
    };
    let source = Source {
        store_id: config.agent.store_id.clone(),
        agent_id: config.agent.agent_id.clone(),
    };
    let destinations = subs
        .iter()
        .map(|sub| destinations::build(&sub.config, &source).map_err(|e| anyhow!(e)))
        .collect::<anyhow::Result<Vec<Built>>>()?;
    let storage_full = Arc::new(tokio::sync::Notify::new());
    let (writer, writer_thread) = Writer::start(conn, &subs, config.storage.max_db_bytes, storage_full.clone());
    let listeners = Listeners::bind(&config).await?;
    let wiring = Wiring {
        config,
        db_path,
        writer,
        metrics: Metrics::default(),
        shutdown,
    };
    let tasks = wiring.spawn_tasks(
        listeners,
        subs.iter().cloned().zip(destinations),
        source,
        reloads,
        storage_full,
    )?;
    log_started(&wiring.config, &wiring.db_path, subs.len());
    if wiring.config.source.is_some() {
        tracing::info!("systemctl reload store-outbox (SIGHUP) re-reads the [[subscription]] sections of the config file; other keys need a restart");
    }
    if let Some(tx) = started {
        let _ = tx.send(Started {
            socket: wiring.config.ingest.socket.clone(),
            db_path: wiring.db_path.clone(),
        });
    }
    crate::notify::ready(&crate::notify::status_line(&wiring.db_path));
    wiring.wait_and_stop(tasks, writer_thread).await?;
    drop(lock);
    tracing::info!("stopped");
    Ok(())
}

/// Opens the outbox for writing, records the configured subscriptions and
/// the start in `meta`.
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
    outbox::record_start(&conn, outbox::now_ms(), env!("CARGO_PKG_VERSION"))
        .map_err(|e| write_failed("cannot write", e))?;
    Ok((conn, subs))
}

/// [`open_storage`], waiting while the disk is full; `None` if `shutdown`
/// fired meanwhile.
///
/// A disk that filled while the agent was stopped: wait for space rather
/// than exit, so systemd's start limit does not leave the service down once
/// space is back. Anything else wrong with the file is an error.
async fn open_storage_once_disk_has_space(
    config: &Config,
    db_path: &Path,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<(rusqlite::Connection, Vec<outbox::Subscription>)>> {
    let mut waited = false;
    loop {
        match open_storage(config, db_path) {
            Ok(opened) => {
                if waited {
                    tracing::info!("disk space is back: starting");
                }
                return Ok(Some(opened));
            }
            Err(e) if outbox::disk_full(db_path) => {
                if !waited {
                    tracing::error!(error = %e, "the disk holding the outbox is full: waiting for free space before starting");
                    waited = true;
                }
                crate::notify::waiting("waiting for free disk space for the outbox", DISK_FULL_RETRY * 3);
                let mut stop = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(DISK_FULL_RETRY) => {}
                    _ = stop.wait() => return Ok(None),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Every socket the agent listens on, bound before any task starts, and the
/// admin token that guards one of them.
struct Listeners {
    /// The ingest Unix socket (`ingest.socket`).
    socket: UnixListener,
    /// HTTP ingest (`ingest.http_listen`), if configured.
    http: Option<TcpListener>,
    /// Admin HTTP (`admin.listen`), if configured.
    admin: Option<TcpListener>,
    /// SHA-256 of `admin.token_file`'s token; `None`: mutations are off.
    admin_token_digest: Option<[u8; 32]>,
}

impl Listeners {
    async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let socket = ingest::socket::bind(&config.ingest.socket)
            .await
            .map_err(|e| anyhow!(e))?;
        let http = match config.ingest.http_listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow!("ingest.http_listen {addr}: cannot listen: {e}"))?;
                if !addr.ip().is_loopback() {
                    tracing::warn!(%addr, "HTTP ingest listens beyond loopback (ingest.http_allow_remote): anyone who reaches it can add events");
                }
                Some(l)
            }
            None => None,
        };
        let admin_token_digest = match &config.admin.token_file {
            Some(path) => Some(admin::load_token(path).map_err(|e| anyhow!(e))?),
            None => None,
        };
        let admin = match config.admin.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow!("admin.listen {addr}: cannot listen: {e}"))?,
            ),
            None => None,
        };
        Ok(Listeners {
            socket,
            http,
            admin,
            admin_token_digest,
        })
    }
}

/// What the agent's tasks are built from once storage and listeners are up.
struct Wiring {
    /// The configuration.
    config: Config,
    /// The database file.
    db_path: PathBuf,
    /// The single writer; dropped last, after every task stopped.
    writer: Writer,
    /// In-memory delivery metrics: schedulers record, admin renders.
    metrics: Metrics,
    /// The stop signal.
    shutdown: Shutdown,
}

impl Wiring {
    /// Starts every task: the ways in, retention, one scheduler per
    /// subscription (and their reloads), the systemd supervisor and admin
    /// HTTP.
    fn spawn_tasks(
        &self,
        listeners: Listeners,
        subs: impl IntoIterator<Item = (outbox::Subscription, Built)>,
        source: Source,
        reloads: reload::Requests,
        storage_full: Arc<tokio::sync::Notify>,
    ) -> anyhow::Result<JoinSet<()>> {
        let mut tasks = JoinSet::new();
        self.spawn_ingest(&mut tasks, listeners.socket, listeners.http)?;
        tasks.spawn(
            outbox::retention::Retention {
                writer: self.writer.clone(),
                db_path: self.db_path.clone(),
                retain: self.config.storage.retain_delivered,
                max_db_bytes: self.config.storage.max_db_bytes,
                wake: storage_full,
                shutdown: self.shutdown.clone(),
            }
            .run(),
        );
        // The agent's own AgentHeartbeat events (`agent.heartbeat`; not the
        // watchdog's heartbeats below).
        tasks.spawn(crate::heartbeat::run(
            Arc::new(self.config.clone()),
            self.writer.clone(),
            self.shutdown.clone(),
        ));
        tasks.spawn(
            crate::history::Sampler {
                db_path: self.db_path.clone(),
                writer: self.writer.clone(),
                period: crate::history::period(),
                shutdown: self.shutdown.clone(),
            }
            .run(),
        );
        let heartbeats = Heartbeats::default();
        let mut deliveries = Deliveries {
            config: self.config.clone(),
            source,
            db_path: self.db_path.clone(),
            writer: self.writer.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            heartbeats: heartbeats.clone(),
            running: Vec::new(),
        };
        for (sub, built) in subs {
            deliveries.start(sub, built)?;
        }
        tasks.spawn(deliveries.run(reloads));
        tasks.spawn(
            crate::notify::Supervisor {
                writer: self.writer.clone(),
                heartbeats,
                db_path: self.db_path.clone(),
                shutdown: self.shutdown.clone(),
            }
            .run(),
        );
        if let Some(l) = listeners.admin {
            let admin = Arc::new(admin::Admin {
                config: Arc::new(self.config.clone()),
                metrics: self.metrics.clone(),
                writer: self.writer.clone(),
                token_digest: listeners.admin_token_digest,
            });
            tasks.spawn(admin::serve(l, admin, self.shutdown.clone()));
        }
        Ok(tasks)
    }

    /// The Unix socket, HTTP ingest if bound, and the spool directory.
    fn spawn_ingest(
        &self,
        tasks: &mut JoinSet<()>,
        socket: UnixListener,
        http: Option<TcpListener>,
    ) -> anyhow::Result<()> {
        let ingest = &self.config.ingest;
        let spool_dirs = ingest::spool::SpoolDirs::new(&ingest.spool_dir);
        spool_dirs.create().map_err(|e| anyhow!(e))?;
        tasks.spawn(ingest::socket::serve(
            socket,
            ingest.socket.clone(),
            self.writer.clone(),
            ingest.max_event_bytes,
            self.shutdown.clone(),
        ));
        if let Some(l) = http {
            let state = Arc::new(ingest::http::HttpIngest {
                writer: self.writer.clone(),
                max_event_bytes: ingest.max_event_bytes,
                max_request_bytes: ingest.max_request_bytes,
                shutdown: self.shutdown.clone(),
                allow_remote: ingest.http_allow_remote,
            });
            tasks.spawn(ingest::http::serve(l, state));
        }
        tasks.spawn(
            ingest::spool::Spool {
                dirs: spool_dirs,
                writer: self.writer.clone(),
                max_event_bytes: ingest.max_event_bytes,
                shutdown: self.shutdown.clone(),
            }
            .run(),
        );
        Ok(())
    }

    /// Waits for the stop signal, then stops in order: every task (ingest
    /// first refuses new events, requests in flight get their grace), then
    /// the writer thread drains its queue and exits.
    async fn wait_and_stop(
        self,
        mut tasks: JoinSet<()>,
        writer_thread: std::thread::JoinHandle<()>,
    ) -> anyhow::Result<()> {
        let mut stop = self.shutdown.clone();
        stop.wait().await;
        crate::notify::stopping();
        tracing::info!("stopping: no new events taken, finishing commits and requests in flight");
        while tasks.join_next().await.is_some() {}
        drop(self);
        tokio::task::spawn_blocking(move || writer_thread.join())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| anyhow!("the outbox writer thread failed"))
    }
}

/// The start-up log line, with the backlog waiting in the database.
fn log_started(config: &Config, db_path: &Path, subscriptions: usize) {
    let backlog = outbox::open_reader(db_path)
        .ok()
        .and_then(|c| outbox::read::backlog(&c).ok())
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
        subscriptions,
        backlog,
        "store-outbox started"
    );
    if subscriptions == 0 {
        tracing::warn!("no [[subscription]] configured: events are stored and wait for one");
    }
}
