//! Metric names of the predictor.

/// Frames taken from the topic (`outcome`: labelled, too_old, undecodable, too_large,
/// unsupported). Every frame not labelled also gets a prediction with its `skipped` reason.
pub const FRAMES: &str = "lookout_predictor_frames_total";
/// Frames handed to the model in one run (1 unless batching is on and frames queued up).
pub const BATCH_FRAMES: &str = "lookout_predictor_batch_frames";
/// JPEG decode time per frame.
pub const DECODE_SECONDS: &str = "lookout_predictor_decode_seconds";
/// Resize, crop and normalise time per frame.
pub const PREPROCESS_SECONDS: &str = "lookout_predictor_preprocess_seconds";
/// Model time per frame (a batch's time divided by its frames).
pub const INFERENCE_SECONDS: &str = "lookout_predictor_inference_seconds";
/// From the frame's capture to its prediction being delivered.
pub const CAPTURE_TO_PREDICTED_SECONDS: &str = "lookout_predictor_capture_to_predicted_seconds";
