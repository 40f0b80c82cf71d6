//! Loopback HTTP ingest: `POST /v1/events` with one event or a JSON array.
//!
//! Answered only after commit. An array's valid events are committed together
//! in one transaction; an invalid event in an array gets its error in its place
//! in `results` and does not stop the others (the same as a bad line on the
//! socket). Status codes: 200 results, 400 body not JSON, or not readable to
//! its end (`invalid_json`, the contract's code for a malformed body, with a
//! message that says so), 413 too large (only a body over the limit), 507
//! storage full, 503 shutting down.
//!
//! Before any of that, the request must come from a producer, not a web
//! page on the store PC: `Host` one of the agent's own addresses (421
//! `wrong_host`), no `Origin` (403 `forbidden_origin`; see
//! [`crate::http_guard`]), and `content-type: application/json` (415
//! `unsupported_media_type`: a page's `no-cors` POST can only send
//! `text/plain`, form or multipart bodies, which need no preflight). A body
//! that stalls for [`BODY_IDLE_TIMEOUT`] is given up (400).

use std::sync::Arc;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::value::RawValue;

use crate::event::{parse_event, ErrorCode, IngestError, Reply};
use crate::http_guard::{Guard, OriginRule};
use crate::outbox::writer::Writer;
use crate::shutdown::Shutdown;

/// What the handler needs.
pub struct HttpIngest {
    /// Where events go.
    pub writer: Writer,
    /// Largest single event.
    pub max_event_bytes: u64,
    /// Largest request body.
    pub max_request_bytes: u64,
    /// To answer 503 while stopping.
    pub shutdown: Shutdown,
    /// `ingest.http_allow_remote`: the `Host` check takes any IP address.
    pub allow_remote: bool,
}

/// How long a request body may stall between two pieces.
pub const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The ingest router.
pub fn router(state: Arc<HttpIngest>) -> Router {
    Router::new().route("/v1/events", post(post_events)).with_state(state)
}

/// Serves until shutdown, behind the `Host`/`Origin` guard.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<HttpIngest>) {
    let shutdown = state.shutdown.clone();
    let listen = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            tracing::error!(error = %e, "HTTP ingest: no local address");
            return;
        }
    };
    crate::http_server::serve(listener, app(state, listen), shutdown, "ingest").await;
}

/// The ingest router behind its guard, for a server listening on `listen`.
pub fn app(state: Arc<HttpIngest>, listen: std::net::SocketAddr) -> Router {
    let guard = Guard::new("ingest", listen, state.allow_remote, OriginRule::RefuseAll);
    router(state).layer(axum::middleware::from_fn_with_state(guard, crate::http_guard::enforce))
}

/// Whether the request says its body is JSON (`application/json`, with or
/// without parameters such as `charset`).
fn is_json(headers: &HeaderMap) -> bool {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(only), None) = (types.next(), types.next()) else {
        return false;
    };
    only.to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error(status: StatusCode, err: IngestError) -> Response {
    json(status, serde_json::json!({ "error": err }).to_string())
}

fn results(status: StatusCode, replies: &[Reply]) -> Response {
    let items: Vec<String> = replies.iter().map(Reply::to_json).collect();
    json(status, format!("{{\"results\":[{}]}}", items.join(",")))
}

/// Why a request body was not read.
enum BodyError {
    /// More than the limit.
    TooLarge,
    /// The connection or its framing broke (the reason, for the producer).
    Unreadable(String),
}

/// Reads a body of at most `limit` bytes, whatever it claims. Not
/// `axum::body::to_bytes`: its one error type mixes "too large" with
/// "broken", and those get different answers.
async fn read_body(mut body: Body, limit: u64) -> Result<Bytes, BodyError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total: u64 = 0;
    loop {
        let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx));
        let frame = match tokio::time::timeout(BODY_IDLE_TIMEOUT, next).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                return Err(BodyError::Unreadable(format!(
                    "nothing more arrived for {} s",
                    BODY_IDLE_TIMEOUT.as_secs()
                )))
            }
        };
        let frame = frame.map_err(|e| BodyError::Unreadable(crate::error_text::chain(&e)))?;
        // Trailers carry no data.
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            if total > limit {
                return Err(BodyError::TooLarge);
            }
            chunks.push(data);
        }
    }
    // One chunk (the usual case) is taken without a copy.
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => Bytes::from(chunks.concat()),
    })
}

