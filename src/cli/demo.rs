//! `demo`: the agent, a built-in receiver and simulated POS traffic in a
//! temporary directory, with an outage of the receiver in the middle. Exits 0
//! only after checking that every acknowledged event arrived, in order per
//! entity, with a valid signature.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::{init_logging, runtime, CliError, CliResult};
use crate::receiver::{self, Checker, Received, Shared};
use crate::shutdown;

/// Arguments of `demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Events to send in all.
    #[arg(long, default_value_t = 3000)]
    pub events: usize,
    /// Seconds the receiver stays down in the middle.
    #[arg(long, default_value_t = 4)]
    pub outage: u64,
    /// Keep the temporary directory (its path is printed).
    #[arg(long)]
    pub keep: bool,
}

/// An acknowledged event: what the receiver must see.
struct Acked {
    /// Its entity.
    entity: String,
    /// Its position in the entity.
    entity_seq: i64,
}

/// Shared progress figures.
#[derive(Default)]
struct Progress {
    /// Events acknowledged so far.
    acked: usize,
    /// Whether the demo's receiver is answering.
    receiver_up: bool,
}

/// Runs the demonstration.
pub fn run(args: DemoArgs) -> CliResult {
    init_logging("warn");
    let dir = tempfile::Builder::new()
        .prefix("store-outbox-demo-")
        .tempdir()
        .map_err(|e| CliError::runtime(format!("cannot create a temporary directory: {e}")))?;
    let rt = runtime()?;
    let result = rt.block_on(demo(dir.path(), &args));
    if args.keep {
        let kept = dir.keep();
        eprintln!("kept {}", kept.display());
    }
    result
}

async fn start_receiver(
    addr: SocketAddr,
    shared: Arc<Shared>,
) -> Result<(oneshot::Sender<()>, tokio::task::JoinHandle<()>), CliError> {
    // Rebinding right after the outage may briefly fail: try for a while.
    let mut tries = 0;
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if tries < 50 => {
                tries += 1;
                tracing::debug!(error = %e, "rebinding the receiver");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(CliError::runtime(format!("receiver {addr}: {e}"))),
        }
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, receiver::router(shared))
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await;
    });
    Ok((stop_tx, server))
}

