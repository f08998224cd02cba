-- A prediction of a frame the predictor did not label (too old, undecodable, …) waits in the
-- reorder window like any other; it is no evidence for or against a label.
ALTER TABLE detector_window ADD COLUMN skipped BOOLEAN NOT NULL DEFAULT FALSE;

-- The cameras table was written and never read.
ALTER TABLE changes DROP CONSTRAINT IF EXISTS changes_camera_id_fkey;
DROP TABLE cameras;
