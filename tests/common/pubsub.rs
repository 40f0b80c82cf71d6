//! Google Cloud Pub/Sub on loopback, for the Pub/Sub destination's tests:
//!
//! - [`PubSubEmulator`]: Google's emulator (Debian package
//!   google-cloud-cli-pubsub-emulator) as a process group that dies with its
//!   handle, and its REST API for topics, ordered subscriptions, plain
//!   publishes and pulls ([`PulledMessage`]);
//! - [`service_account_key`]: a service-account key file as Google's console
//!   writes it, with a fresh RSA key from `openssl` (nothing secret is
//!   committed);
//! - [`TokenServer`]: the OAuth2 token endpoint of a key's `token_uri`, which
//!   checks the signed JWT (RS256 with the key's public half, `iss`, `aud`,
//!   `scope`, `iat`/`exp`) and issues access tokens;
//! - [`AuthFront`]: a reverse proxy in front of the emulator that wants those
//!   tokens (the emulator itself ignores `Authorization`) and answers
//!   Google's errors on command ([`google_error`]).
//!
//! Everything listens on 127.0.0.1 and stops when its handle drops.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};

use super::{free_port, run_ok, try_http, HttpResponse};

/// What a test prints when it skips for want of the emulator.
pub const PUBSUB_EMULATOR_MISSING: &str =
    "skipping: the Pub/Sub emulator is not installed (package google-cloud-cli-pubsub-emulator)";

/// The OAuth scope of Pub/Sub, and the broader one that also grants it.
pub const PUBSUB_SCOPE: &str = "https://www.googleapis.com/auth/pubsub";
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The grant type of a service account's JWT exchange (RFC 7523).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding a lock must not hide its own
    // message behind a PoisonError in every later call.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

// ---------------------------------------------------------------------------
// The emulator
// ---------------------------------------------------------------------------

