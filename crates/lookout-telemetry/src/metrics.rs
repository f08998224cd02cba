//! Metric names of the telemetry crate, as constants.

/// Log records that were not shipped. Label `reason`: `queue_full` (the service logged faster
/// than the records could be published), `closed` (the shipping thread is gone), `publish`
/// (the producer refused the record) or `delivery` (the brokers did not acknowledge it).
pub const LOG_RECORDS_DROPPED: &str = "lookout_telemetry_log_records_dropped_total";

/// Log records the brokers acknowledged on the logs topic.
pub const LOG_RECORDS_SHIPPED: &str = "lookout_telemetry_log_records_shipped_total";

/// Help texts of this crate's metrics and of the bus's, which every service exports
/// (`# HELP` on `/metrics`).
pub(crate) fn describe() {
    use lookout_bus::metrics as bus;
    use metrics::{Unit, describe_counter};
    describe_counter!(LOG_RECORDS_DROPPED, "Log records that were not shipped, by reason");
    describe_counter!(
        LOG_RECORDS_SHIPPED,
        "Log records the brokers acknowledged on the logs topic"
    );
    describe_counter!(bus::PRODUCED_MESSAGES, "Messages delivered to the brokers, by topic");
    describe_counter!(bus::PRODUCED_BYTES, Unit::Bytes, "Payload bytes delivered to the brokers");
    describe_counter!(bus::PRODUCE_ERRORS, "Messages the producer could not send, by kind");
    describe_counter!(bus::CONSUMED_MESSAGES, "Messages handled by a consumer (offset stored)");
    describe_counter!(bus::DEAD_LETTERS, "Messages copied to the dead-letter topic");
    describe_counter!(bus::HANDLER_RETRIES, "Transient handler failures that were retried");
    describe_counter!(bus::LIVE_DECODE_ERRORS, "Messages a live subscription could not decode");
}
