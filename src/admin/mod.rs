//! Admin HTTP on `admin.listen` (loopback by default): the status page for
//! people, the JSON API, `/metrics` and `/healthz`.
//!
//! Reads need no token; mutations (resend) need the token of
//! `admin.token_file`: `Authorization: Bearer <token>` on the API, a password
//! field on the page. Without a token file, mutations are off.
//!
//! Every route is behind [`crate::http_guard`]: a `Host` that is not one of
//! the agent's own addresses gets 421 (DNS rebinding would otherwise let any
//! web page read every payload), and a POST from another origin 403.

mod chart;
mod html;
mod page;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::http_guard::{Guard, OriginRule};
use crate::metrics::Metrics;
use crate::outbox::state::DeliveryState;
use crate::outbox::writer::Writer;
use crate::outbox::{self, read, resend};
use crate::timefmt;

/// The OpenAPI 3.1 document of the ingest and admin HTTP APIs, as committed
/// in `docs/schema/openapi.json` (served at `GET /v1/openapi.json`).
pub const OPENAPI: &str = include_str!("../../docs/schema/openapi.json");

/// What the handlers share.
pub struct Admin {
    /// The agent's configuration.
    pub config: Arc<Config>,
    /// In-memory delivery metrics.
    pub metrics: Metrics,
    /// For `/healthz`'s write check and resends.
    pub writer: Writer,
    /// SHA-256 of the mutation token; `None`: mutations are off.
    pub token_digest: Option<[u8; 32]>,
}

/// Reads `admin.token_file` (trimmed); an empty file is an error.
pub fn load_token(path: &std::path::Path) -> Result<[u8; 32], String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("admin.token_file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("admin.token_file {}: the file is empty", path.display()));
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

impl Admin {
    fn db_path(&self) -> PathBuf {
        self.config.db_path()
    }

    /// Compares digests, so the comparison time says nothing about the token.
    fn token_ok(&self, given: Option<&str>) -> Result<(), (StatusCode, String)> {
        let Some(want) = self.token_digest else {
            return Err((StatusCode::FORBIDDEN, "mutations are off: set admin.token_file".into()));
        };
        let got: [u8; 32] = Sha256::digest(given.unwrap_or("").trim().as_bytes()).into();
        if got == want {
            Ok(())
        } else {
            Err((StatusCode::UNAUTHORIZED, "wrong or missing token".into()))
        }
    }
}

/// The admin router.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/", get(page_handler))
        .route("/ui/resend", post(page_resend))
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/v1/events/{id}", get(event))
        .route("/v1/events/{id}/resend", post(api_resend))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/history", get(history))
        .with_state(admin)
}

/// Serves until shutdown, behind the `Host`/`Origin` guard.
pub async fn serve(listener: tokio::net::TcpListener, admin: Arc<Admin>, shutdown: crate::shutdown::Shutdown) {
    let listen = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            tracing::error!(error = %e, "admin HTTP: no local address");
            return;
        }
    };
    crate::http_server::serve(listener, app(admin, listen), shutdown, "admin").await;
}

/// The admin router behind its guard, for a server listening on `listen`.
pub fn app(admin: Arc<Admin>, listen: std::net::SocketAddr) -> Router {
    let allow_remote = admin.config.admin.allow_remote;
    let guard = Guard::new("admin", listen, allow_remote, OriginRule::SameOriginPosts);
    router(admin).layer(axum::middleware::from_fn_with_state(guard, crate::http_guard::enforce))
}

type ApiError = (StatusCode, String);

fn internal(e: impl std::fmt::Display) -> ApiError {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Runs a blocking database read off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(internal)?
        .map_err(internal)
}

async fn status(State(admin): State<Arc<Admin>>) -> Result<Json<crate::status::StatusReport>, ApiError> {
    let config = admin.config.clone();
    blocking(move || crate::status::report(&config)).await.map(Json)
}

/// Query of `GET /v1/events`, as the CLI's flags.
#[derive(Deserialize, Default)]
struct EventsQuery {
    /// A delivery state's name (`--state`).
    state: Option<String>,
    /// Only this subscription.
    subscription: Option<String>,
    /// Only this entity.
    entity: Option<String>,
    /// An RFC 3339 time or a duration ago (`--since`).
    since: Option<String>,
    /// At most this many rows (default 100, at most 10 000).
    limit: Option<i64>,
}