async fn demo(dir: &Path, args: &DemoArgs) -> CliResult {
    let total = args.events.max(10);
    let key: [u8; 24] = rand::random();
    let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key));
    let port = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .and_then(|l| l.local_addr())
        .map_err(|e| CliError::runtime(format!("no free port: {e}")))?
        .port();
    let receiver_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let config_text = format!(
        r#"
[agent]
store_id = "0042"
agent_id = "demo-till"
data_dir = "{dir}"
[ingest]
socket = "{dir}/ingest.sock"
[[subscription]]
name = "central"
url = "http://{receiver_addr}/hooks/pos"
secret = "{secret}"
timeout = "5s"
max_in_flight = 16
retry = {{ initial = "200ms", max = "1s" }}
"#,
        dir = dir.display()
    );
    let config = crate::deliver::destinations::parse_config(&config_text, None).map_err(CliError::runtime)?;

    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<Received>();
    let shared = Arc::new(Shared {
        checker: Mutex::new(Checker::new(vec![key.to_vec()])),
        events: events_tx,
    });
    let (mut stop_receiver, mut receiver_task) = start_receiver(receiver_addr, shared.clone()).await?;

    let (trigger, shutdown) = shutdown::channel();
    let (started_tx, started_rx) = oneshot::channel();
    let agent = tokio::spawn(crate::agent::run(
        config,
        shutdown,
        crate::reload::Requests::none(),
        Some(started_tx),
    ));
    let started = started_rx
        .await
        .map_err(|_| CliError::runtime("the agent did not start (see the log above)"))?;

    println!("store-outbox demo");
    println!("  data directory   {}", dir.display());
    println!("  ingest socket    {}", started.socket.display());
    println!("  receiver         http://{receiver_addr}/hooks/pos (verifies signatures and order)");
    println!("  traffic          {total} events: sales, stock movements, customer-order updates");
    println!(
        "  outage           the receiver goes down for {}s in the middle\n",
        args.outage
    );

    let progress = Arc::new(Mutex::new(Progress {
        acked: 0,
        receiver_up: true,
    }));
    let acked: Arc<Mutex<HashMap<String, Acked>>> = Arc::new(Mutex::new(HashMap::new()));
    let delivered: Arc<Mutex<HashMap<String, i64>>> = Arc::new(Mutex::new(HashMap::new()));
    let collector = {
        let delivered = delivered.clone();
        tokio::spawn(async move {
            while let Some(ev) = events_rx.recv().await {
                *delivered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(ev.id)
                    .or_insert(0) += 1;
            }
        })
    };
    let bar = {
        let (progress, delivered) = (progress.clone(), delivered.clone());
        // Redraw in place on a terminal; a line a second into a log or pipe.
        let every = if std::io::stderr().is_terminal() { 100 } else { 1000 };
        tokio::spawn(async move {
            loop {
                draw(&progress, &delivered, total);
                tokio::time::sleep(Duration::from_millis(every)).await;
            }
        })
    };

    // Three phases: receiver up, receiver down, receiver back.
    let thirds = [total / 3, total / 3, total - 2 * (total / 3)];
    let mut next = 0usize;
    let mut outage_len = Duration::ZERO;
    for (phase, count) in thirds.iter().enumerate() {
        if phase == 1 {
            let _ = stop_receiver.send(());
            let _ = (&mut receiver_task).await;
            progress.lock().unwrap_or_else(|p| p.into_inner()).receiver_up = false;
            let outage_started = Instant::now();
            produce(&started.socket, next, *count, &acked, &progress).await?;
            next += count;
            let rest = Duration::from_secs(args.outage).saturating_sub(outage_started.elapsed());
            tokio::time::sleep(rest).await;
            (stop_receiver, receiver_task) = start_receiver(receiver_addr, shared.clone()).await?;
            outage_len = outage_started.elapsed();
            progress.lock().unwrap_or_else(|p| p.into_inner()).receiver_up = true;
            continue;
        }
        produce(&started.socket, next, *count, &acked, &progress).await?;
        next += count;
    }

    // Wait until every acknowledged event arrived (or give up after a while).
    let deadline = Instant::now() + Duration::from_secs(120);
    let drain_started = Instant::now();
    loop {
        let missing = {
            let a = acked.lock().unwrap_or_else(|p| p.into_inner());
            let d = delivered.lock().unwrap_or_else(|p| p.into_inner());
            a.keys().filter(|id| !d.contains_key(*id)).count()
        };
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain = drain_started.elapsed();
    bar.abort();
    draw(&progress, &delivered, total);
    eprintln!();

    trigger.fire();
    let agent_result = agent.await;
    let _ = stop_receiver.send(());
    let _ = receiver_task.await;
    drop(shared.events.clone());
    let stats = shared.checker.lock().unwrap_or_else(|p| p.into_inner()).stats.clone();
    drop(shared);
    let _ = collector.await;

    let acked = acked.lock().unwrap_or_else(|p| p.into_inner());
    let delivered = delivered.lock().unwrap_or_else(|p| p.into_inner());
    let missing: Vec<&String> = acked.keys().filter(|id| !delivered.contains_key(*id)).collect();
    let entities: std::collections::HashSet<&str> = acked.values().map(|a| a.entity.as_str()).collect();
    let max_seq = acked.values().map(|a| a.entity_seq).max().unwrap_or(0);
    println!("\nsummary");
    println!(
        "  acknowledged         {} events over {} entities (longest entity: {max_seq} events)",
        acked.len(),
        entities.len()
    );
    println!(
        "  delivered            {} distinct, {} requests ({} duplicates)",
        stats.unique, stats.received, stats.duplicates
    );
    println!("  missing              {}", missing.len());
    println!("  order violations     {}", stats.out_of_order);
    println!("  bad signatures       {}", stats.bad_signatures);
    println!(
        "  outage               {:.1}s; backlog drained {:.1}s after the last event was sent",
        outage_len.as_secs_f64(),
        drain.as_secs_f64()
    );
    let ok = missing.is_empty() && stats.out_of_order == 0 && stats.bad_signatures == 0 && stats.invalid == 0;
    match agent_result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(CliError::runtime(format!("the agent failed: {e:#}"))),
        Err(e) => return Err(CliError::runtime(format!("the agent task failed: {e}"))),
    }
    if ok {
        println!("\nOK: every acknowledged event arrived, in order per entity, with a valid signature");
        Ok(())
    } else {
        Err(CliError::runtime("FAILED: see the summary above"))
    }
}