/// The emulator's own launcher, found beside `gcloud`:
/// `<sdk root>/platform/pubsub-emulator/bin/cloud-pubsub-emulator`.
///
/// It is what `gcloud beta emulators pubsub start` runs (its first line of
/// output says so). Started directly it takes clients in under a second
/// instead of two (no Python in between), is one process (the script
/// `exec`s java) and writes nothing into `~/.config/gcloud` (gcloud writes
/// the last emulator's address there, shared by parallel tests).
fn emulator_launcher() -> Result<PathBuf, String> {
    let gcloud = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("gcloud"))
        .find(|p| p.is_file())
        .ok_or("no gcloud on PATH")?;
    // /usr/bin/gcloud is a link to <sdk root>/bin/gcloud.
    let real = std::fs::canonicalize(&gcloud).map_err(|e| format!("{}: {e}", gcloud.display()))?;
    let sdk_root = real
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in <sdk root>/bin", real.display()))?;
    let launcher = sdk_root.join("platform/pubsub-emulator/bin/cloud-pubsub-emulator");
    if launcher.is_file() {
        Ok(launcher)
    } else {
        Err(format!("gcloud is there, {} is not", launcher.display()))
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` as the leader of a new process group, with
/// `PR_SET_PDEATHSIG` SIGKILL: when the test process dies without dropping
/// the handle (a CI timeout kills it), the JVM goes with it instead of
/// holding its port and 200 MB. The signal fires when the *thread* that
/// forked exits, so every emulator is forked by one thread that lives as
/// long as the test process, never by a test's own thread.
fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    cmd.process_group(0);
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("pubsub-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // SAFETY: prctl and getppid are async-signal-safe; nothing
                    // is allocated between fork and exec.
                    unsafe {
                        cmd.pre_exec(|| {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            // The test process died between fork and prctl.
                            if libc::getppid() == 1 {
                                return Err(std::io::Error::other("the test process is gone"));
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the thread that forks the emulators");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    lock(spawner)
        .send((cmd, reply_tx))
        .expect("the spawner thread lives as long as the process");
    reply_rx.recv().expect("the spawner thread answers every request")
}

/// A running emulator: its process group gets SIGKILL on drop.
struct EmulatorProcess {
    child: Child,
}

impl EmulatorProcess {
    fn group(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        // The whole group: under `gcloud … start` the JVM is a child of
        // Python, and the launcher script may fork helpers; killing only the
        // leader would leave a JVM listening.
        // SAFETY: kill(2) on the process group this handle created.
        unsafe { libc::kill(-(self.group() as i32), libc::SIGKILL) };
        // Reaped here, so the port is free again when this returns.
        let _ = self.child.wait();
    }
}

/// Google's Pub/Sub emulator on a free loopback port, state in memory.
///
/// Its process group is killed on drop; [`PubSubEmulator::kill`] loses every
/// topic, subscription and message, as a restart of the real emulator does.
pub struct PubSubEmulator {
    port: u16,
    launcher: PathBuf,
    /// The emulator's log (appended across restarts) and logging config.
    dir: tempfile::TempDir,
    process: Option<EmulatorProcess>,
}

/// One message [`PubSubEmulator::pull_all`] received (and acknowledged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledMessage {
    /// `data`, base64-decoded (empty when the message had none).
    pub data: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
    /// `orderingKey`; empty when the publisher set none.
    pub ordering_key: String,
    /// Assigned by the emulator: "1", "2", … in publish order across all its
    /// topics.
    pub message_id: String,
    /// RFC 3339, set by the emulator at publish.
    pub publish_time: String,
}

impl PubSubEmulator {
    /// Starts the emulator on a free port and waits until it answers.
    ///
    /// `None`, after printing [`PUBSUB_EMULATOR_MISSING`], only when `gcloud`
    /// or its emulator component is not installed; any other failure to start
    /// fails the test with the emulator's log.
    pub fn start() -> Option<PubSubEmulator> {
        let launcher = match emulator_launcher() {
            Ok(launcher) => launcher,
            Err(why) => {
                eprintln!("{PUBSUB_EMULATOR_MISSING}");
                eprintln!("  ({why})");
                return None;
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("so-pubsub-")
            .tempdir()
            .expect("a temp dir for the emulator's log");
        // At INFO the emulator logs a dozen lines per request (every header
        // it forwards): megabytes in a drain test, and time on 2 cores.
        // Warnings stay (a request over its size limit logs one).
        std::fs::write(
            dir.path().join("logging.properties"),
            "handlers=java.util.logging.ConsoleHandler\n.level=WARNING\n\
             java.util.logging.ConsoleHandler.level=WARNING\n",
        )
        .expect("write the emulator's logging config");
        let mut emulator = PubSubEmulator {
            port: free_port(),
            launcher,
            dir,
            process: None,
        };
        emulator.spawn();
        Some(emulator)
    }

    fn spawn(&mut self) {
        assert!(self.process.is_none(), "the emulator already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the emulator's log");
        let log_err = log.try_clone().expect("the emulator's log for stderr");
        let mut cmd = Command::new(&self.launcher);
        cmd.arg("--host=127.0.0.1")
            .arg(format!("--port={}", self.port))
            .env(
                "CLOUD_PUBSUB_EMULATOR_OPTS",
                format!(
                    "-Djava.util.logging.config.file={}",
                    self.dir.path().join("logging.properties").display()
                ),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = spawn_tied(cmd).unwrap_or_else(|e| panic!("cannot start {}: {e}", self.launcher.display()));
        self.process = Some(EmulatorProcess { child });
        self.wait_ready();
    }

    /// Waits until `GET /` answers 200 ("Ok"), failing fast with the log
    /// when the JVM exits instead (no java, port taken).
    fn wait_ready(&mut self) {
        // About a second on an idle machine; a JVM start on 2 cores shared
        // with a cargo build can take many times that.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let process = self.process.as_mut().expect("spawned");
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "the Pub/Sub emulator exited at start ({status}) on port {}:\n{}",
                    self.port,
                    self.log_tail(40)
                );
            }
            if try_http(self.port, "GET", "/", &[], b"").is_ok_and(|r| r.status == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Pub/Sub emulator did not answer on port {} within 60 s:\n{}",
                self.port,
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its port on 127.0.0.1 (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`: a subscription's `endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process group of the running emulator (its leader's pid), for
    /// checks that nothing outlives the handle.
    pub fn process_group(&self) -> Option<u32> {
        self.process.as_ref().map(EmulatorProcess::group)
    }

    /// SIGKILL to the whole process group, waited for: the port is closed
    /// and every topic, subscription and message is gone.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Starts again on the same port (killing it first if it still runs), as
    /// empty as a fresh one, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("emulator.log")
    }

    /// The last `lines` lines of the emulator's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// One REST call to the emulator, answered as it came (errors included).
    pub fn request(&self, method: &str, path: &str, body: &Value) -> HttpResponse {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(body).expect("serialize a JSON body")
        };
        try_http(self.port, method, path, &[], &bytes)
            .unwrap_or_else(|e| panic!("{method} {path} to the Pub/Sub emulator on {}: {e}", self.port))
    }

    /// Like [`PubSubEmulator::request`], failing the test unless it answers
    /// 200; returns the JSON answer.
    fn request_ok(&self, what: &str, method: &str, path: &str, body: &Value) -> Value {
        let answer = self.request(method, path, body);
        assert_eq!(
            answer.status,
            200,
            "{what}: {method} {path} answered {}: {}",
            answer.status,
            answer.text()
        );
        answer.json()
    }

    /// Creates `projects/<project>/topics/<topic>`. The emulator wants names
    /// of 3 to 255 characters starting with a letter (as Pub/Sub does):
    /// `t1` is a 400 INVALID_ARGUMENT.
    pub fn create_topic(&self, project: &str, topic: &str) {
        self.request_ok(
            "create topic",
            "PUT",
            &format!("/v1/projects/{project}/topics/{topic}"),
            &Value::Null,
        );
    }

    /// Deletes the topic; its subscriptions stay, attached to
    /// `_deleted-topic_`, and a publish to it is then 404 NOT_FOUND.
    pub fn delete_topic(&self, project: &str, topic: &str) {
        self.request_ok(
            "delete topic",
            "DELETE",
            &format!("/v1/projects/{project}/topics/{topic}"),
            &Value::Null,
        );
    }

    /// Creates a pull subscription with `enableMessageOrdering: true` on an
    /// existing topic: it hands out the messages of one ordering key one
    /// pull at a time, the next only once the earlier ones are acknowledged.
    /// It gets only what is published after it exists.
    pub fn create_ordered_subscription(&self, project: &str, subscription: &str, topic: &str) {
        self.request_ok(
            "create ordered subscription",
            "PUT",
            &format!("/v1/projects/{project}/subscriptions/{subscription}"),
            &json!({
                "topic": format!("projects/{project}/topics/{topic}"),
                "enableMessageOrdering": true,
                // pull_all acknowledges at once; a minute keeps a slow test
                // machine from seeing redeliveries it did not cause.
                "ackDeadlineSeconds": 60,
            }),
        );
    }

    /// One pull (`returnImmediately`: without it the emulator holds an
    /// empty pull open for about 90 s) of up to 1000 messages, acknowledged
    /// before returning, in the order the emulator gave them.
    pub fn pull_once(&self, project: &str, subscription: &str) -> Vec<PulledMessage> {
        let path = format!("/v1/projects/{project}/subscriptions/{subscription}");
        let answer = self.request_ok(
            "pull",
            "POST",
            &format!("{path}:pull"),
            &json!({"maxMessages": 1000, "returnImmediately": true}),
        );
        let received = answer["receivedMessages"].as_array().cloned().unwrap_or_default();
        let mut ack_ids = Vec::new();
        let mut messages = Vec::new();
        for r in &received {
            ack_ids.push(
                r["ackId"]
                    .as_str()
                    .expect("a received message has an ackId")
                    .to_string(),
            );
            let m = &r["message"];
            let data = m["data"].as_str().unwrap_or_default();
            messages.push(PulledMessage {
                data: STANDARD
                    .decode(data)
                    .unwrap_or_else(|e| panic!("the emulator's data {data:?} is not base64: {e}")),
                attributes: m["attributes"]
                    .as_object()
                    .map(|a| {
                        a.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
                ordering_key: m["orderingKey"].as_str().unwrap_or_default().to_string(),
                message_id: m["messageId"].as_str().unwrap_or_default().to_string(),
                publish_time: m["publishTime"].as_str().unwrap_or_default().to_string(),
            });
        }
        if !ack_ids.is_empty() {
            self.request_ok(
                "acknowledge",
                "POST",
                &format!("{path}:acknowledge"),
                &json!({ "ackIds": ack_ids }),
            );
        }
        messages
    }

    /// Pulls and acknowledges until at least `expect_at_least` messages
    /// arrived, then takes whatever else is already there (duplicates and
    /// extras are seen, not left behind); stops early at `timeout` with what
    /// it has (the caller asserts). In arrival order.
    pub fn pull_all(
        &self,
        project: &str,
        subscription: &str,
        expect_at_least: usize,
        timeout: Duration,
    ) -> Vec<PulledMessage> {
        let deadline = Instant::now() + timeout;
        let mut all = Vec::new();
        loop {
            let batch = self.pull_once(project, subscription);
            let empty = batch.is_empty();
            all.extend(batch);
            if (all.len() >= expect_at_least && empty) || Instant::now() >= deadline {
                return all;
            }
            if empty {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// A plain REST publish of `(data, ordering key, attributes)` messages in
    /// one call (an empty key or map is left out of the JSON), failing the
    /// test unless it answers 200; returns the message ids. For benches and
    /// comparisons with the agent's own publishing.
    pub fn publish_raw(
        &self,
        project: &str,
        topic: &str,
        messages: &[(Vec<u8>, String, BTreeMap<String, String>)],
    ) -> Vec<String> {
        let answer = self.try_publish_raw(project, topic, messages);
        assert_eq!(
            answer.status,
            200,
            "publish to {project}/{topic} answered {}: {}",
            answer.status,
            answer.text()
        );
        answer.json()["messageIds"]
            .as_array()
            .expect("a publish answer has messageIds")
            .iter()
            .map(|id| id.as_str().expect("a message id is a string").to_string())
            .collect()
    }

    /// Like [`PubSubEmulator::publish_raw`], with the answer as it came (a
    /// missing topic is 404 `{"error":{"code":404,"message":"Topic not
    /// found","status":"NOT_FOUND"}}`).
    pub fn try_publish_raw(
        &self,
        project: &str,
        topic: &str,
        messages: &[(Vec<u8>, String, BTreeMap<String, String>)],
    ) -> HttpResponse {
        let messages: Vec<Value> = messages
            .iter()
            .map(|(data, ordering_key, attributes)| {
                let mut m = json!({ "data": STANDARD.encode(data) });
                if !ordering_key.is_empty() {
                    m["orderingKey"] = json!(ordering_key);
                }
                if !attributes.is_empty() {
                    m["attributes"] = json!(attributes);
                }
                m
            })
            .collect();
        self.request(
            "POST",
            &format!("/v1/projects/{project}/topics/{topic}:publish"),
            &json!({ "messages": messages }),
        )
    }
}

// ---------------------------------------------------------------------------
// Service-account keys
// ---------------------------------------------------------------------------

/// The project of the keys [`service_account_key`] writes.
pub const TEST_PROJECT: &str = "store-outbox-test";

/// The fields of a service-account key file the JWT flow uses.
#[derive(Clone, Debug)]
pub struct ServiceAccountKey {
    pub project_id: String,
    pub private_key_id: String,
    /// PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----").
    pub private_key: String,
    pub client_email: String,
    pub token_uri: String,
}

/// Reads a key file as [`service_account_key`] writes it.
pub fn read_service_account_key(path: &Path) -> ServiceAccountKey {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let field = |name: &str| {
        json[name]
            .as_str()
            .unwrap_or_else(|| panic!("{} has no string {name}", path.display()))
            .to_string()
    };
    ServiceAccountKey {
        project_id: field("project_id"),
        private_key_id: field("private_key_id"),
        private_key: field("private_key"),
        client_email: field("client_email"),
        token_uri: field("token_uri"),
    }
}

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// Writes a service-account key file into `dir`, field for field as Google's
/// console makes one, with a fresh RSA-2048 key from `openssl` and
/// `token_uri` as given (a [`TokenServer::token_uri`]); returns its path,
/// named `<project>-<12 hex of the key id>.json` as the console names it.
pub fn service_account_key(dir: &Path, token_uri: &str) -> PathBuf {
    let out = run_ok(
        Command::new("openssl").args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        "openssl genpkey (openssl must be installed)",
    );
    // openssl 3 writes PKCS#8 ("BEGIN PRIVATE KEY") in 64-column lines, as
    // the console's keys are.
    let private_key = String::from_utf8(out.stdout).expect("a PEM key is ASCII");
    assert!(
        private_key.starts_with("-----BEGIN PRIVATE KEY-----\n"),
        "openssl genpkey wrote no PKCS#8 key:\n{private_key}"
    );
    let private_key_id = random_hex(20);
    let account = "store-outbox-agent";
    let client_email = format!("{account}@{TEST_PROJECT}.iam.gserviceaccount.com");
    let client_id: String = (0..21)
        .map(|i| char::from(b'0' + if i == 0 { 1 } else { rand::random::<u8>() % 10 }))
        .collect();
    let key = json!({
        "type": "service_account",
        "project_id": TEST_PROJECT,
        "private_key_id": private_key_id,
        "private_key": private_key,
        "client_email": client_email,
        "client_id": client_id,
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": format!(
            "https://www.googleapis.com/robot/v1/metadata/x509/{account}%40{TEST_PROJECT}.iam.gserviceaccount.com"
        ),
        "universe_domain": "googleapis.com",
    });
    let path = dir.join(format!("{TEST_PROJECT}-{}.json", &private_key_id[..12]));
    let text = serde_json::to_string_pretty(&key).expect("serialize the key") + "\n";
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// The PKCS#1 `RSAPublicKey` (DER) of a PEM private key, by `openssl`: what
/// ring's RSA verification takes.
fn rsa_public_key_der(private_key_pem: &str) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(["rsa", "-RSAPublicKey_out", "-outform", "DER"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl rsa (openssl must be installed)");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(private_key_pem.as_bytes())
        .expect("hand the key to openssl");
    let out = child.wait_with_output().expect("openssl rsa finishes");
    assert!(
        out.status.success(),
        "openssl rsa -RSAPublicKey_out failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

// ---------------------------------------------------------------------------
// An axum server on its own thread and runtime
// ---------------------------------------------------------------------------

/// An axum router served on a free loopback port by its own thread and
/// runtime, stopped on drop (in-flight requests are dropped, not waited
/// for: a forward stuck on a hung emulator must not hang the test's end).
struct LoopbackServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoopbackServer {
    /// A listener on a free loopback port: bound before the router is
    /// built, for a router whose state holds its own address (the token
    /// endpoint checks `aud` against its URL).
    fn bind(what: &str) -> (std::net::TcpListener, SocketAddr) {
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap_or_else(|e| panic!("{what}: bind loopback: {e}"));
        listener
            .set_nonblocking(true)
            .expect("a nonblocking listener for tokio");
        let addr = listener.local_addr().expect("the listener's address");
        (listener, addr)
    }

    fn serve(what: &str, listener: std::net::TcpListener, router: axum::Router) -> LoopbackServer {
        let addr = listener.local_addr().expect("the listener's address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(what.to_string())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a runtime for the loopback server");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                    tokio::select! {
                        _ = axum::serve(listener, router) => {}
                        _ = stopped => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_millis(100));
            })
            .expect("start the loopback server's thread");
        LoopbackServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Request bodies up to 64 MiB (axum's default stops at 2 MiB, below a
/// batch's 8 MiB and Pub/Sub's 10 MB).
const BODY_LIMIT: usize = 64 << 20;

fn json_response(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).expect("a valid status code");
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// The token endpoint
// ---------------------------------------------------------------------------

/// A service account the [`TokenServer`] takes JWTs from.
struct TrustedKey {
    client_email: String,
    private_key_id: String,
    /// PKCS#1 RSAPublicKey, DER.
    public_key: Vec<u8>,
}

/// An access token the [`TokenServer`] issued.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub access_token: String,
    /// The JWT's `iss`.
    pub client_email: String,
    /// The JWT's `scope`, as sent.
    pub scope: String,
    pub issued_at: Instant,
    /// `issued_at` + the `expires_in` it was issued with.
    pub expires_at: Instant,
}

struct TokenState {
    token_uri: String,
    keys: Mutex<Vec<TrustedKey>>,
    issued: Mutex<Vec<IssuedToken>>,
    /// Tokens issued before this are no longer taken ([`TokenServer::revoke_all`]).
    revoked_before: Mutex<Option<Instant>>,
    /// Why each refused JWT was refused.
    refusals: Mutex<Vec<String>>,
    exchanges: AtomicUsize,
    expires_in: AtomicU64,
    /// (status, how many more requests) for [`TokenServer::fail_next`].
    failing: Mutex<(u16, usize)>,
}

impl TokenState {
    /// Whether `token` is one this server issued, not expired nor revoked;
    /// the error says which it is not.
    fn check_access_token(&self, token: &str) -> Result<(), String> {
        let issued = lock(&self.issued);
        let found = issued
            .iter()
            .find(|t| t.access_token == token)
            .ok_or("the bearer token is none the token server issued")?;
        let now = Instant::now();
        if now >= found.expires_at {
            return Err(format!(
                "the bearer token expired {:.1} s ago",
                (now - found.expires_at).as_secs_f64()
            ));
        }
        if lock(&self.revoked_before).is_some_and(|before| found.issued_at <= before) {
            return Err("the bearer token was revoked".into());
        }
        Ok(())
    }
}

/// Decodes one part of a JWT (base64url without padding, RFC 7515).
fn jwt_part(part: &str, what: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| format!("the JWT {what} is not base64url without padding: {e}"))
}

fn jwt_json(part: &str, what: &str) -> Result<serde_json::Map<String, Value>, String> {
    let bytes = jwt_part(part, what)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!("the JWT {what} is no JSON object: {other}")),
        Err(e) => Err(format!("the JWT {what} is not JSON: {e}")),
    }
}

/// Checks a service account's JWT as Google's token endpoint does; returns
/// its (`iss`, `scope`) or what is wrong with it.
fn check_assertion(
    assertion: &str,
    keys: &[TrustedKey],
    token_uri: &str,
    now: u64,
) -> Result<(String, String), String> {
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header_b64, claims_b64, signature_b64] = parts[..] else {
        return Err(format!(
            "the assertion is no JWT: {} dot-separated parts, not 3 (header.claims.signature)",
            parts.len()
        ));
    };
    let header = jwt_json(header_b64, "header")?;
    if header.get("alg") != Some(&json!("RS256")) {
        return Err(format!(
            "the JWT header's alg is {:?}, not \"RS256\"",
            header.get("alg")
        ));
    }
    if header.get("typ") != Some(&json!("JWT")) {
        return Err(format!("the JWT header's typ is {:?}, not \"JWT\"", header.get("typ")));
    }
    let claims = jwt_json(claims_b64, "claims")?;
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or("the JWT claims have no iss (the key's client_email)")?;
    let candidates: Vec<&TrustedKey> = keys.iter().filter(|k| k.client_email == iss).collect();
    if candidates.is_empty() {
        return Err(format!("iss {iss:?} is no service account this token server trusts"));
    }
    let candidates: Vec<&TrustedKey> = match header.get("kid") {
        None => candidates,
        Some(kid) => {
            let kid = kid.as_str().ok_or("the JWT header's kid is no string")?;
            let matching: Vec<&TrustedKey> = candidates.into_iter().filter(|k| k.private_key_id == kid).collect();
            if matching.is_empty() {
                return Err(format!(
                    "the JWT header's kid {kid:?} is the private_key_id of no key of {iss}"
                ));
            }
            matching
        }
    };
    let signature = jwt_part(signature_b64, "signature")?;
    let signed = format!("{header_b64}.{claims_b64}");
    let rs256 = rs256_verifier();
    if !candidates.iter().any(|k| {
        rs256
            .verify_signature(&k.public_key, signed.as_bytes(), &signature)
            .is_ok()
    }) {
        return Err(format!(
            "Invalid JWT Signature: RS256 over header.claims does not verify with the public key of {iss}"
        ));
    }
    match claims.get("aud").and_then(Value::as_str) {
        Some(aud) if aud == token_uri => {}
        other => {
            return Err(format!(
                "the JWT's aud is {other:?}, not the key's token_uri {token_uri:?}"
            ))
        }
    }
    let scope = claims
        .get("scope")
        .and_then(Value::as_str)
        .ok_or("the JWT claims have no scope (space-separated OAuth scopes)")?;
    if !scope.split(' ').any(|s| s == PUBSUB_SCOPE || s == CLOUD_PLATFORM_SCOPE) {
        return Err(format!(
            "the JWT's scope {scope:?} grants no Pub/Sub access (wants {PUBSUB_SCOPE} or {CLOUD_PLATFORM_SCOPE})"
        ));
    }
    let seconds = |name: &str| {
        claims.get(name).and_then(Value::as_u64).ok_or_else(|| {
            format!(
                "the JWT's {name} is no whole number of Unix seconds: {:?}",
                claims.get(name)
            )
        })
    };
    let iat = seconds("iat")?;
    let exp = seconds("exp")?;
    // Google's own wording for the next three, then the detail.
    let short_lived = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe";
    if iat > now + 60 {
        return Err(format!("{short_lived}: iat is {} s in the future", iat - now));
    }
    if exp <= now {
        return Err(format!("{short_lived}: exp is {} s in the past", now - exp));
    }
    if exp <= iat || exp - iat > 3600 {
        return Err(format!(
            "{short_lived}: exp - iat is {} s, not 1 to 3600",
            exp as i64 - iat as i64
        ));
    }
    Ok((iss.to_string(), scope.to_string()))
}

/// RSASSA-PKCS1-v1_5 with SHA-256 over 2048- to 8192-bit keys, as ring
/// implements it (`ring::signature::RSA_PKCS1_2048_8192_SHA256`), reached
/// through rustls' ring provider: ring is in the build, but only rustls is
/// a dependency this crate can name.
fn rs256_verifier() -> &'static dyn rustls::pki_types::SignatureVerificationAlgorithm {
    rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == rustls::SignatureScheme::RSA_PKCS1_SHA256)
        .and_then(|(_, algorithms)| algorithms.first().copied())
        .expect("rustls' ring provider verifies RSA_PKCS1_SHA256")
}

fn token_error(status: u16, error: &str, description: &str) -> Response {
    json_response(
        status,
        json!({ "error": error, "error_description": description }).to_string(),
    )
}

async fn token_endpoint(State(state): State<Arc<TokenState>>, headers: HeaderMap, body: Bytes) -> Response {
    state.exchanges.fetch_add(1, Ordering::SeqCst);
    {
        let mut failing = lock(&state.failing);
        if failing.1 > 0 {
            failing.1 -= 1;
            let status = failing.0;
            let error = match status {
                400 => "invalid_grant",
                401 => "invalid_client",
                429 => "rate_limit_exceeded",
                _ => "internal_failure",
            };
            return token_error(
                status,
                error,
                "the token server was told to fail this request (fail_next)",
            );
        }
    }
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    {
        return token_error(
            400,
            "invalid_request",
            &format!("content-type is {content_type:?}, not application/x-www-form-urlencoded"),
        );
    }
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let refuse = |error: &str, description: String| {
        lock(&state.refusals).push(description.clone());
        token_error(400, error, &description)
    };
    match form.get("grant_type").map(String::as_str) {
        Some(JWT_BEARER_GRANT) => {}
        other => {
            return refuse(
                "unsupported_grant_type",
                format!("grant_type is {other:?}, not {JWT_BEARER_GRANT:?}"),
            )
        }
    }
    let Some(assertion) = form.get("assertion") else {
        return refuse("invalid_request", "no assertion (the signed JWT) in the form".into());
    };
    let checked = check_assertion(assertion, &lock(&state.keys), &state.token_uri, unix_now());
    let (client_email, scope) = match checked {
        Ok(good) => good,
        Err(why) => return refuse("invalid_grant", why),
    };
    let expires_in = state.expires_in.load(Ordering::SeqCst);
    let mut issued = lock(&state.issued);
    // Google's tokens start "ya29."; the count makes every one unique.
    let access_token = format!("ya29.so-test-{}-{}", issued.len() + 1, random_hex(16));
    let issued_at = Instant::now();
    issued.push(IssuedToken {
        access_token: access_token.clone(),
        client_email,
        scope,
        issued_at,
        expires_at: issued_at + Duration::from_secs(expires_in),
    });
    json_response(
        200,
        json!({ "access_token": access_token, "expires_in": expires_in, "token_type": "Bearer" }).to_string(),
    )
}

/// The OAuth2 token endpoint of a service-account key (`token_uri`) on
/// loopback: `POST /token` with the form
/// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`.
///
/// The JWT must have the header `{"alg":"RS256","typ":"JWT"}` (a `kid`, if
/// there, naming the key's `private_key_id`), an RS256 signature by a
/// trusted key's private half, and the claims `iss` = its `client_email`,
/// `aud` = this [`TokenServer::token_uri`], `scope` with Pub/Sub or
/// cloud-platform, `iat` at most 60 s ahead, `exp` in the future and at
/// most 3600 s after `iat`. Good: 200
/// `{"access_token":"ya29…","expires_in":N,"token_type":"Bearer"}`; bad:
/// 400 `{"error":"invalid_grant","error_description":"<what is wrong>"}`
/// (`unsupported_grant_type` or `invalid_request` for a wrong form).
pub struct TokenServer {
    state: Arc<TokenState>,
    server: LoopbackServer,
}

impl TokenServer {
    /// Starts on a free port, trusting no key yet (see
    /// [`TokenServer::new_key`], [`TokenServer::trust`]); tokens live 3599 s,
    /// as Google's do.
    pub fn start() -> TokenServer {
        let (listener, addr) = LoopbackServer::bind("token-server");
        let state = Arc::new(TokenState {
            token_uri: format!("http://{addr}/token"),
            keys: Mutex::new(Vec::new()),
            issued: Mutex::new(Vec::new()),
            revoked_before: Mutex::new(None),
            refusals: Mutex::new(Vec::new()),
            exchanges: AtomicUsize::new(0),
            expires_in: AtomicU64::new(3599),
            failing: Mutex::new((0, 0)),
        });
        let router = axum::Router::new()
            .route("/token", axum::routing::post(token_endpoint))
            .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(state.clone());
        let server = LoopbackServer::serve("token-server", listener, router);
        TokenServer { state, server }
    }

    /// `http://127.0.0.1:PORT/token`: the `token_uri` of its keys, and the
    /// `aud` their JWTs must carry.
    pub fn token_uri(&self) -> String {
        self.state.token_uri.clone()
    }

    pub fn port(&self) -> u16 {
        self.server.addr.port()
    }

    /// Writes a fresh key file into `dir` ([`service_account_key`]) whose
    /// `token_uri` is this server, and trusts it.
    pub fn new_key(&self, dir: &Path) -> PathBuf {
        let path = service_account_key(dir, &self.token_uri());
        self.trust(&path);
        path
    }

    /// Takes JWTs signed with the key in this key file from now on (its
    /// public half derived with `openssl`); several keys of one account may
    /// be trusted at once, as while keys are rotated.
    pub fn trust(&self, key_file: &Path) {
        let key = read_service_account_key(key_file);
        lock(&self.state.keys).push(TrustedKey {
            public_key: rsa_public_key_der(&key.private_key),
            client_email: key.client_email,
            private_key_id: key.private_key_id,
        });
    }

    /// The `expires_in` of tokens issued from now on (a few seconds to test
    /// refreshing).
    pub fn set_expires_in(&self, seconds: u64) {
        self.state.expires_in.store(seconds, Ordering::SeqCst);
    }

    /// Answers the next `n` requests to `/token` with `status` (whatever
    /// they carry) and an OAuth error body: an outage or a refusal of the
    /// token endpoint.
    pub fn fail_next(&self, status: u16, n: usize) {
        *lock(&self.state.failing) = (status, n);
    }

    /// Requests to `/token` so far, answered or refused: how often the agent
    /// tried to exchange a JWT.
    pub fn exchanges(&self) -> usize {
        self.state.exchanges.load(Ordering::SeqCst)
    }

    /// Every token issued so far, oldest first.
    pub fn issued(&self) -> Vec<IssuedToken> {
        lock(&self.state.issued).clone()
    }

    /// Why each refused exchange was refused (the `error_description`s),
    /// oldest first; `fail_next` answers are not in it.
    pub fn refusals(&self) -> Vec<String> {
        lock(&self.state.refusals).clone()
    }

    /// Makes every token issued so far invalid at the [`AuthFront`] (a
    /// revoked key, or Google's early expiry), as a 401 to their users.
    pub fn revoke_all(&self) {
        *lock(&self.state.revoked_before) = Some(Instant::now());
    }
}

// ---------------------------------------------------------------------------
// The authenticating front
// ---------------------------------------------------------------------------

/// Google's JSON error body: `{"error":{"code":C,"message":M,"status":S}}`,
/// with the canonical status name of the HTTP code (429
/// `RESOURCE_EXHAUSTED`, 403 `PERMISSION_DENIED`, 503 `UNAVAILABLE`, …).
pub fn google_error(code: u16, message: &str) -> String {
    let status = match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    };
    json!({ "error": { "code": code, "message": message, "status": status } }).to_string()
}

