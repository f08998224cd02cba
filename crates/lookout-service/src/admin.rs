//! The admin HTTP server of every service: `/livez`, `/readyz`, `/metrics`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use lookout_telemetry::Telemetry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Named readiness checks; the service is ready when every check is true (and at least one is
/// registered).
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<&'static str, bool>>>,
}

impl Readiness {
    /// Sets a check.
    pub fn set(&self, check: &'static str, ok: bool) {
        self.checks.lock().expect("not poisoned").insert(check, ok);
    }

    /// Whether every check passes, and the failing ones.
    pub fn status(&self) -> (bool, Vec<&'static str>) {
        let checks = self.checks.lock().expect("not poisoned");
        let failing: Vec<_> = checks.iter().filter(|(_, ok)| !**ok).map(|(n, _)| *n).collect();
        (!checks.is_empty() && failing.is_empty(), failing)
    }
}

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    readiness: Readiness,
    telemetry: Option<Telemetry>,
}

impl AdminState {
    /// State with a metrics renderer.
    pub fn new(readiness: Readiness, telemetry: Telemetry) -> Self {
        Self { readiness, telemetry: Some(telemetry) }
    }

    /// State without metrics (tests).
    pub fn without_metrics(readiness: Readiness) -> Self {
        Self { readiness, telemetry: None }
    }
}

/// The admin router.
pub fn app(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    match state.readiness.status() {
        (true, _) => (StatusCode::OK, "ready\n".to_owned()),
        (false, failing) if failing.is_empty() => {
            (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_owned())
        }
        (false, failing) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", failing.join(", ")))
        }
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let body = state.telemetry.map(|t| t.render_metrics()).unwrap_or_default();
    ([("content-type", "text/plain; version=0.0.4")], body)
}

/// Binds `addr` and serves the admin router until `shutdown`. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app(state))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    async fn get(app: Router, path: &str) -> (StatusCode, String) {
        let req = axum::http::Request::get(path).body(Body::empty()).unwrap();
        let res = app.oneshot(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_reports_failing_checks() {
        let readiness = Readiness::default();
        let app = app(AdminState::without_metrics(readiness.clone()));
        assert_eq!(get(app.clone(), "/livez").await.0, StatusCode::OK);
        assert_eq!(get(app.clone(), "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        readiness.set("kafka", true);
        readiness.set("database", false);
        let (status, body) = get(app.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("database"), "{body}");
        readiness.set("database", true);
        assert_eq!(get(app, "/readyz").await, (StatusCode::OK, "ready\n".into()));
    }
}
