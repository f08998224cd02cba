//! Metric names, all `lookout_recorder_*`. Labels have few values (never a camera or a frame).

/// Predictions handled, by `outcome`: `decided` (at once or from the window), `waiting`
/// (out of order, in the window), `duplicate` (re-delivered, ignored).
pub const PREDICTIONS: &str = "lookout_recorder_predictions_total";
/// Frames decided by change detection (in sequence order).
pub const FRAMES_DECIDED: &str = "lookout_recorder_frames_decided_total";
/// Gaps in a camera's sequence given up on, by `reason`: `timeout`, `window_full`, `restart`
/// (the sequence went far back: a new run of the camera).
pub const GAPS_SKIPPED: &str = "lookout_recorder_gaps_skipped_total";
/// Changes stored.
pub const CHANGES: &str = "lookout_recorder_changes_total";
/// Changes stored without a snapshot because the frame was gone.
pub const SNAPSHOTS_MISSING: &str = "lookout_recorder_snapshots_missing_total";
/// Seconds from a change's frame capture to its commit in the database.
pub const CHANGE_LATENCY: &str = "lookout_recorder_change_latency_seconds";
/// Seconds per database transaction (one decision).
pub const COMMIT_DURATION: &str = "lookout_recorder_commit_duration_seconds";
/// Failed database operations.
pub const DATABASE_ERRORS: &str = "lookout_recorder_database_errors_total";
/// 1 while the database is usable.
pub const DATABASE_UP: &str = "lookout_recorder_database_up";
/// Detector state written concurrently by another recorder (reloaded and redone).
pub const STATE_CONFLICTS: &str = "lookout_recorder_state_conflicts_total";
/// Streams (camera and model) known.
pub const STREAMS: &str = "lookout_recorder_streams";
/// Frames read, by `outcome`: `buffered`, `indexed` (only the position kept), `not_needed`,
/// `undecodable`.
pub const FRAMES: &str = "lookout_recorder_frames_total";
/// Frames read again from Kafka for a change's snapshot.
pub const FRAMES_FETCHED: &str = "lookout_recorder_frames_fetched_total";
/// Frame positions dropped from the full index of a camera whose predictions stalled.
pub const FRAMES_EVICTED: &str = "lookout_recorder_frames_evicted_total";
/// Frames released once no change could start at them any more.
pub const FRAMES_RELEASED: &str = "lookout_recorder_frames_released_total";
/// Times the frames reader waited for a camera's predictions to catch up.
pub const FRAME_BUFFER_WAITS: &str = "lookout_recorder_frame_buffer_waits_total";
/// Changes published on `lookout.changes`.
pub const EVENTS_PUBLISHED: &str = "lookout_recorder_events_published_total";
/// Failed publications (retried).
pub const EVENT_ERRORS: &str = "lookout_recorder_event_errors_total";
/// Changes deleted by the retention policy.
pub const PURGED: &str = "lookout_recorder_purged_changes_total";