async fn events(State(admin): State<Arc<Admin>>, Query(q): Query<EventsQuery>) -> Result<Response, ApiError> {
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(
            s.parse::<DeliveryState>()
                .map_err(|e| (StatusCode::BAD_REQUEST, format!("state={s}: {e}")))?,
        ),
    };
    let since_ms = match q.since.as_deref() {
        None => None,
        Some(t) => Some(
            timefmt::parse_since(t, outbox::now_ms()).map_err(|e| (StatusCode::BAD_REQUEST, format!("since={e}")))?,
        ),
    };
    let filter = read::DeliveryFilter {
        state,
        subscription: q.subscription,
        entity: q.entity,
        since_ms,
        limit: q.limit.unwrap_or(100).clamp(0, 10_000),
    };
    let path = admin.db_path();
    let rows = blocking(move || {
        let conn = outbox::open_reader(&path).map_err(|e| e.to_string())?;
        read::list_deliveries(&conn, &filter).map_err(|e| e.to_string())
    })
    .await?;
    Ok(Json(rows).into_response())
}

async fn event(State(admin): State<Arc<Admin>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let path = admin.db_path();
    let detail = blocking(move || {
        let conn = outbox::open_reader(&path).map_err(|e| e.to_string())?;
        read::event_detail(&conn, &id).map_err(|e| e.to_string())
    })
    .await?;
    match detail {
        Some(d) => Ok(Json(d).into_response()),
        None => Ok((
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "no such event in the outbox"})),
        )
            .into_response()),
    }
}

