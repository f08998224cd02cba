//! The topic registry: each topic is a constant that binds its name to its message type.
//!
//! | topic | message | key | partitions | partitioning |
//! |---|---|---|---|---|
//! | `lookout.frames` | [`Frame`] | camera id | 6 | spread by frame sequence |
//! | `lookout.predictions` | [`Prediction`] | camera id | 3 | by key |
//! | `lookout.changes` | [`PredictionChange`] | camera id | 1 | by key |
//! | `lookout.logs` | [`LogRecord`] | service name | 3 | by key |
//! | `lookout.alerts` | [`Alert`] | camera id | 1 | by key |
//! | `lookout.dlq` | the original bytes | the original key | 1 | by key |
//!
//! Each topic also says how long the brokers keep it ([`Retention`], set when
//! `lookout topics --create` creates it): frames for an hour, predictions for a week, changes
//! and alerts for a month, logs for two days, dead letters for a week.
//!
//! Frames of one camera are spread over all partitions of `lookout.frames` (partition =
//! (hash(camera) + sequence) mod partitions), so predictor replicas in one consumer group
//! share even a single camera's load. Order is restored downstream by sequence number.

use std::marker::PhantomData;

use crate::v1::{Alert, Frame, LogRecord, Prediction, PredictionChange};

/// A protobuf message that travels on a Lookout topic.
pub trait BusMessage: prost::Message + prost::Name + Default + Send + Sync + 'static {
    /// The Kafka message key.
    fn key(&self) -> &str;

    /// The per-key sequence number, for topics partitioned with
    /// [`Partitioning::SpreadBySequence`].
    fn sequence(&self) -> Option<u64> {
        None
    }
}

impl BusMessage for Frame {
    fn key(&self) -> &str {
        &self.camera_id
    }
    fn sequence(&self) -> Option<u64> {
        Some(self.sequence)
    }
}

impl BusMessage for Prediction {
    fn key(&self) -> &str {
        &self.camera_id
    }
    fn sequence(&self) -> Option<u64> {
        Some(self.frame_sequence)
    }
}

impl BusMessage for PredictionChange {
    fn key(&self) -> &str {
        &self.camera_id
    }
    fn sequence(&self) -> Option<u64> {
        Some(self.frame_sequence)
    }
}

impl BusMessage for Alert {
    fn key(&self) -> &str {
        &self.camera_id
    }
}

impl BusMessage for LogRecord {
    fn key(&self) -> &str {
        &self.service
    }
}

/// How messages are assigned to a topic's partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioning {
    /// Kafka's default: the partition is a hash of the key, so one key keeps its order.
    ByKey,
    /// Consecutive sequence numbers of one key go to consecutive partitions, so a consumer
    /// group shares one key's load; consumers restore order by sequence number.
    SpreadBySequence,
}

/// How much of a topic the brokers keep: Kafka's topic configs `retention.ms`, `segment.ms`
/// and `retention.bytes`. Kafka deletes whole segments, so a segment is closed after
/// `segment_ms` to let time-based retention act on a quiet topic (the brokers' default closes it
/// at 1 GiB or after 7 days).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// How long a message is kept, in milliseconds.
    pub ms: i64,
    /// How long a segment stays open, in milliseconds.
    pub segment_ms: i64,
    /// Most bytes kept per partition; -1 for no limit.
    pub bytes: i64,
}

/// One hour, in milliseconds.
const HOUR_MS: i64 = 3_600_000;
/// One day, in milliseconds.
const DAY_MS: i64 = 24 * HOUR_MS;
/// One GiB.
const GIB: i64 = 1 << 30;

