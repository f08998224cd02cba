//! Metric names of the bus, as constants (labels: `topic`, and `kind` for errors).

/// Messages delivered to the brokers.
pub const PRODUCED_MESSAGES: &str = "lookout_bus_produced_messages_total";
/// Payload bytes delivered to the brokers.
pub const PRODUCED_BYTES: &str = "lookout_bus_produced_bytes_total";
/// Messages the producer could not send (`kind`: too_large, queue_full, delivery).
pub const PRODUCE_ERRORS: &str = "lookout_bus_produce_errors_total";
/// Messages handled successfully by a consumer (offset stored).
pub const CONSUMED_MESSAGES: &str = "lookout_bus_consumed_messages_total";
/// Messages sent to the dead-letter topic.
pub const DEAD_LETTERS: &str = "lookout_bus_dead_letters_total";
/// Transient handler failures that were retried.
pub const HANDLER_RETRIES: &str = "lookout_bus_handler_retries_total";
/// Messages a live subscription could not decode and skipped.
pub const LIVE_DECODE_ERRORS: &str = "lookout_bus_live_decode_errors_total";
