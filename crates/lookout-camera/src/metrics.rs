//! Metric names of the camera, as constants, and the counters behind [`Summary`].
//!
//! A process that captures one camera (`--source`) labels nothing but the drop `reason` (the
//! values of [`DropReason::as_str`]); a process that captures a site file's cameras
//! (`--config`) also labels every metric with `camera`, the camera id.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use metrics::Label;

/// Frames obtained from the source (before any drop).
pub const FRAMES_CAPTURED: &str = "lookout_camera_frames_captured_total";
/// Frames the brokers acknowledged.
pub const FRAMES_PUBLISHED: &str = "lookout_camera_frames_published_total";
/// Frames not published, by `reason` (see [`DropReason`]).
pub const FRAMES_DROPPED: &str = "lookout_camera_frames_dropped_total";
/// Frames encoded again, smaller, to fit the producer's `message.max.bytes`.
pub const FRAMES_SHRUNK: &str = "lookout_camera_frames_shrunk_total";
/// Seconds from capture to the brokers' acknowledgement.
pub const CAPTURE_TO_PUBLISH: &str = "lookout_camera_capture_to_publish_seconds";
/// Size of each captured JPEG frame in bytes.
pub const JPEG_BYTES: &str = "lookout_camera_jpeg_bytes";

/// Registers the descriptions shown with the metrics on `/metrics`.
pub fn describe() {
    metrics::describe_counter!(FRAMES_CAPTURED, "Frames obtained from the source");
    metrics::describe_counter!(FRAMES_PUBLISHED, "Frames acknowledged by the Kafka brokers");
    metrics::describe_counter!(FRAMES_DROPPED, "Frames not published, by reason");
    metrics::describe_counter!(
        FRAMES_SHRUNK,
        "Frames encoded again at a lower quality or size to fit the message limit"
    );
    metrics::describe_histogram!(
        CAPTURE_TO_PUBLISH,
        metrics::Unit::Seconds,
        "Time from capture to the brokers' acknowledgement"
    );
    metrics::describe_histogram!(JPEG_BYTES, metrics::Unit::Bytes, "Size of each JPEG frame");
}

/// Why a frame was not published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue between capture and publishing was full: the oldest frame made room.
    QueueFull,
    /// The Kafka producer's own queue was full (brokers slow or down).
    ProducerQueueFull,
    /// The frame does not fit the producer's `message.max.bytes`, even shrunk.
    TooLarge,
    /// The brokers did not acknowledge the frame within `message.timeout.ms`.
    DeliveryFailed,
    /// Any other publishing error (topic missing, metadata unavailable).
    PublishError,
    /// The source delivered bytes that are not a usable image.
    BadFrame,
}

impl DropReason {
    /// The `reason` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::ProducerQueueFull => "producer_queue_full",
            Self::TooLarge => "too_large",
            Self::DeliveryFailed => "delivery_failed",
            Self::PublishError => "publish_error",
            Self::BadFrame => "bad_frame",
        }
    }

    const ALL: [Self; 6] = [
        Self::QueueFull,
        Self::ProducerQueueFull,
        Self::TooLarge,
        Self::DeliveryFailed,
        Self::PublishError,
        Self::BadFrame,
    ];
}

/// What a camera run did, returned by [`crate::run`] and logged when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Frames obtained from the source.
    pub captured: u64,
    /// Frames the brokers acknowledged.
    pub published: u64,
    /// Frames encoded again, smaller, to fit `message.max.bytes` (published or not).
    pub shrunk: u64,
    /// Frames dropped because the capture queue was full (drop-oldest).
    pub dropped_queue_full: u64,
    /// Frames dropped because the producer's queue was full.
    pub dropped_producer_queue_full: u64,
    /// Frames that did not fit `message.max.bytes`, even shrunk.
    pub dropped_too_large: u64,
    /// Frames the brokers did not acknowledge in time.
    pub dropped_delivery_failed: u64,
    /// Frames not sent for another publishing error.
    pub dropped_publish_error: u64,
    /// Bytes from the source that were not a usable image.
    pub dropped_bad_frame: u64,
    /// The first sequence number handed to the producer.
    pub first_sequence: Option<u64>,
    /// The last sequence number handed to the producer.
    pub last_sequence: Option<u64>,
}

