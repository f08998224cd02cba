//! Lookout's message types and the typed topic registry.
//!
//! Every Lookout service talks to the others only through Kafka topics carrying the protobuf
//! messages defined in `proto/lookout/v1/*.proto`. This crate compiles those files at build
//! time (with `protox`, so no system `protoc` is needed) into prost types, and binds each
//! topic to its message type in [`topics`]:
//!
//! ```
//! use lookout_proto::{topics, v1::Frame};
//!
//! let frame = Frame { camera_id: "lobby".into(), sequence: 7, ..Default::default() };
//! let bytes = topics::FRAMES.encode(&frame);
//! assert_eq!(topics::FRAMES.decode(&bytes).unwrap(), frame);
//! assert_eq!(topics::FRAMES.message_type(), "lookout.v1.Frame");
//! assert_eq!(
//!     topics::FRAMES.content_type(),
//!     "application/x-protobuf; messageType=lookout.v1.Frame"
//! );
//! ```
//!
//! Encoding a message for the wrong topic is a compile error, not a runtime surprise:
//!
//! ```compile_fail
//! use lookout_proto::{topics, v1::Frame};
//!
//! // A Frame does not belong on the predictions topic.
//! let _ = topics::PREDICTIONS.encode(&Frame::default());
//! ```
//!
//! The schemas evolve by adding fields only; see the header of `proto/lookout/v1/frame.proto`.

use std::sync::LazyLock;

pub mod objects;
pub mod topics;

pub use topics::{BusMessage, Partitioning, Retention, Topic, TopicSpec};

/// Generated protobuf types of package `lookout.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/lookout.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every Lookout message (and the well-known types they use).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

/// Descriptors of every Lookout message, for rendering messages as JSON by their type name.
pub static DESCRIPTOR_POOL: LazyLock<prost_reflect::DescriptorPool> = LazyLock::new(|| {
    prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
        .expect("the descriptor set compiled by build.rs is valid")
});

pub use prost_types::{Duration, Timestamp};

/// Converts a [`std::time::SystemTime`] to a protobuf timestamp.
pub fn timestamp(t: std::time::SystemTime) -> Timestamp {
    Timestamp::from(t)
}

/// Converts a protobuf timestamp back to a [`std::time::SystemTime`]; `None` when out of range.
pub fn system_time(t: &Timestamp) -> Option<std::time::SystemTime> {
    std::time::SystemTime::try_from(*t).ok()
}

/// Unix milliseconds of a [`std::time::SystemTime`] (negative before 1970).
pub fn unix_millis(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Unix milliseconds of a protobuf timestamp.
pub fn timestamp_millis(t: &Timestamp) -> i64 {
    t.seconds.saturating_mul(1000) + i64::from(t.nanos) / 1_000_000
}

/// A protobuf timestamp from Unix milliseconds.
pub fn timestamp_from_millis(ms: i64) -> Timestamp {
    Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_round_trip() {
        for ms in [0, 1, 999, 1000, 1_700_000_000_123, -1, -1001] {
            assert_eq!(timestamp_millis(&timestamp_from_millis(ms)), ms, "{ms}");
        }
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(unix_millis(t), 1_700_000_000_123);
        assert_eq!(unix_millis(std::time::UNIX_EPOCH - std::time::Duration::from_millis(5)), -5);
        assert_eq!(timestamp_millis(&timestamp(t)), 1_700_000_000_123);
    }

    #[test]
    fn descriptor_pool_knows_every_message() {
        for name in [
            "lookout.v1.Frame",
            "lookout.v1.Prediction",
            "lookout.v1.PredictionChange",
            "lookout.v1.Alert",
            "lookout.v1.LogRecord",
        ] {
            assert!(DESCRIPTOR_POOL.get_message_by_name(name).is_some(), "{name}");
        }
    }

    #[test]
    fn timestamps_round_trip() {
        let now = std::time::SystemTime::now();
        assert_eq!(system_time(&timestamp(now)), Some(now));
    }
}
