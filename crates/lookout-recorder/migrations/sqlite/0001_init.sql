-- Lookout recorder schema (SQLite). Times are Unix milliseconds, UTC.
-- Same tables and meaning as migrations/postgres/0001_init.sql.

CREATE TABLE cameras (
    camera_id      TEXT PRIMARY KEY NOT NULL,
    first_seen_ms  INTEGER NOT NULL,
    last_change_ms INTEGER
);

-- AUTOINCREMENT: a purged change's id is never handed out again (ids are published).
CREATE TABLE changes (
    change_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    camera_id         TEXT NOT NULL REFERENCES cameras (camera_id),
    frame_sequence    INTEGER NOT NULL,
    model_name        TEXT NOT NULL,
    model_version     TEXT NOT NULL,
    previous_label    TEXT,
    previous_class_id INTEGER,
    previous_score    REAL,
    new_label         TEXT NOT NULL,
    new_class_id      INTEGER NOT NULL,
    new_score         REAL NOT NULL,
    capture_time_ms   INTEGER NOT NULL,
    recorded_time_ms  INTEGER NOT NULL,
    snapshot          BLOB,
    snapshot_missing  BOOLEAN NOT NULL,
    published         BOOLEAN NOT NULL DEFAULT FALSE,
    CONSTRAINT changes_one_per_frame UNIQUE (camera_id, frame_sequence, model_name, model_version)
);
CREATE INDEX changes_by_capture_time ON changes (capture_time_ms);
CREATE INDEX changes_by_camera ON changes (camera_id, capture_time_ms);
CREATE INDEX changes_unpublished ON changes (change_id) WHERE NOT published;

CREATE TABLE detector_state (
    camera_id       TEXT NOT NULL,
    model_name      TEXT NOT NULL,
    model_version   TEXT NOT NULL,
    revision        INTEGER NOT NULL,
    last_decided    INTEGER,
    last_capture_ms INTEGER,
    stable_label    TEXT,
    stable_class_id INTEGER,
    stable_score    REAL,
    run_start       INTEGER,
    run_capture_ms  INTEGER,
    run_label       TEXT,
    run_class_id    INTEGER,
    run_score       REAL,
    run_length      INTEGER,
    updated_ms      INTEGER NOT NULL,
    PRIMARY KEY (camera_id, model_name, model_version)
);

CREATE TABLE detector_window (
    camera_id       TEXT NOT NULL,
    model_name      TEXT NOT NULL,
    model_version   TEXT NOT NULL,
    frame_sequence  INTEGER NOT NULL,
    capture_time_ms INTEGER NOT NULL,
    label           TEXT,
    class_id        INTEGER,
    score           REAL,
    PRIMARY KEY (camera_id, model_name, model_version, frame_sequence)
);
