use std::{net::SocketAddr, path::PathBuf};

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use lookout_bus::BusError;

/// Errors that stop the viewer.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    /// A live subscription failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The HTTP server failed.
    #[error("the web server on {addr} failed: {source}")]
    Serve {
        /// The listening address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// `--tls-cert` or `--tls-key` cannot be used.
    #[error("TLS: {}: {reason}", path.display())]
    Tls {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Errors answered to HTTP clients.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No camera with this id has been seen.
    #[error("unknown camera {id:?}; {}", known_cameras(known))]
    UnknownCamera {
        /// The requested id.
        id: String,
        /// The cameras that exist.
        known: Vec<String>,
    },
    /// The camera is known (from a prediction) but no frame arrived yet.
    #[error("camera {id:?} has sent no frame yet")]
    NoFrameYet {
        /// The camera.
        id: String,
    },
    /// `--max-clients` streams are open.
    #[error("too many clients: {max} streams are open; try again later")]
    TooManyClients {
        /// The limit.
        max: usize,
    },
    /// No such page or file.
    #[error("not found: {path}")]
    NotFound {
        /// The requested path.
        path: String,
    },
}

fn known_cameras(known: &[String]) -> String {
    if known.is_empty() {
        "no camera has sent anything yet".to_owned()
    } else {
        format!("cameras: {}", known.join(", "))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::UnknownCamera { .. } | Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::NoFrameYet { .. } | Self::TooManyClients { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let mut response = (status, format!("{self}\n")).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}
