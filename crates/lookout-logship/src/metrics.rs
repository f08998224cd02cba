//! Metric names of the log shipper, as constants. The `sink` label is the sink's kind
//! (`stdout`, `file`, `elasticsearch`, `opensearch`), never its address.

/// Records a sink accepted.
pub const RECORDS_WRITTEN: &str = "lookout_logship_records_written_total";
/// Records a sink refused for good (Elasticsearch per-item errors other than 429 and 5xx).
pub const RECORDS_REFUSED: &str = "lookout_logship_records_refused_total";
/// Refused records copied to the dead-letter topic.
pub const RECORDS_DEAD_LETTERED: &str = "lookout_logship_records_dead_lettered_total";
/// Failed write attempts, each followed by a retry after a backoff.
pub const SINK_ERRORS: &str = "lookout_logship_sink_errors_total";
/// Batches written (label `sink`).
pub const BATCHES: &str = "lookout_logship_batches_total";
/// Records per batch (histogram).
pub const BATCH_RECORDS: &str = "lookout_logship_batch_records";
/// Files a file sink closed and compressed.
pub const FILES_ROTATED: &str = "lookout_logship_files_rotated_total";
/// Files a file sink deleted under its retention limits.
pub const FILES_DELETED: &str = "lookout_logship_files_deleted_total";
