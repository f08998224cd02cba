//! What the store reads and writes.

use bytes::Bytes;

use crate::detector::{Change, Label, Observation, StreamState};

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// One camera labelled by one model: the unit of change detection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// Camera id.
    pub camera_id: String,
    /// Model name.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
}

impl StreamKey {
    /// `name@version`.
    pub fn model(&self) -> String {
        format!("{}@{}", self.model_name, self.model_version)
    }
}

/// A stream's persisted detector state and waiting predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredStream {
    /// Which stream.
    pub key: StreamKey,
    /// Incremented by every write; a write expecting another revision is a conflict.
    pub revision: i64,
    /// The detector state.
    pub state: StreamState,
    /// Predictions waiting in the reorder window.
    pub window: Vec<Observation>,
}

/// A change to store, with its frame when there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct NewChange {
    /// The change.
    pub change: Change,
    /// JPEG of the change's frame; `None` when it could not be had (see `snapshots`).
    pub snapshot: Option<Bytes>,
}

/// One stream's part of a commit: what its detector decided over a batch of predictions.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Which stream.
    pub key: StreamKey,
    /// The revision the state was read at (0: the stream is new).
    pub revision: i64,
    /// The state after the decision.
    pub state: StreamState,
    /// Predictions of the batch that now wait in the window.
    pub insert_waiting: Vec<Observation>,
    /// Delete waiting predictions up to this sequence (they were decided).
    pub delete_waiting_upto: Option<u64>,
    /// Changes decided, in sequence order.
    pub changes: Vec<NewChange>,
    /// The time of the decision, Unix milliseconds.
    pub now_ms: i64,
}

/// What a committed [`Decision`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The stream's new revision.
    pub revision: i64,
    /// Database ids of the decision's changes, in order.
    pub change_ids: Vec<i64>,
}

/// A stored change.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredChange {
    /// Database id.
    pub change_id: i64,
    /// Camera and model.
    pub key: StreamKey,
    /// The frame where the new label started.
    pub frame_sequence: u64,
    /// The label before, `None` for a camera's first label.
    pub previous: Option<Label>,
    /// The new label.
    pub current: Label,
    /// Capture time of the change's frame, Unix milliseconds.
    pub capture_time_ms: i64,
    /// When the change was stored, Unix milliseconds.
    pub recorded_time_ms: i64,
    /// Size of the stored snapshot in bytes (0 when missing).
    pub snapshot_bytes: i64,
    /// True when the change was stored without its frame.
    pub snapshot_missing: bool,
}

/// A stored change's snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredSnapshot {
    /// No change has this id.
    NoSuchChange,
    /// The change was stored without its frame.
    Missing,
    /// The JPEG.
    Jpeg(Vec<u8>),
}

/// Which changes to list.
#[derive(Debug, Clone, Default)]
pub struct ChangeFilter {
    /// Only this camera.
    pub camera: Option<String>,
    /// Only this model's changes (by name).
    pub model: Option<String>,
    /// Only changes captured at or after this time, Unix milliseconds.
    pub since_ms: Option<i64>,
    /// At most this many (the newest are kept).
    pub limit: Option<i64>,
}
