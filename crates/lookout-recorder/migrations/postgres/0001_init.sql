-- Lookout recorder schema (Postgres). Times are Unix milliseconds, UTC.

-- Every camera the recorder has seen a prediction of.
CREATE TABLE cameras (
    camera_id      TEXT PRIMARY KEY,
    first_seen_ms  BIGINT NOT NULL,
    last_change_ms BIGINT
);

-- Stable label changes, one row per (camera, frame, model): a re-delivered prediction can
-- never add a second row.
CREATE TABLE changes (
    change_id         BIGSERIAL PRIMARY KEY,
    camera_id         TEXT NOT NULL REFERENCES cameras (camera_id),
    frame_sequence    BIGINT NOT NULL,
    model_name        TEXT NOT NULL,
    model_version     TEXT NOT NULL,
    previous_label    TEXT,
    previous_class_id BIGINT,
    previous_score    DOUBLE PRECISION,
    new_label         TEXT NOT NULL,
    new_class_id      BIGINT NOT NULL,
    new_score         DOUBLE PRECISION NOT NULL,
    capture_time_ms   BIGINT NOT NULL,
    recorded_time_ms  BIGINT NOT NULL,
    snapshot          BYTEA,
    snapshot_missing  BOOLEAN NOT NULL,
    -- Set once the change was published on lookout.changes (transactional outbox).
    published         BOOLEAN NOT NULL DEFAULT FALSE,
    CONSTRAINT changes_one_per_frame UNIQUE (camera_id, frame_sequence, model_name, model_version)
);
CREATE INDEX changes_by_capture_time ON changes (capture_time_ms);
CREATE INDEX changes_by_camera ON changes (camera_id, capture_time_ms);
CREATE INDEX changes_unpublished ON changes (change_id) WHERE NOT published;

-- The change detector's state per (camera, model), written in the same transaction as the
-- changes it decides: the stable label, the run of frames that may become the next change and
-- the last frame sequence decided.
CREATE TABLE detector_state (
    camera_id       TEXT NOT NULL,
    model_name      TEXT NOT NULL,
    model_version   TEXT NOT NULL,
    revision        BIGINT NOT NULL,
    last_decided    BIGINT,
    last_capture_ms BIGINT,
    stable_label    TEXT,
    stable_class_id BIGINT,
    stable_score    DOUBLE PRECISION,
    run_start       BIGINT,
    run_capture_ms  BIGINT,
    run_label       TEXT,
    run_class_id    BIGINT,
    run_score       DOUBLE PRECISION,
    run_length      BIGINT,
    updated_ms      BIGINT NOT NULL,
    PRIMARY KEY (camera_id, model_name, model_version)
);

-- Predictions received out of order and not decided yet (the reorder window). Their Kafka
-- offsets may already be committed, so they must survive a crash.
CREATE TABLE detector_window (
    camera_id       TEXT NOT NULL,
    model_name      TEXT NOT NULL,
    model_version   TEXT NOT NULL,
    frame_sequence  BIGINT NOT NULL,
    capture_time_ms BIGINT NOT NULL,
    label           TEXT,
    class_id        BIGINT,
    score           DOUBLE PRECISION,
    PRIMARY KEY (camera_id, model_name, model_version, frame_sequence)
);