/// Resends through the agent's writer (one writer for the file, no
/// connection or migration per request). An unknown subscription is the
/// caller's mistake (404), not the agent's.
async fn run_resend(admin: &Admin, request: resend::ResendRequest) -> Result<resend::ResendOutcome, ApiError> {
    admin.writer.resend(request).await.map_err(|e| match e {
        resend::ResendError::UnknownSubscription(name) => {
            (StatusCode::NOT_FOUND, format!("no such subscription: {name:?}"))
        }
        resend::ResendError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        other => (StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    })
}

/// Query of `POST /v1/events/{id}/resend`.
#[derive(Deserialize, Default)]
struct ResendQuery {
    /// Only this subscription's delivery.
    subscription: Option<String>,
}

async fn api_resend(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    Query(q): Query<ResendQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    admin.token_ok(bearer)?;
    let request = resend::ResendRequest {
        event_ids: vec![id],
        subscription: q.subscription,
        ..Default::default()
    };
    let outcome = match run_resend(&admin, request).await {
        Ok(outcome) => outcome,
        Err((status, error)) => return Ok((status, Json(serde_json::json!({ "error": error }))).into_response()),
    };
    if outcome.queued == 0 {
        return Ok((StatusCode::NOT_FOUND, Json(outcome)).into_response());
    }
    Ok(Json(outcome).into_response())
}

/// The page's resend form: one button per parked delivery
/// (`<subscription>:<event id>`), or all of them.
#[derive(Deserialize)]
struct ResendForm {
    token: String,
    delivery: Option<String>,
    parked: Option<String>,
}

async fn page_resend(State(admin): State<Arc<Admin>>, Form(form): Form<ResendForm>) -> Response {
    let message = match admin.token_ok(Some(&form.token)) {
        Err((_, why)) => why,
        Ok(()) => {
            let (subscription, event_id) = match form.delivery.as_deref().and_then(|d| d.split_once(':')) {
                Some((sub, id)) => (Some(sub.to_string()), Some(id.to_string())),
                None => (None, None),
            };
            let request = resend::ResendRequest {
                event_ids: event_id.into_iter().collect(),
                parked: form.parked.is_some(),
                subscription,
                ..Default::default()
            };
            match run_resend(&admin, request).await {
                Ok(o) => format!("queued {} deliveries again", o.queued),
                Err((_, e)) => format!("resend failed: {e}"),
            }
        }
    };
    let encoded: String = message
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    Redirect::to(&format!("/?msg={encoded}")).into_response()
}

/// Query of the page.
#[derive(Deserialize, Default)]
struct PageQuery {
    /// Result of the last action, shown at the top.
    msg: Option<String>,
    /// Present: the page does not reload itself (to use the resend form).
    pause: Option<String>,
}

async fn page_handler(State(admin): State<Arc<Admin>>, Query(q): Query<PageQuery>) -> Result<Html<String>, ApiError> {
    let config = admin.config.clone();
    let path = admin.db_path();
    let period = crate::history::period();
    let period_ms = period.as_millis() as i64;
    let now_ms = outbox::now_ms();
    let (report, parked, history) = blocking(move || {
        let report = crate::status::report(&config)?;
        let conn = outbox::open_reader(&path).map_err(|e| e.to_string())?;
        let filter = read::DeliveryFilter {
            state: Some(DeliveryState::Parked),
            limit: 50,
            ..Default::default()
        };
        let parked = read::list_deliveries(&conn, &filter).map_err(|e| e.to_string())?;
        let since = now_ms - crate::outbox::history::KEPT_PERIODS * period_ms;
        let history = crate::outbox::history::read(&conn, None, since, period)
            .map_err(|e| e.to_string())?
            .map(|h| h.subscriptions)
            .unwrap_or_default();
        Ok((report, parked, history))
    })
    .await?;
    let view = page::View {
        report: &report,
        parked: &parked,
        message: q.msg.as_deref(),
        refresh: q.pause.is_none(),
        mutations: admin.token_digest.is_some(),
        history: &history,
        period_ms,
        now_ms,
    };
    Ok(Html(page::render(&view)))
}

async fn metrics(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let path = admin.db_path();
    let metrics = admin.metrics.clone();
    let config = admin.config.clone();
    let text = blocking(move || {
        let conn = outbox::open_reader(&path).map_err(|e| e.to_string())?;
        metrics.render(&conn, &config).map_err(|e| e.to_string())
    })
    .await?;
    if openmetrics {
        Ok((
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response())
    } else {
        let classic = crate::metrics::openmetrics_to_prometheus_text(&text);
        Ok((
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            classic,
        )
            .into_response())
    }
}

/// Query of `GET /v1/history`.
#[derive(Deserialize, Default)]
struct HistoryQuery {
    /// Only this subscription (configured or not); default: every
    /// configured one.
    subscription: Option<String>,
    /// An RFC 3339 time or a duration ago; default: the 24 h kept.
    since: Option<String>,
}

async fn history(State(admin): State<Arc<Admin>>, Query(q): Query<HistoryQuery>) -> Result<Response, ApiError> {
    let period = crate::history::period();
    let now = outbox::now_ms();
    let since_ms = match q.since.as_deref() {
        None => now - crate::outbox::history::KEPT_PERIODS * period.as_millis() as i64,
        Some(t) => timefmt::parse_since(t, now).map_err(|e| (StatusCode::BAD_REQUEST, format!("since={e}")))?,
    };
    let path = admin.db_path();
    let only = q.subscription.clone();
    let history = blocking(move || {
        let conn = outbox::open_reader(&path).map_err(|e| e.to_string())?;
        crate::outbox::history::read(&conn, only.as_deref(), since_ms, period).map_err(|e| e.to_string())
    })
    .await?;
    match history {
        Some(h) => Ok(Json(h).into_response()),
        None => Ok((
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({
                "error": format!("no such subscription: {:?}", q.subscription.unwrap_or_default())
            })),
        )
            .into_response()),
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn healthz(State(admin): State<Arc<Admin>>) -> Response {
    let writable = tokio::time::timeout(std::time::Duration::from_secs(5), admin.writer.ping())
        .await
        .unwrap_or(false);
    let ingest_up = tokio::net::UnixStream::connect(&admin.config.ingest.socket)
        .await
        .is_ok();
    let body = serde_json::json!({"database_writable": writable, "ingest_up": ingest_up});
    let code = if writable && ingest_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    /// The OpenAPI document carries the event schema as its `Event`
    /// component; both are committed files, so they are compared here.
    #[test]
    fn the_openapi_event_is_the_published_event_schema() {
        let api: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("openapi.json is JSON");
        let mut event: serde_json::Value = serde_json::from_str(include_str!("../../docs/schema/event.schema.json"))
            .expect("event.schema.json is JSON");
        let object = event.as_object_mut().expect("an object");
        object.remove("$schema");
        object.remove("$id");
        assert_eq!(api["components"]["schemas"]["Event"], event);
        assert_eq!(api["openapi"], "3.1.0");
        assert_eq!(api["info"]["version"], env!("CARGO_PKG_VERSION"));
    }
}
