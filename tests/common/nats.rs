//! A NATS JetStream cluster on loopback (`nats-server` processes), for the
//! NATS destination's tests: started, killed, terminated and restarted node
//! by node.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, wait_for_port, Process};

/// The `nats-server` binary: `$NATS_SERVER`, else the Debian package's path,
/// else `PATH`. Missing, the test fails (CI installs the `nats-server`
/// package); it never passes without a server.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    for candidate in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.exists());
    on_path.unwrap_or_else(|| {
        panic!(
            "nats-server not found (not in $NATS_SERVER, /usr/sbin, /usr/bin or PATH): \
             the NATS tests need it; install the Debian package: apt-get install -y nats-server"
        )
    })
}

/// One node of a [`NatsCluster`].
pub struct NatsNode {
    /// `server_name`.
    pub name: String,
    /// Client port.
    pub port: u16,
    /// Config file (ports, routes, store directory).
    pub config: PathBuf,
    /// The running server; `None` while stopped.
    pub process: Option<Process>,
}

/// A JetStream cluster of nodes on loopback, each with its own store
/// directory under one temp dir; every node is killed when it drops.
pub struct NatsCluster {
    /// Holds the nodes' config files, logs and store directories.
    pub dir: tempfile::TempDir,
    /// The nodes; their ports and stores stay the same across restarts.
    pub nodes: Vec<NatsNode>,
}

impl NatsCluster {
    /// Starts `size` nodes that route to each other and waits until every
    /// one takes clients.
    pub fn start(size: usize) -> NatsCluster {
        NatsCluster::start_with(size, "")
    }

    /// Like [`NatsCluster::start`], with `extra` appended to every node's
    /// config (an `authorization` block, say).
    pub fn start_with(size: usize, extra: &str) -> NatsCluster {
        let binary = nats_server_binary();
        let dir = tempfile::Builder::new().prefix("so-nats-").tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for (i, (port, cluster_port)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            std::fs::create_dir_all(&store).expect("store dir");
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, c))| format!("\"nats-route://127.0.0.1:{c}\""))
                .collect();
            let text = format!(
                "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\n\
                 jetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: so-test, listen: \"127.0.0.1:{cluster_port}\", routes: [{}] }}\n{extra}\n",
                store.display(),
                routes.join(", ")
            );
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(&config, text).expect("node config");
            nodes.push(NatsNode {
                name,
                port: *port,
                config,
                process: None,
            });
        }
        assert!(
            Command::new(&binary)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "{} does not run: the NATS tests need nats-server (apt-get install -y nats-server)",
            binary.display()
        );
        let mut cluster = NatsCluster { dir, nodes };
        for i in 0..size {
            cluster.spawn(i);
        }
        for node in &cluster.nodes {
            wait_for_port(node.port, &format!("nats-server {} on {}", node.name, node.port));
        }
        cluster
    }

    /// Starts node `i` (without waiting for it).
    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.process.is_none(), "{} already runs", node.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", node.name)))
            .expect("node log");
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server {}: {e}", node.name));
        node.process = Some(Process(child));
    }

    /// Every node's client URL, comma-separated (a subscription's `url`).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILL node `i`.
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].process = None;
    }

    /// SIGKILL every node.
    pub fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
    }

    /// SIGTERM every node (a clean shutdown: the stores are flushed) and
    /// waits for them to exit.
    pub fn terminate_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut process) = node.process.take() {
                // SAFETY: sending a signal to our own child process.
                unsafe { libc::kill(process.0.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(20);
                while process.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Starts node `i` again (same port, same store) and waits for it.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        let node = &self.nodes[i];
        wait_for_port(node.port, &format!("nats-server {} on {}", node.name, node.port));
    }

    /// Starts every stopped node again.
    pub fn restart_all(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].process.is_none() {
                self.spawn(i);
            }
        }
        for node in &self.nodes {
            wait_for_port(node.port, &format!("nats-server {} on {}", node.name, node.port));
        }
    }

    /// The nodes' logs, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", n.name))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                format!(
                    "--- {} ---\n{}",
                    n.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
