//! `lookout-viewer`: live camera video with labels in the browser, for any number of viewers.
//!
//! The viewer reads three topics in the bus's live mode (no consumer group, starting at the
//! newest message): frames, predictions and prediction changes, one subscription each per
//! viewer process, whatever the number of clients. They feed a [`ViewerState`]:
//!
//! - per camera, the newest frame in a `watch` slot: every MJPEG client takes the newest frame
//!   when its connection is ready for more, so a slow client skips ahead instead of queueing
//!   or slowing the others, and the JPEG bytes are shared, never copied per client;
//! - per camera and model, the prediction with the highest frame sequence seen (predictor
//!   replicas publish out of order; it never steps back): a classifier's label, a detector's
//!   objects (boxes, drawn over the video on the page and in the overlay);
//! - a bounded ring of recent prediction changes (a detector's told as `+person -car`);
//! - JSON events, serialised once and fanned out to event clients over a bounded broadcast
//!   channel (a lagging client skips).
//!
//! Modules: [`http`] (the router, [`app`]), [`server`] (connections: HTTP/1.1 and HTTP/2,
//! limits and timeouts), [`tls`] (HTTPS, which gives browsers HTTP/2),
//! `auth` (the optional token, headers on every response), `mjpeg` (multipart bodies),
//! `events` (SSE),
//! `overlay` (the label burned into frames, rendered once per frame per camera), `assets`
//! (the page, compiled in), [`metrics`] (metric names).
//!
//! Every stream ends when the shutdown token is cancelled, so a graceful shutdown of the HTTP
//! server never waits on an endless MJPEG body.

mod assets;
mod auth;
mod error;
mod events;
pub mod history;
pub mod http;
pub mod metrics;
mod mjpeg;
mod overlay;
pub mod server;
mod service;
mod state;
pub mod tls;

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use lookout_bus::{Bus, BusError, Incoming, topics};
use lookout_proto::v1::{Frame, Prediction, PredictionChange};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use auth::AuthToken;
pub use error::{ApiError, ViewerError};
pub use http::app;
pub use server::ServerLimits;
pub use service::{Args, main};
pub use state::{
    CameraInfo, ChangeInfo, CurrentLabel, CurrentObjects, Event, LabelView, ObjectView,
    RECENT_CHANGES, REORDER_WINDOW, ViewerConfig, ViewerState,
};
pub use tls::TlsConfig;

/// The viewer's own options.
#[derive(Debug, Clone, clap::Args)]
pub struct ViewerArgs {
    /// Address of the web page and streams (0.0.0.0:8080 to serve other machines).
    #[arg(long, env = "LOOKOUT_VIEWER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Concurrent stream clients (MJPEG streams and event streams); more get 503.
    #[arg(long, env = "LOOKOUT_VIEWER_MAX_CLIENTS", default_value_t = 64)]
    pub max_clients: usize,

    /// Cameras tracked; frames of further cameras are dropped until one is idle.
    #[arg(long, env = "LOOKOUT_VIEWER_MAX_CAMERAS", default_value_t = 256)]
    pub max_cameras: usize,

    /// A camera that sent no frame or prediction for this long is forgotten (its streams end).
    #[arg(long, env = "LOOKOUT_VIEWER_CAMERA_IDLE", default_value = "2m", value_parser = lookout_service::parse_duration)]
    pub camera_idle: Duration,

    /// Require this token on every request: the password of the browser's sign-in (any user
    /// name) or `Authorization: Bearer TOKEN`. Empty: no authentication.
    #[arg(
        long,
        env = "LOOKOUT_VIEWER_AUTH_TOKEN",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub auth_token: String,

    /// Open connections at most; more are closed when accepted.
    #[arg(long, env = "LOOKOUT_VIEWER_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,

    /// Time a client has to send a request's headers (from connecting, or the end of its
    /// previous response).
    #[arg(long, env = "LOOKOUT_VIEWER_HEADER_TIMEOUT", default_value = "10s", value_parser = lookout_service::parse_duration)]
    pub header_timeout: Duration,

    /// A connection whose client takes no bytes for this long is closed (a stalled stream).
    #[arg(long, env = "LOOKOUT_VIEWER_WRITE_TIMEOUT", default_value = "20s", value_parser = lookout_service::parse_duration)]
    pub write_timeout: Duration,

    /// Burn the label and the detected boxes into streams unless a client asks for
    /// `?overlay=0`.
    #[arg(long, env = "LOOKOUT_VIEWER_OVERLAY_DEFAULT")]
    pub overlay_default: bool,

    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first; with
    /// --tls-key). Browsers then speak HTTP/2 and the page streams every camera live (over
    /// HTTP/1.1 a browser holds six connections to a host, so four cameras stream live and the
    /// others refresh as snapshots). Without it: HTTP/1.1, and HTTP/2 in the clear (h2c) for a
    /// reverse proxy in front.
    #[arg(long, env = "LOOKOUT_VIEWER_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "LOOKOUT_VIEWER_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// JPEG quality of overlay frames (1-100).
    #[arg(long, env = "LOOKOUT_VIEWER_OVERLAY_QUALITY", default_value_t = 80, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub overlay_quality: u8,

