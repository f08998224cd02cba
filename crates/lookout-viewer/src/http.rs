//! The routes. [`app`] builds the router; tests call it with `oneshot`, no socket needed.

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderValue, Uri, header},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;

use crate::{
    ApiError, ViewerState, assets, auth, events,
    mjpeg::{self, ClientGuard},
    overlay,
    state::Camera,
};

/// Only our own origin: scripts, styles, images and the event stream.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/// The viewer's router: the page, its files, the API and the streams, behind the token check
/// when there is a token ([`crate::auth`]), every response with `nosniff` and
/// `Cross-Origin-Resource-Policy: same-origin`. No CORS layer: other origins cannot read the
/// API from a browser.
pub fn app(state: ViewerState) -> Router {
    let token = state.config().auth_token.clone();
    Router::new()
        .route("/", get(index))
        .route("/static/{name}", get(static_file))
        .route("/api/cameras", get(cameras))
        .route("/api/changes", get(changes))
        .route("/api/events", get(events_stream))
        .route("/api/cameras/{id}/history", get(history))
        .route("/api/cameras/{id}/history/{partition}/{thumbnail}", get(thumbnail))
        .route("/cameras/{id}/stream.mjpeg", get(stream))
        .route("/cameras/{id}/snapshot.jpg", get(snapshot))
        .fallback(not_found)
        .with_state(state)
        .layer(middleware::from_fn_with_state(token, auth::require_token))
        .layer(middleware::map_response(auth::security_headers))
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        assets::INDEX,
    )
        .into_response()
}

async fn static_file(Path(name): Path<String>) -> Result<Response, ApiError> {
    let asset = assets::find(&name)
        .ok_or_else(|| ApiError::NotFound { path: format!("/static/{name}") })?;
    Ok((
        [(header::CONTENT_TYPE, asset.content_type), (header::CACHE_CONTROL, "no-cache")],
        asset.body,
    )
        .into_response())
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound { path: uri.path().to_owned() }
}

async fn cameras(State(state): State<ViewerState>) -> Response {
    no_store(Json(state.cameras()).into_response())
}

async fn changes(State(state): State<ViewerState>) -> Response {
    no_store(Json(state.changes()).into_response())
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    /// Changes before this offset (of the camera's partition of the changes topic).
    before: Option<i64>,
    limit: Option<usize>,
}

/// Most changes one history request returns.
const HISTORY_PAGE: usize = 50;

/// A camera's changes, newest first, a page at a time: `?before=OFFSET&limit=N`. `more` says
/// whether older ones may exist.
async fn history(
    State(state): State<ViewerState>,
    Path(id): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(20).clamp(1, HISTORY_PAGE);
    let (changes, more) = state.history().page(&id, query.before, limit).await;
    no_store(Json(serde_json::json!({ "changes": changes, "more": more })).into_response())
}

/// A change's thumbnail: `/api/cameras/{id}/history/{partition}/{offset}.jpg`.
async fn thumbnail(
    State(state): State<ViewerState>,
    Path((id, partition, name)): Path<(String, i32, String)>,
) -> Result<Response, ApiError> {
    let missing =
        || ApiError::NotFound { path: format!("/api/cameras/{id}/history/{partition}/{name}") };
    let offset: i64 = name.strip_suffix(".jpg").and_then(|o| o.parse().ok()).ok_or_else(missing)?;
    let jpeg = state.history().thumbnail(&id, partition, offset).await.ok_or_else(missing)?;
    // A stored change never changes: its thumbnail can be kept.
    Ok((
        [(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "private, max-age=86400")],
        jpeg,
    )
        .into_response())
}

async fn events_stream(State(state): State<ViewerState>) -> Result<Response, ApiError> {
    let guard = admit(&state, "events")?;
    let sse = events::sse(state.subscribe_events(), guard, state.shutdown().clone());
    Ok(no_store(sse.into_response()))
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    overlay: Option<String>,
}

async fn stream(
    State(state): State<ViewerState>,
    Path(id): Path<String>,
    Query(query): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    let camera = camera(&state, &id)?;
    let overlay = match query.overlay.as_deref() {
        None => state.config().overlay_default,
        Some(v) => matches!(v, "1" | "true" | "yes" | "on"),
    };
    let guard = admit(&state, if overlay { "overlay" } else { "mjpeg" })?;
    let frames = if overlay {
        overlay::subscribe(&camera, state.config().overlay_quality, state.shutdown())
    } else {
        camera.frames.subscribe()
    };
    tracing::debug!(camera_id = %id, overlay, "stream client connected");
    let body = mjpeg::body(frames, guard, state.shutdown().clone());
    let mut response = (
        [
            (header::CONTENT_TYPE, mjpeg::CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        body,
    )
        .into_response();
    // Tell buffering proxies (nginx) to pass parts through at once.
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

async fn snapshot(
    State(state): State<ViewerState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let frame = camera(&state, &id)?.latest().ok_or(ApiError::NoFrameYet { id })?;
    let mut response = (
        [(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "no-store")],
        frame.jpeg.clone(),
    )
        .into_response();
    response.headers_mut().insert("x-lookout-sequence", HeaderValue::from(frame.sequence));
    Ok(response)
}

fn camera(state: &ViewerState, id: &str) -> Result<std::sync::Arc<Camera>, ApiError> {
    state
        .camera(id)
        .ok_or_else(|| ApiError::UnknownCamera { id: id.to_owned(), known: state.camera_ids() })
}

fn admit(state: &ViewerState, kind: &'static str) -> Result<ClientGuard, ApiError> {
    match state.try_admit() {
        Some(permit) => Ok(ClientGuard::new(kind, permit)),
        None => {
            metrics::counter!(crate::metrics::CLIENTS_REJECTED).increment(1);
            Err(ApiError::TooManyClients { max: state.config().max_clients })
        }
    }
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
