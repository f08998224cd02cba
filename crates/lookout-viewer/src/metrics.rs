//! Metric names of the viewer.

/// Frames taken from the frames topic (`outcome`: shown, out_of_order, bad_frame,
/// too_many_cameras).
pub const FRAMES_RECEIVED: &str = "lookout_viewer_frames_received_total";
/// Predictions taken from the predictions topic (`outcome`: applied, stale, empty: no label,
/// e.g. a skipped frame).
pub const PREDICTIONS_RECEIVED: &str = "lookout_viewer_predictions_received_total";
/// Prediction changes taken from the changes topic.
pub const CHANGES_RECEIVED: &str = "lookout_viewer_changes_received_total";
/// Clients connected now (`kind`: mjpeg, overlay, events).
pub const CLIENTS: &str = "lookout_viewer_clients";
/// Client connections accepted since start (`kind`). Not `…_clients_total`: that would share
/// the family of the [`CLIENTS`] gauge.
pub const CONNECTIONS: &str = "lookout_viewer_connections_total";
/// Stream clients refused because `--max-clients` were connected.
pub const CLIENTS_REJECTED: &str = "lookout_viewer_clients_rejected_total";
/// MJPEG parts written to clients (`kind`).
pub const PARTS_SENT: &str = "lookout_viewer_parts_sent_total";
/// Frames a slow MJPEG client skipped because a newer one was there when it was ready (`kind`).
pub const FRAMES_SKIPPED: &str = "lookout_viewer_frames_skipped_total";
/// Events a slow event client skipped.
pub const EVENTS_SKIPPED: &str = "lookout_viewer_events_skipped_total";
/// From a frame's capture to its part being handed to a client's connection.
pub const CAPTURE_TO_SHOWN_SECONDS: &str = "lookout_viewer_capture_to_shown_seconds";
/// Overlay frames rendered (`outcome`: rendered, failed).
pub const OVERLAY_RENDERS: &str = "lookout_viewer_overlay_renders_total";
/// Time to decode, draw and encode one overlay frame.
pub const OVERLAY_RENDER_SECONDS: &str = "lookout_viewer_overlay_render_seconds";
/// Connections open now.
pub const OPEN_CONNECTIONS: &str = "lookout_viewer_open_connections";
/// Connections past their TLS handshake (if any) whose protocol is known (`protocol`:
/// http/1.1, h2; `tls`: true, false).
pub const HTTP_CONNECTIONS: &str = "lookout_viewer_http_connections_total";
/// TLS handshakes that failed (a client that does not trust the certificate, or no TLS).
pub const TLS_HANDSHAKE_FAILURES: &str = "lookout_viewer_tls_handshake_failures_total";
/// Connections closed as soon as they were accepted because `--max-connections` were open.
pub const CONNECTIONS_REFUSED: &str = "lookout_viewer_connections_refused_total";
/// Connections ended because the client took no bytes for `--write-timeout`.
pub const WRITE_TIMEOUTS: &str = "lookout_viewer_write_timeouts_total";
/// Requests refused for a missing or wrong `--auth-token`.
pub const UNAUTHORIZED: &str = "lookout_viewer_unauthorized_total";
/// Cameras forgotten after `--camera-idle` without a frame or prediction.
pub const CAMERAS_FORGOTTEN: &str = "lookout_viewer_cameras_forgotten_total";