/// Google's usual message for an error code, for [`AuthFront::answer_next`]
/// without a body of its own.
fn google_message(code: u16) -> &'static str {
    match code {
        400 => "Request contains an invalid argument.",
        401 => UNAUTHENTICATED_INVALID,
        403 => "User not authorized to perform this action.",
        404 => "Requested entity was not found.",
        429 => "Resource has been exhausted (e.g. check quota).",
        500 => "Internal error encountered.",
        503 => "The service is currently unavailable.",
        504 => "Deadline exceeded.",
        _ => "Unknown error.",
    }
}

const UNAUTHENTICATED_MISSING: &str = "Request is missing required authentication credential. Expected OAuth 2 \
     access token, login cookie or other valid authentication credential.";
const UNAUTHENTICATED_INVALID: &str = "Request had invalid authentication credentials. Expected OAuth 2 access \
     token, login cookie or other valid authentication credential.";

/// What the [`AuthFront`] did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontOutcome {
    /// 401: no `Authorization: Bearer`, or a token the [`TokenServer`] did
    /// not issue, that expired or was revoked.
    Unauthenticated,
    /// Answered from [`AuthFront::answer_next`].
    Canned,
    /// 400 `INVALID_ARGUMENT` by the front: a publish that breaks a rule of
    /// Pub/Sub's the emulator does not check ([`publish_rule_broken`]).
    Invalid,
    /// Forwarded to the emulator; its answer was returned.
    Forwarded,
    /// The emulator did not answer (killed): 503 `UNAVAILABLE`, as Google's
    /// front answers when the service behind it is down.
    EmulatorDown,
}

