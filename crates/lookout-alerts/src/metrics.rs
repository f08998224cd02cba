//! Metric names of the alerts service, as constants. The `rule` label is a rule's name (a
//! handful, from the rules file); the `sink` label is the sink's kind (`mqtt`, `webhook`,
//! `stdout`), never its address.

/// Alerts the rule engine published on the alerts topic (label `rule`).
pub const ALERTS_FIRED: &str = "lookout_alerts_fired_total";
/// Alerts a sink accepted (label `sink`).
pub const ALERTS_DELIVERED: &str = "lookout_alerts_delivered_total";
/// Failed delivery attempts, each retried after a backoff (label `sink`).
pub const SINK_ERRORS: &str = "lookout_alerts_sink_errors_total";
/// Alerts a sink refused for good, dead-lettered (label `sink`).
pub const ALERTS_REFUSED: &str = "lookout_alerts_refused_total";
/// Seconds from an alert's firing to its acceptance by every sink (histogram).
pub const DELIVERY_DELAY: &str = "lookout_alerts_delivery_delay_seconds";
