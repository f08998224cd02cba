-- Same as migrations/postgres/0002_skipped_no_cameras.sql. SQLite cannot drop a foreign key,
-- so `changes` is rebuilt without the reference to `cameras`.
ALTER TABLE detector_window ADD COLUMN skipped BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE changes_new (
    change_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    camera_id         TEXT NOT NULL,
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
INSERT INTO changes_new SELECT change_id, camera_id, frame_sequence, model_name, model_version,
    previous_label, previous_class_id, previous_score, new_label, new_class_id, new_score,
    capture_time_ms, recorded_time_ms, snapshot, snapshot_missing, published FROM changes;
-- Ids are never handed out again, even those of purged changes: carry the counter over.
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'changes_new', seq FROM sqlite_sequence WHERE name = 'changes'
    AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'changes_new');
UPDATE sqlite_sequence
    SET seq = MAX(seq, COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0))
    WHERE name = 'changes_new';
DROP TABLE changes;
ALTER TABLE changes_new RENAME TO changes;
CREATE INDEX changes_by_capture_time ON changes (capture_time_ms);
CREATE INDEX changes_by_camera ON changes (camera_id, capture_time_ms);
CREATE INDEX changes_unpublished ON changes (change_id) WHERE NOT published;
DROP TABLE cameras;