impl Summary {
    /// Every dropped frame, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full
            + self.dropped_producer_queue_full
            + self.dropped_too_large
            + self.dropped_delivery_failed
            + self.dropped_publish_error
            + self.dropped_bad_frame
    }
}

/// Counters shared by the capture and publishing sides; each update also goes to the
/// `metrics` facade.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    captured: AtomicU64,
    published: AtomicU64,
    shrunk: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    first_sequence: AtomicU64,
    last_sequence: AtomicU64,
    /// Labels of every metric: none, or the camera id of one of a site's cameras.
    labels: Vec<Label>,
}

impl Stats {
    /// Counters whose metrics carry `camera="ID"`.
    pub(crate) fn of_site_camera(id: &str) -> Self {
        Self { labels: vec![Label::new("camera", id.to_owned())], ..Self::default() }
    }

    pub(crate) fn captured(&self, jpeg_bytes: usize) {
        self.captured.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(FRAMES_CAPTURED, self.labels.iter()).increment(1);
        metrics::histogram!(JPEG_BYTES, self.labels.iter()).record(jpeg_bytes as f64);
    }

    pub(crate) fn published(&self, capture_to_ack: Duration) {
        self.published.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(FRAMES_PUBLISHED, self.labels.iter()).increment(1);
        metrics::histogram!(CAPTURE_TO_PUBLISH, self.labels.iter())
            .record(capture_to_ack.as_secs_f64());
    }

    pub(crate) fn shrunk(&self) {
        self.shrunk.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(FRAMES_SHRUNK, self.labels.iter()).increment(1);
    }

    pub(crate) fn dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
        let mut labels = self.labels.clone();
        labels.push(Label::new("reason", reason.as_str()));
        metrics::counter!(FRAMES_DROPPED, labels).increment(1);
    }

    /// Records a sequence number handed to the producer (sequences start far above 0).
    pub(crate) fn sequence(&self, sequence: u64) {
        let _ =
            self.first_sequence.compare_exchange(0, sequence, Ordering::Relaxed, Ordering::Relaxed);
        self.last_sequence.store(sequence, Ordering::Relaxed);
    }

    pub(crate) fn summary(&self) -> Summary {
        let d = |r: DropReason| self.dropped[r as usize].load(Ordering::Relaxed);
        let seq = |a: &AtomicU64| Some(a.load(Ordering::Relaxed)).filter(|s| *s != 0);
        Summary {
            captured: self.captured.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            shrunk: self.shrunk.load(Ordering::Relaxed),
            dropped_queue_full: d(DropReason::QueueFull),
            dropped_producer_queue_full: d(DropReason::ProducerQueueFull),
            dropped_too_large: d(DropReason::TooLarge),
            dropped_delivery_failed: d(DropReason::DeliveryFailed),
            dropped_publish_error: d(DropReason::PublishError),
            dropped_bad_frame: d(DropReason::BadFrame),
            first_sequence: seq(&self.first_sequence),
            last_sequence: seq(&self.last_sequence),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_counted_by_reason() {
        let s = Stats::default();
        s.dropped(DropReason::TooLarge);
        s.dropped(DropReason::TooLarge);
        s.dropped(DropReason::QueueFull);
        s.sequence(5);
        s.sequence(6);
        let sum = s.summary();
        assert_eq!(sum.dropped_too_large, 2);
        assert_eq!(sum.dropped_queue_full, 1);
        assert_eq!(sum.dropped(), 3);
        assert_eq!((sum.first_sequence, sum.last_sequence), (Some(5), Some(6)));
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "ALL is in declaration order");
        }
    }
}
