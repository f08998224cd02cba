//! Reading rows: the same columns from Postgres and SQLite rows, whose types differ, hence
//! macros; and the conversions between Rust and database integers.

use super::StoreError;

/// Runs `$body` with `$pool` bound to the Postgres or the SQLite pool: the statements are the
/// same, the types differ.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Postgres($pool) => $body,
            Pool::Sqlite($pool) => $body,
        }
    };
}

/// Reads a detector state row.
macro_rules! state_row {
    ($row:expr) => {{
        let r = &$row;
        let stable = match r.try_get::<Option<String>, _>("stable_label")? {
            Some(name) => Some(Label {
                class_id: class_id(r.try_get("stable_class_id")?),
                name,
                score: score(r.try_get("stable_score")?),
            }),
            None => None,
        };
        let run = match r.try_get::<Option<String>, _>("run_label")? {
            Some(name) => Some(Run {
                start: seq(r.try_get::<Option<i64>, _>("run_start")?.unwrap_or_default()),
                start_capture_ms: r
                    .try_get::<Option<i64>, _>("run_capture_ms")?
                    .unwrap_or_default(),
                label: Label {
                    class_id: class_id(r.try_get("run_class_id")?),
                    name,
                    score: score(r.try_get("run_score")?),
                },
                length: r
                    .try_get::<Option<i64>, _>("run_length")?
                    .unwrap_or(1)
                    .clamp(1, i64::from(u32::MAX)) as u32,
            }),
            None => None,
        };
        StoredStream {
            key: StreamKey {
                camera_id: r.try_get("camera_id")?,
                model_name: r.try_get("model_name")?,
                model_version: r.try_get("model_version")?,
            },
            revision: r.try_get("revision")?,
            state: StreamState {
                last_decided: r.try_get::<Option<i64>, _>("last_decided")?.map(seq),
                last_capture_ms: r.try_get("last_capture_ms")?,
                stable,
                run,
            },
            window: Vec::new(),
        }
    }};
}

/// Reads a reorder-window row: (stream, observation).
macro_rules! window_row {
    ($row:expr) => {{
        let r = &$row;
        let top1 = match r.try_get::<Option<String>, _>("label")? {
            Some(name) => Some(Label {
                class_id: class_id(r.try_get("class_id")?),
                name,
                score: score(r.try_get("score")?),
            }),
            None => None,
        };
        (
            StreamKey {
                camera_id: r.try_get("camera_id")?,
                model_name: r.try_get("model_name")?,
                model_version: r.try_get("model_version")?,
            },
            Observation {
                sequence: seq(r.try_get("frame_sequence")?),
                capture_time_ms: r.try_get("capture_time_ms")?,
                top1,
                skipped: r.try_get("skipped")?,
            },
        )
    }};
}

/// Reads a change row (without the snapshot bytes).
macro_rules! change_row {
    ($row:expr) => {{
        let r = &$row;
        let previous = match r.try_get::<Option<String>, _>("previous_label")? {
            Some(name) => Some(Label {
                class_id: class_id(r.try_get("previous_class_id")?),
                name,
                score: score(r.try_get("previous_score")?),
            }),
            None => None,
        };
        StoredChange {
            change_id: r.try_get("change_id")?,
            key: StreamKey {
                camera_id: r.try_get("camera_id")?,
                model_name: r.try_get("model_name")?,
                model_version: r.try_get("model_version")?,
            },
            frame_sequence: seq(r.try_get("frame_sequence")?),
            previous,
            current: Label {
                class_id: class_id(Some(r.try_get::<i64, _>("new_class_id")?)),
                name: r.try_get("new_label")?,
                score: score(Some(r.try_get::<f64, _>("new_score")?)),
            },
            capture_time_ms: r.try_get("capture_time_ms")?,
            recorded_time_ms: r.try_get("recorded_time_ms")?,
            snapshot_bytes: r.try_get("snapshot_bytes")?,
            snapshot_missing: r.try_get("snapshot_missing")?,
        }
    }};
}

pub(super) fn seq(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

pub(super) fn class_id(v: Option<i64>) -> u32 {
    v.and_then(|v| u32::try_from(v).ok()).unwrap_or_default()
}

/// Scores are `f32` on the wire and stored as `f64`, which holds them exactly.
pub(super) fn score(v: Option<f64>) -> f32 {
    v.unwrap_or_default() as f32
}

pub(super) fn db_seq(what: &'static str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::OutOfRange { what, value: v })
}

pub(super) use {change_row, state_row, window_row, with_pool};
