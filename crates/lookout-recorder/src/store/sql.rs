//! Every statement the store runs. Both backends run the same text (`$N` placeholders,
//! `ON CONFLICT` and `RETURNING` work in both); only the schemas differ, in
//! `migrations/postgres` and `migrations/sqlite`.

/// Every statement by name; a test prepares each against both migrated backends, so a typo in
/// a column or table name fails the tests rather than production.
pub const STATEMENTS: &[(&str, &str)] = &[
    ("insert state", INSERT_STATE),
    ("update state", UPDATE_STATE),
    ("insert waiting", INSERT_WAITING),
    ("delete waiting", DELETE_WAITING),
    ("insert change", INSERT_CHANGE),
    ("find change", FIND_CHANGE),
    ("load states", LOAD_STATES),
    ("load state", LOAD_STATE),
    ("load window", LOAD_WINDOW),
    ("load stream window", LOAD_STREAM_WINDOW),
    ("unpublished", UNPUBLISHED),
    ("mark published", MARK_PUBLISHED),
    ("purge", PURGE),
    ("list changes", LIST_CHANGES),
    ("snapshot", SNAPSHOT),
    ("ping", PING),
];

pub(super) const INSERT_STATE: &str = "INSERT INTO detector_state (camera_id, model_name, \
     model_version, revision, last_decided, last_capture_ms, stable_label, stable_class_id, \
     stable_score, run_start, run_capture_ms, run_label, run_class_id, run_score, run_length, \
     updated_ms) VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
     ON CONFLICT (camera_id, model_name, model_version) DO NOTHING";
pub(super) const UPDATE_STATE: &str = "UPDATE detector_state SET revision = revision + 1, \
     last_decided = $4, last_capture_ms = $5, stable_label = $6, stable_class_id = $7, \
     stable_score = $8, run_start = $9, run_capture_ms = $10, run_label = $11, \
     run_class_id = $12, run_score = $13, run_length = $14, updated_ms = $15 \
     WHERE camera_id = $1 AND model_name = $2 AND model_version = $3 AND revision = $16";
pub(super) const INSERT_WAITING: &str = "INSERT INTO detector_window (camera_id, model_name, \
     model_version, frame_sequence, capture_time_ms, label, class_id, score, skipped) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (camera_id, model_name, model_version, frame_sequence) DO NOTHING";
pub(super) const DELETE_WAITING: &str = "DELETE FROM detector_window WHERE camera_id = $1 \
     AND model_name = $2 AND model_version = $3 AND frame_sequence <= $4";
pub(super) const INSERT_CHANGE: &str = "INSERT INTO changes (camera_id, frame_sequence, \
     model_name, model_version, previous_label, previous_class_id, previous_score, new_label, \
     new_class_id, new_score, capture_time_ms, recorded_time_ms, snapshot, snapshot_missing) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
     ON CONFLICT (camera_id, frame_sequence, model_name, model_version) DO NOTHING \
     RETURNING change_id";
pub(super) const FIND_CHANGE: &str = "SELECT change_id FROM changes WHERE camera_id = $1 \
     AND frame_sequence = $2 AND model_name = $3 AND model_version = $4";
pub(super) const LOAD_STATES: &str = "SELECT camera_id, model_name, model_version, revision, \
     last_decided, last_capture_ms, stable_label, stable_class_id, stable_score, run_start, \
     run_capture_ms, run_label, run_class_id, run_score, run_length, updated_ms \
     FROM detector_state";
pub(super) const LOAD_STATE: &str = "SELECT camera_id, model_name, model_version, revision, \
     last_decided, last_capture_ms, stable_label, stable_class_id, stable_score, run_start, \
     run_capture_ms, run_label, run_class_id, run_score, run_length, updated_ms \
     FROM detector_state WHERE camera_id = $1 AND model_name = $2 AND model_version = $3";
pub(super) const LOAD_WINDOW: &str = "SELECT camera_id, model_name, model_version, \
     frame_sequence, capture_time_ms, label, class_id, score, skipped FROM detector_window \
     ORDER BY camera_id, model_name, model_version, frame_sequence";
pub(super) const LOAD_STREAM_WINDOW: &str = "SELECT camera_id, model_name, model_version, \
     frame_sequence, capture_time_ms, label, class_id, score, skipped FROM detector_window \
     WHERE camera_id = $1 AND model_name = $2 AND model_version = $3 ORDER BY frame_sequence";
pub(super) const UNPUBLISHED: &str = "SELECT change_id, camera_id, frame_sequence, model_name, \
     model_version, previous_label, previous_class_id, previous_score, new_label, new_class_id, \
     new_score, capture_time_ms, recorded_time_ms, \
     CAST(COALESCE(LENGTH(snapshot), 0) AS BIGINT) AS snapshot_bytes, snapshot_missing \
     FROM changes WHERE NOT published ORDER BY change_id LIMIT $1";
pub(super) const MARK_PUBLISHED: &str = "UPDATE changes SET published = TRUE WHERE change_id = $1";
pub(super) const PURGE: &str = "DELETE FROM changes WHERE change_id IN \
     (SELECT change_id FROM changes WHERE capture_time_ms < $1 ORDER BY change_id LIMIT $2)";
pub(super) const LIST_CHANGES: &str = "SELECT * FROM (SELECT change_id, camera_id, \
     frame_sequence, model_name, model_version, previous_label, previous_class_id, \
     previous_score, new_label, new_class_id, new_score, capture_time_ms, recorded_time_ms, \
     CAST(COALESCE(LENGTH(snapshot), 0) AS BIGINT) AS snapshot_bytes, snapshot_missing \
     FROM changes WHERE (CAST($1 AS TEXT) IS NULL OR camera_id = $1) AND capture_time_ms >= $2 \
     AND (CAST($4 AS TEXT) IS NULL OR model_name = $4) \
     ORDER BY capture_time_ms DESC, change_id DESC LIMIT $3) AS newest \
     ORDER BY capture_time_ms, change_id";
pub(super) const SNAPSHOT: &str =
    "SELECT snapshot, snapshot_missing FROM changes WHERE change_id = $1";
pub(super) const PING: &str = "SELECT 1";