/// One request the [`AuthFront`] got.
#[derive(Clone, Debug)]
pub struct FrontRequest {
    pub at: Instant,
    pub method: String,
    /// Path and query (`/v1/projects/P/topics/T:publish`).
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    /// As sent (compressed if the agent compressed it).
    pub body: Vec<u8>,
    /// The status the front answered.
    pub status: u16,
    pub outcome: FrontOutcome,
}

impl FrontRequest {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (gunzipped first under `content-encoding: gzip`), or
    /// Null.
    pub fn json(&self) -> Value {
        let body = if self.header("content-encoding") == Some("gzip") {
            let mut plain = Vec::new();
            let mut decoder = flate2::read::GzDecoder::new(&self.body[..]);
            if std::io::Read::read_to_end(&mut decoder, &mut plain).is_err() {
                return Value::Null;
            }
            plain
        } else {
            self.body.clone()
        };
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    }
}

struct FrontState {
    upstream_port: u16,
    tokens: Arc<TokenState>,
    requests: Mutex<Vec<FrontRequest>>,
    /// (status, body) for the next authenticated requests, in order.
    canned: Mutex<VecDeque<(u16, String)>>,
    /// Whether [`publish_rule_broken`] is checked.
    one_key_per_publish: std::sync::atomic::AtomicBool,
}

