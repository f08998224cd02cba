//! Metric names of the telemetry crate, as constants.

/// Log records that were not shipped. Label `reason`: `queue_full` (the service logged faster
/// than the records could be published), `closed` (the shipping thread is gone), `publish`
/// (the producer refused the record) or `delivery` (the brokers did not acknowledge it).
pub const LOG_RECORDS_DROPPED: &str = "lookout_telemetry_log_records_dropped_total";

/// Log records the brokers acknowledged on the logs topic.
pub const LOG_RECORDS_SHIPPED: &str = "lookout_telemetry_log_records_shipped_total";