async fn post_events(State(state): State<Arc<HttpIngest>>, headers: HeaderMap, body: Body) -> Response {
    if state.shutdown.is_started() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            IngestError::new(ErrorCode::ShuttingDown, "the agent is stopping"),
        );
    }
    if !is_json(&headers) {
        let given = headers
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = serde_json::json!({"error": {
            "code": "unsupported_media_type",
            "message": match given {
                Some(t) => format!("content-type {t:?}: events are taken only as application/json"),
                None => "no content-type: events are taken only as application/json".to_string(),
            },
        }});
        return json(StatusCode::UNSUPPORTED_MEDIA_TYPE, body.to_string());
    }
    let too_large = |size: String| {
        state.writer.count_rejected(ErrorCode::TooLarge);
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::new(
                ErrorCode::TooLarge,
                format!(
                    "request body of {size} bytes, the limit is {} (ingest.max_request_bytes)",
                    state.max_request_bytes
                ),
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > state.max_request_bytes) {
        return too_large(n.to_string());
    }
    let bytes = match read_body(body, state.max_request_bytes).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return too_large(format!("more than {}", state.max_request_bytes)),
        Err(BodyError::Unreadable(reason)) => {
            state.writer.count_rejected(ErrorCode::InvalidJson);
            return error(
                StatusCode::BAD_REQUEST,
                IngestError::new(
                    ErrorCode::InvalidJson,
                    format!("the request body could not be read to its end: {reason}"),
                ),
            );
        }
    };
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let parsed: Vec<Result<crate::event::NewEvent, IngestError>> = if first == Some(b'[') {
        let items: Vec<&RawValue> = match serde_json::from_slice(&bytes) {
            Ok(items) => items,
            Err(e) => {
                state.writer.count_rejected(ErrorCode::InvalidJson);
                return error(
                    StatusCode::BAD_REQUEST,
                    IngestError::new(ErrorCode::InvalidJson, e.to_string()),
                );
            }
        };
        items
            .iter()
            .map(|raw| parse_event(raw.get().as_bytes(), state.max_event_bytes))
            .collect()
    } else {
        match parse_event(&bytes, state.max_event_bytes) {
            Err(e) if e.code == ErrorCode::InvalidJson => {
                state.writer.count_rejected(e.code);
                return error(StatusCode::BAD_REQUEST, e);
            }
            Err(e) if e.code == ErrorCode::TooLarge => {
                state.writer.count_rejected(e.code);
                return error(StatusCode::PAYLOAD_TOO_LARGE, e);
            }
            other => vec![other],
        }
    };
    // Move the valid events out (no copy) and keep, per position, the error
    // of each invalid one; the body is not needed any more.
    let mut valid = Vec::with_capacity(parsed.len());
    let rejected: Vec<Option<IngestError>> = parsed
        .into_iter()
        .map(|p| match p {
            Ok(event) => {
                valid.push(event);
                None
            }
            Err(e) => {
                state.writer.count_rejected(e.code);
                Some(e)
            }
        })
        .collect();
    drop(bytes);
    let mut stored = if valid.is_empty() {
        Vec::new()
    } else {
        state.writer.ingest(valid).await
    }
    .into_iter();
    let replies: Vec<Reply> = rejected
        .into_iter()
        .map(|r| match r {
            None => stored
                .next()
                .unwrap_or_else(|| IngestError::new(ErrorCode::Internal, "no reply from storage").into()),
            Some(e) => e.into(),
        })
        .collect();
    let has = |code: ErrorCode| {
        replies
            .iter()
            .any(|r| matches!(r, Reply::Rejected(e) if e.code == code))
    };
    let status = if has(ErrorCode::StorageFull) {
        StatusCode::INSUFFICIENT_STORAGE
    } else if has(ErrorCode::ShuttingDown) {
        StatusCode::SERVICE_UNAVAILABLE
    } else if has(ErrorCode::Internal) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    results(status, &replies)
}