/// The bearer token of an `Authorization` header, or the 401 message and
/// why.
fn bearer_token(headers: &HeaderMap) -> Result<&str, (&'static str, String)> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err((UNAUTHENTICATED_MISSING, "no Authorization header".into()));
    };
    let value = value.to_str().map_err(|_| {
        (
            UNAUTHENTICATED_INVALID,
            "the Authorization header is not ASCII".to_string(),
        )
    })?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(token.trim()),
        _ => Err((
            UNAUTHENTICATED_INVALID,
            format!("the Authorization header {value:?} is not \"Bearer <token>\""),
        )),
    }
}

async fn front(
    State(state): State<Arc<FrontState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let mut request = FrontRequest {
        at: Instant::now(),
        method: method.to_string(),
        path: path.clone(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        status: 0,
        outcome: FrontOutcome::Forwarded,
    };
    let verdict = bearer_token(&headers).and_then(|token| {
        state
            .tokens
            .check_access_token(token)
            .map_err(|why| (UNAUTHENTICATED_INVALID, why))
    });
    let response = match verdict {
        Err((message, why)) => {
            request.outcome = FrontOutcome::Unauthenticated;
            let mut response = json_response(401, google_error(401, &format!("{message} (test front: {why})")));
            // Google's 401s carry the challenge too.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""),
            );
            response
        }
        Ok(()) => {
            // Canned answers come after authentication, as Google checks
            // credentials before quota and permissions.
            let canned = lock(&state.canned).pop_front();
            match canned {
                Some((status, body)) => {
                    request.outcome = FrontOutcome::Canned;
                    json_response(status, body)
                }
                None => {
                    match publish_rule_broken(&request).filter(|_| state.one_key_per_publish.load(Ordering::SeqCst)) {
                        Some(why) => {
                            request.outcome = FrontOutcome::Invalid;
                            json_response(400, google_error(400, &why))
                        }
                        None => forward(&state, &method, &path, &headers, body)
                            .await
                            .unwrap_or_else(|| {
                                request.outcome = FrontOutcome::EmulatorDown;
                                json_response(503, google_error(503, google_message(503)))
                            }),
                    }
                }
            }
        }
    };
    request.status = response.status().as_u16();
    lock(&state.requests).push(request);
    response
}

