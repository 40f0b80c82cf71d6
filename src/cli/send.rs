//! `send`: one event through the agent's socket; prints the reply.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;

use clap::Args;

use super::{load_config, CliError, CliResult};

/// Arguments of `send`.
#[derive(Args, Debug)]
pub struct SendArgs {
    /// Event type, e.g. SaleCreated.
    #[arg(long = "type", value_name = "T")]
    pub event_type: String,
    /// Entity (ordering key), e.g. order:4711.
    #[arg(long, value_name = "E")]
    pub entity: String,
    /// Event id (default: the agent makes a UUIDv7).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Attribute, repeatable: --attr terminal=03.
    #[arg(long = "attr", value_name = "K=V")]
    pub attrs: Vec<String>,
    /// The payload as JSON, or - to read it from standard input (default: {}).
    #[arg(value_name = "PAYLOAD_JSON")]
    pub payload: Option<String>,
}

/// Sends and prints the reply line; exit 1 if the agent refused the event.
pub fn run(path: Option<&std::path::Path>, args: SendArgs) -> CliResult {
    let config = load_config(path)?;
    let payload_text = match args.payload.as_deref() {
        None => "{}".to_string(),
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| CliError::runtime(format!("reading the payload from stdin: {e}")))?;
            s
        }
        Some(text) => text.to_string(),
    };
    let payload: serde_json::Value = serde_json::from_str(&payload_text)
        .map_err(|e| CliError::usage(format!("PAYLOAD_JSON: not valid JSON ({e})")))?;
    let mut attributes = BTreeMap::new();
    for kv in &args.attrs {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--attr {kv:?}: write it as key=value")))?;
        attributes.insert(k.to_string(), v.to_string());
    }
    let mut event = serde_json::json!({
        "type": args.event_type,
        "entity": args.entity,
        "payload": payload,
    });
    if let Some(id) = args.id {
        event["event_id"] = id.into();
    }
    if !attributes.is_empty() {
        event["attributes"] = serde_json::to_value(attributes).unwrap_or_default();
    }
    let socket = &config.ingest.socket;
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        CliError::runtime(format!(
            "{}: cannot connect ({e}); is the agent running (store-outbox run)?",
            socket.display()
        ))
    })?;
    let mut line = event.to_string();
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| CliError::runtime(format!("{}: {e}", socket.display())))?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(|e| CliError::runtime(format!("{}: {e}", socket.display())))?;
    let reply = reply.trim();
    if reply.is_empty() {
        return Err(CliError::runtime(format!(
            "{}: the agent closed the connection without a reply",
            socket.display()
        )));
    }
    println!("{reply}");
    let ok = serde_json::from_str::<serde_json::Value>(reply)
        .ok()
        .and_then(|v| v.get("ok").and_then(|o| o.as_bool()))
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(CliError::runtime("the agent refused the event (see the reply above)"))
    }
}