impl Retention {
    /// The topic configs, named as Kafka names them.
    pub fn configs(&self) -> [(&'static str, String); 3] {
        [
            ("retention.ms", self.ms.to_string()),
            ("segment.ms", self.segment_ms.to_string()),
            ("retention.bytes", self.bytes.to_string()),
        ]
    }
}

/// Frames are large and only worth seeing live or shortly after: an hour, at most 1 GiB per
/// partition, in segments of 10 minutes.
pub const FRAMES_RETENTION: Retention =
    Retention { ms: HOUR_MS, segment_ms: HOUR_MS / 6, bytes: GIB };
/// Predictions are small and worth replaying: a week, in daily segments.
pub const PREDICTIONS_RETENTION: Retention =
    Retention { ms: 7 * DAY_MS, segment_ms: DAY_MS, bytes: 2 * GIB };
/// Changes are few: a month, in daily segments.
pub const CHANGES_RETENTION: Retention =
    Retention { ms: 30 * DAY_MS, segment_ms: DAY_MS, bytes: GIB };
/// Logs until the shippers have surely written them: two days, in hourly segments.
pub const LOGS_RETENTION: Retention = Retention { ms: 2 * DAY_MS, segment_ms: HOUR_MS, bytes: GIB };
/// Dead letters wait for someone to look: a week, in daily segments.
pub const DLQ_RETENTION: Retention = Retention { ms: 7 * DAY_MS, segment_ms: DAY_MS, bytes: GIB };

/// A topic bound to its message type `M`.
#[derive(Debug)]
pub struct Topic<M> {
    name: &'static str,
    partitions: i32,
    partitioning: Partitioning,
    key: &'static str,
    retention: Retention,
    _message: PhantomData<fn() -> M>,
}

impl<M> Clone for Topic<M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for Topic<M> {}

impl<M: BusMessage> Topic<M> {
    /// Declares a topic. Only this module declares topics, so the registry stays in one place.
    const fn new(
        name: &'static str,
        partitions: i32,
        partitioning: Partitioning,
        key: &'static str,
        retention: Retention,
    ) -> Self {
        Self { name, partitions, partitioning, key, retention, _message: PhantomData }
    }

    /// How much of the topic the brokers keep.
    pub const fn retention(&self) -> Retention {
        self.retention
    }

    /// The topic name without any deployment prefix.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The partition count the topic is created with.
    pub const fn partitions(&self) -> i32 {
        self.partitions
    }

    /// How messages are assigned to partitions.
    pub const fn partitioning(&self) -> Partitioning {
        self.partitioning
    }

    /// What the Kafka key holds, in words.
    pub const fn key_doc(&self) -> &'static str {
        self.key
    }

    /// The fully qualified protobuf type name, e.g. `lookout.v1.Frame`.
    pub fn message_type(&self) -> String {
        M::full_name()
    }

    /// The `content-type` header value messages of this topic are published with, in the
    /// conventional form: `application/x-protobuf; messageType=lookout.v1.Frame`.
    pub fn content_type(&self) -> String {
        content_type_of(&M::full_name())
    }

    /// Encodes a message of this topic's type.
    pub fn encode(&self, message: &M) -> Vec<u8> {
        message.encode_to_vec()
    }

    /// Decodes a message of this topic's type.
    pub fn decode(&self, bytes: &[u8]) -> Result<M, prost::DecodeError> {
        M::decode(bytes)
    }

    /// The partition a message goes to, when the topic chooses it itself rather than
    /// leaving it to the client's key hash. `partitions` is the topic's actual count.
    pub fn partition_for(&self, message: &M, partitions: i32) -> Option<i32> {
        match (self.partitioning, message.sequence()) {
            (Partitioning::SpreadBySequence, Some(seq)) if partitions > 0 => {
                let start = fnv1a(message.key().as_bytes());
                let p = start.wrapping_add(seq) % partitions as u64;
                Some(p as i32)
            }
            _ => None,
        }
    }

    /// The untyped description of this topic.
    pub fn spec(&self) -> TopicSpec {
        TopicSpec {
            name: self.name,
            partitions: self.partitions,
            message_type: M::full_name(),
            key: self.key,
            retention: Some(self.retention),
        }
    }
}

/// An untyped view of a topic, for administration and inspection tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Name without deployment prefix.
    pub name: &'static str,
    /// Partition count.
    pub partitions: i32,
    /// Fully qualified protobuf type name, or empty for the dead-letter topic.
    pub message_type: String,
    /// What the key holds.
    pub key: &'static str,
    /// What the brokers keep, set when the topic is created; `None`: the brokers' defaults.
    pub retention: Option<Retention>,
}

/// Camera frames, from `lookout-camera` to the predictor, viewer and recorder.
pub const FRAMES: Topic<Frame> =
    Topic::new("lookout.frames", 6, Partitioning::SpreadBySequence, "camera id", FRAMES_RETENTION);