/// What is wrong with a publish that the emulator takes and Pub/Sub does
/// not, if anything. One rule: "All PubsubMessages published in a given
/// PublishRequest must specify the same orderingKey value" (the API
/// reference, PubsubMessage.orderingKey; no key counts as the key ""); the
/// emulator publishes mixed keys without a word. A body that is no JSON is
/// left to the emulator's own 400.
fn publish_rule_broken(request: &FrontRequest) -> Option<String> {
    if request.method != "POST" || !request.path.split('?').next().is_some_and(|p| p.ends_with(":publish")) {
        return None;
    }
    let body = request.json();
    let keys: std::collections::BTreeSet<&str> = body["messages"]
        .as_array()?
        .iter()
        .map(|m| m["orderingKey"].as_str().unwrap_or_default())
        .collect();
    (keys.len() > 1).then(|| {
        let shown: Vec<&str> = keys.iter().take(3).copied().collect();
        format!(
            "All messages of a publish request must have the same orderingKey; this one has {} ({shown:?}{}) \
             (Pub/Sub's rule, checked by the test front: the emulator does not)",
            keys.len(),
            if keys.len() > 3 { ", ..." } else { "" }
        )
    })
}

/// The request as the emulator answers it; `None` when it does not (not
/// listening, connection cut).
async fn forward(
    state: &FrontState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Option<Response> {
    let pass: Vec<(String, String)> = ["content-type", "content-encoding"]
        .iter()
        .filter_map(|name| {
            headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .map(|v| (name.to_string(), v.to_string()))
        })
        .collect();
    let (port, method, path) = (state.upstream_port, method.to_string(), path.to_string());
    // The harness's blocking client: one connection per request, the whole
    // answer read (the emulator's answers are small).
    let answer = tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = pass.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        try_http(port, &method, &path, &headers, &body)
    })
    .await
    .expect("the forwarding task does not panic")
    .ok()?;
    let status = StatusCode::from_u16(answer.status).expect("the emulator's status is valid");
    let content_type = answer.header("content-type").unwrap_or("application/json").to_string();
    Some((status, [(axum::http::header::CONTENT_TYPE, content_type)], answer.body).into_response())
}