    /// Changes read back from the changes topic at start, so the page's history (with
    /// thumbnails) survives a restart; older ones are read when a page scrolls to them.
    #[arg(long, env = "LOOKOUT_VIEWER_HISTORY", default_value_t = 1000)]
    pub history: u64,
}

impl ViewerArgs {
    /// The state's configuration; reads the TLS certificate and key.
    ///
    /// # Errors
    ///
    /// [`ViewerError::Tls`] when `--tls-cert` or `--tls-key` cannot be used.
    pub fn config(&self) -> Result<ViewerConfig, ViewerError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig::from_pem_files(cert, key)?),
            _ => None,
        };
        Ok(ViewerConfig {
            max_clients: self.max_clients,
            max_cameras: self.max_cameras,
            overlay_default: self.overlay_default,
            overlay_quality: self.overlay_quality,
            camera_idle: self.camera_idle,
            history: self.history,
            auth_token: AuthToken::new(&self.auth_token),
            server: ServerLimits {
                max_connections: self.max_connections,
                header_timeout: self.header_timeout,
                write_timeout: self.write_timeout,
            },
            tls,
        })
    }
}

/// Runs the viewer on `listener` until `shutdown` is cancelled: the live subscriptions and
/// the web server. A failure of either cancels `shutdown` and is returned; so is a TLS
/// certificate or key that cannot be used, before anything starts.
pub async fn run(
    args: ViewerArgs,
    listener: TcpListener,
    bus: Bus,
    shutdown: CancellationToken,
) -> Result<(), ViewerError> {
    let state = ViewerState::new(args.config()?, shutdown.clone());
    let following = async {
        let r = follow(&bus, state.clone(), shutdown.clone()).await;
        if r.is_err() {
            shutdown.cancel();
        }
        r
    };
    let serving = async {
        let r = serve(listener, state.clone(), shutdown.clone()).await;
        if r.is_err() {
            shutdown.cancel();
        }
        r
    };
    let (followed, served, ()) = tokio::join!(following, serving, forget_idle(&state, &shutdown));
    followed?;
    served
}

/// Forgets idle cameras every quarter of `--camera-idle` (between 1 s and 1 min) until
/// `shutdown`.
async fn forget_idle(state: &ViewerState, shutdown: &CancellationToken) {
    let every =
        (state.config().camera_idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {
                state.forget_idle(Instant::now());
            }
        }
    }
}

/// Serves [`app`] on `listener`, with the limits of [`ViewerConfig::server`], until
/// `shutdown` is cancelled; open streams end then, so this returns promptly.
pub async fn serve(
    listener: TcpListener,
    state: ViewerState,
    shutdown: CancellationToken,
) -> Result<(), ViewerError> {
    let addr = listener
        .local_addr()
        .map_err(|source| ViewerError::Serve { addr: ([0, 0, 0, 0], 0).into(), source })?;
    let limits = state.config().server;
    let authenticated = state.config().auth_token.is_some();
    let tls = state.config().tls.clone();
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(addr = %addr, url = %format!("{scheme}://{addr}/"), authenticated, tls = tls.is_some(), max_connections = limits.max_connections, "viewer listening");
    if !authenticated && !addr.ip().is_loopback() {
        warn!(addr = %addr, "the viewer is reachable from other machines without authentication: set --auth-token");
    }
    server::serve(listener, app(state), limits, tls, shutdown).await;
    info!(addr = %addr, "viewer stopped serving");
    Ok(())
}

/// Feeds `state` from the frames, predictions and changes topics (live mode) until
/// `shutdown` is cancelled.
pub async fn follow(
    bus: &Bus,
    state: ViewerState,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let frames = {
        let state = state.clone();
        bus.live(&topics::FRAMES).run(
            move |m: Incoming<Frame>| {
                state.on_frame(m.message);
                std::future::ready(Ok(()))
            },
            shutdown.clone(),
        )
    };
    let predictions = {
        let state = state.clone();
        bus.live(&topics::PREDICTIONS).run(
            move |m: Incoming<Prediction>| {
                state.on_prediction(&m.message);
                std::future::ready(Ok(()))
            },
            shutdown.clone(),
        )
    };
    let history = state.config().history;
    state.read_history_from(bus.clone());
    let changes = bus.live(&topics::CHANGES).with_history(history).run(
        move |m: Incoming<PredictionChange>| {
            state.on_change_at(&m.message, m.meta.partition, m.meta.offset);
            std::future::ready(Ok(()))
        },
        shutdown,
    );
    tokio::try_join!(frames, predictions, changes)?;
    Ok(())
}