/// Labels per frame, from the predictor to the viewer and recorder.
pub const PREDICTIONS: Topic<Prediction> =
    Topic::new("lookout.predictions", 3, Partitioning::ByKey, "camera id", PREDICTIONS_RETENTION);

/// Stable label changes, from the recorder (after they are stored) to the viewer.
pub const CHANGES: Topic<PredictionChange> =
    Topic::new("lookout.changes", 1, Partitioning::ByKey, "camera id", CHANGES_RETENTION);

/// Alerts of the rule engine (`lookout-alerts`), to its sinks (MQTT, webhooks, stdout).
pub const ALERTS: Topic<Alert> =
    Topic::new("lookout.alerts", 1, Partitioning::ByKey, "camera id", CHANGES_RETENTION);

/// Every service's log records, to the log shipper.
pub const LOGS: Topic<LogRecord> =
    Topic::new("lookout.logs", 3, Partitioning::ByKey, "service name", LOGS_RETENTION);

/// Name of the dead-letter topic: messages that could not be decoded, with the original
/// topic, partition, offset and the error in headers.
pub const DLQ: &str = "lookout.dlq";

/// Partition count of the dead-letter topic.
pub const DLQ_PARTITIONS: i32 = 1;

/// Every topic of the registry, the dead-letter topic included.
pub fn all() -> Vec<TopicSpec> {
    vec![
        FRAMES.spec(),
        PREDICTIONS.spec(),
        CHANGES.spec(),
        LOGS.spec(),
        ALERTS.spec(),
        TopicSpec {
            name: DLQ,
            partitions: DLQ_PARTITIONS,
            message_type: String::new(),
            key: "the original key",
            retention: Some(DLQ_RETENTION),
        },
    ]
}

/// The conventional `content-type` header value for protobuf messages of type `full_name`.
pub fn content_type_of(full_name: &str) -> String {
    format!("application/x-protobuf; messageType={full_name}")
}

/// The message type carried by a registry topic, given its name without prefix.
pub fn message_type_of(name: &str) -> Option<String> {
    all().into_iter().find(|t| t.name == name).map(|t| t.message_type).filter(|t| !t.is_empty())
}

/// 64-bit FNV-1a: stable across processes, platforms and releases (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_one_camera_visit_every_partition_in_turn() {
        let mut seen = Vec::new();
        for seq in 0..12 {
            let f = Frame { camera_id: "cam".into(), sequence: seq, ..Default::default() };
            seen.push(FRAMES.partition_for(&f, 6).unwrap());
        }
        assert_eq!(&seen[..6], &seen[6..], "the pattern repeats every 6 frames");
        let mut first: Vec<_> = seen[..6].to_vec();
        first.sort();
        assert_eq!(first, vec![0, 1, 2, 3, 4, 5], "six consecutive frames use six partitions");
    }

    #[test]
    fn keyed_topics_leave_the_partition_to_the_key_hash() {
        let p = Prediction { camera_id: "cam".into(), frame_sequence: 3, ..Default::default() };
        assert_eq!(PREDICTIONS.partition_for(&p, 3), None);
    }

    #[test]
    fn frames_are_kept_shortest_and_changes_longest() {
        let kept = |name: &str| all().into_iter().find(|t| t.name == name).unwrap().retention;
        let ms = |name: &str| kept(name).unwrap().ms;
        assert!(ms("lookout.frames") < ms("lookout.logs"));
        assert!(ms("lookout.logs") < ms("lookout.predictions"));
        assert!(ms("lookout.predictions") < ms("lookout.changes"));
        for t in all() {
            let r = t.retention.unwrap();
            assert!(r.segment_ms < r.ms, "{}: segments close before retention acts", t.name);
        }
        assert_eq!(FRAMES_RETENTION.configs()[0], ("retention.ms", "3600000".to_owned()));
    }

    #[test]
    fn registry_lists_message_types() {
        assert_eq!(message_type_of("lookout.frames").as_deref(), Some("lookout.v1.Frame"));
        assert_eq!(message_type_of("lookout.logs").as_deref(), Some("lookout.v1.LogRecord"));
        assert_eq!(message_type_of("lookout.dlq"), None);
        assert_eq!(message_type_of("lookout.alerts").as_deref(), Some("lookout.v1.Alert"));
        assert_eq!(all().len(), 6);
    }
}