/// A reverse proxy on loopback in front of the emulator that wants
/// `Authorization: Bearer <token>` with a token the [`TokenServer`] issued
/// and that has not expired (the emulator itself takes anything): 401
/// `UNAUTHENTICATED` in Google's JSON otherwise. Authenticated requests go
/// to the emulator, or get the answers queued by
/// [`AuthFront::answer_next`]; a publish with more than one ordering key is
/// refused as Pub/Sub documents it (400 `INVALID_ARGUMENT`), which the
/// emulator does not. Every request is recorded.
pub struct AuthFront {
    state: Arc<FrontState>,
    server: LoopbackServer,
}

impl AuthFront {
    /// In front of `emulator` (through its restarts: same port), taking
    /// `tokens`' tokens.
    pub fn start(emulator: &PubSubEmulator, tokens: &TokenServer) -> AuthFront {
        AuthFront::start_to(emulator.port(), tokens)
    }

    /// In front of whatever speaks HTTP on `upstream_port` on loopback.
    pub fn start_to(upstream_port: u16, tokens: &TokenServer) -> AuthFront {
        let (listener, _) = LoopbackServer::bind("auth-front");
        let state = Arc::new(FrontState {
            upstream_port,
            tokens: tokens.state.clone(),
            requests: Mutex::new(Vec::new()),
            canned: Mutex::new(VecDeque::new()),
            one_key_per_publish: std::sync::atomic::AtomicBool::new(true),
        });
        let router = axum::Router::new()
            .fallback(front)
            .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(state.clone());
        let server = LoopbackServer::serve("auth-front", listener, router);
        AuthFront { state, server }
    }