/// Sends events `first..first+count` through the socket from four producer
/// connections (each owning its own entities), pipelined.
async fn produce(
    socket: &Path,
    first: usize,
    count: usize,
    acked: &Arc<Mutex<HashMap<String, Acked>>>,
    progress: &Arc<Mutex<Progress>>,
) -> CliResult {
    const PRODUCERS: usize = 4;
    let mut tasks = Vec::new();
    for producer in 0..PRODUCERS {
        let socket = socket.to_path_buf();
        let (acked, progress) = (acked.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let stream = UnixStream::connect(&socket)
                .await
                .map_err(|e| CliError::runtime(format!("{}: {e}", socket.display())))?;
            let (read, mut write) = stream.into_split();
            let mine: Vec<usize> = (first..first + count).filter(|i| i % PRODUCERS == producer).collect();
            let expected = mine.len();
            let reader = tokio::spawn(async move {
                let mut lines = BufReader::new(read).lines();
                let mut replies = Vec::new();
                while replies.len() < expected {
                    match lines.next_line().await {
                        Ok(Some(line)) => replies.push(line),
                        _ => break,
                    }
                }
                replies
            });
            for i in &mine {
                let mut line = pos_event(*i, producer, PRODUCERS).to_string();
                line.push('\n');
                write
                    .write_all(line.as_bytes())
                    .await
                    .map_err(|e| CliError::runtime(format!("writing to the socket: {e}")))?;
                if i % 50 == 0 {
                    // A till does not send everything at once.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            let replies = reader.await.map_err(|e| CliError::runtime(e.to_string()))?;
            for line in replies {
                let v: serde_json::Value =
                    serde_json::from_str(&line).map_err(|e| CliError::runtime(format!("reply {line:?}: {e}")))?;
                if v["ok"] != true {
                    return Err(CliError::runtime(format!("the agent refused an event: {line}")));
                }
                let id = v["event_id"].as_str().unwrap_or_default().to_string();
                let entity_seq = v["entity_seq"].as_i64().unwrap_or(0);
                let entity = entity_of(&id);
                acked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, Acked { entity, entity_seq });
                progress.lock().unwrap_or_else(|p| p.into_inner()).acked += 1;
            }
            Ok::<(), CliError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| CliError::runtime(e.to_string()))??;
    }
    Ok(())
}

/// The entity is encoded in the demo's event ids: `<entity>.<n>`.
fn entity_of(id: &str) -> String {
    id.rsplit_once('.').map(|(e, _)| e.to_string()).unwrap_or_default()
}

const ORDER_STATES: [&str; 4] = ["created", "picked", "ready", "collected"];

/// Simulated POS traffic: sales per till, stock movements per SKU,
/// customer-order updates per order. Entities belong to one producer each, so
/// each entity's events are sent in a defined order.
fn pos_event(i: usize, producer: usize, producers: usize) -> serde_json::Value {
    let till = format!("0{}", producer + 1);
    let n = i / producers;
    let (event_type, entity, payload) = match i % 3 {
        0 => (
            "SaleCreated",
            format!("till:{till}"),
            serde_json::json!({"receipt": format!("R{till}-{n:05}"), "total": (n % 97) as f64 + 0.99, "currency": "EUR",
                "lines": [{"sku": format!("SKU-{}", n % 40), "qty": 1 + n % 3}]}),
        ),
        1 => (
            "StockMovementCreated",
            format!("sku:SKU-{}-{producer}", n % 25),
            serde_json::json!({"delta": -1 - (n % 3) as i64, "reason": "sale", "location": "store-0042"}),
        ),
        _ => (
            "CustomerOrderUpdated",
            format!("order:{}", 4700 + producer * 100 + n % 30),
            serde_json::json!({"status": ORDER_STATES[n % 4]}),
        ),
    };
    serde_json::json!({
        "event_id": format!("{entity}.{i}"),
        "type": event_type,
        "entity": entity,
        "attributes": {"terminal": till},
        "payload": payload,
    })
}

fn draw(progress: &Arc<Mutex<Progress>>, delivered: &Arc<Mutex<HashMap<String, i64>>>, total: usize) {
    let (acked, up) = {
        let p = progress.lock().unwrap_or_else(|p| p.into_inner());
        (p.acked, p.receiver_up)
    };
    let done = delivered.lock().unwrap_or_else(|p| p.into_inner()).len();
    const WIDTH: usize = 30;
    let filled = (done * WIDTH / total.max(1)).min(WIDTH);
    let bar: String = "#".repeat(filled) + &".".repeat(WIDTH - filled);
    let state = if up { "receiver up  " } else { "RECEIVER DOWN" };
    let (start, end) = if std::io::stderr().is_terminal() {
        ("\r", "")
    } else {
        ("", "\n")
    };
    eprint!("{start}  [{bar}] acknowledged {acked:>5}/{total}  delivered {done:>5}  {state}{end}");
    let _ = std::io::stderr().flush();
}