    /// `http://127.0.0.1:PORT`: a subscription's `endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    pub fn port(&self) -> u16 {
        self.server.addr.port()
    }

    /// Answers the next `n` authenticated requests with `status` and `body`
    /// (JSON; empty: [`google_error`] with Google's usual message for the
    /// status), instead of forwarding them: 429 `RESOURCE_EXHAUSTED`, 503
    /// `UNAVAILABLE`, 403 `PERMISSION_DENIED`, 404 `NOT_FOUND`, …
    /// Queued after any answers already queued.
    pub fn answer_next(&self, status: u16, body: &str, n: usize) {
        let body = if body.is_empty() {
            google_error(status, google_message(status))
        } else {
            body.to_string()
        };
        lock(&self.state.canned).extend(std::iter::repeat_n((status, body), n));
    }

    /// Drops the answers queued by [`AuthFront::answer_next`] that are not
    /// given yet: with a large count first, a test holds the front at one
    /// answer (503 while it sets the emulator up again) until it is ready.
    pub fn clear_answers(&self) {
        lock(&self.state.canned).clear();
    }

    /// Forwards publishes with several ordering keys too (the emulator
    /// takes them), for a test that wants to see what the emulator does.
    pub fn allow_mixed_ordering_keys(&self) {
        self.state.one_key_per_publish.store(false, Ordering::SeqCst);
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<FrontRequest> {
        lock(&self.state.requests).clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.state.requests).len()
    }

    /// Requests answered 401 by the front (bad or missing token).
    pub fn rejected_count(&self) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|r| r.outcome == FrontOutcome::Unauthenticated)
            .count()
    }
}
