//! Publishing: frames from the queue become `Frame` messages on `lookout.frames`.
//!
//! Frames are handed to the producer with [`Publisher::try_enqueue`], which never waits, and
//! at most [`MAX_IN_FLIGHT`] of them wait for the brokers' acknowledgement at a time. While
//! that many are unacknowledged (brokers slow or down) no frame is taken from the queue, so
//! the queue in front drops its oldest frames instead. The producer itself is configured to
//! hold only a few megabytes and to give up on a frame after a few seconds
//! ([`crate::producer_config`]); it reconnects by itself when the brokers return.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use lookout_bus::{BusError, Delivered, Publisher};
use lookout_proto::v1::{Encoding, Frame};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::{
    metrics::{DropReason, Stats},
    queue::FrameQueue,
    sequence::Sequencer,
    source::Captured,
};

/// Frames handed to the producer and not yet acknowledged, at most.
pub const MAX_IN_FLIGHT: usize = 16;

/// How often a repeated problem is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Lets a repeated warning through at most once per [`LOG_EVERY`], counting the rest.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(number of events not logged since the last line)` when a line may be logged now.
    pub(crate) fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The outcome of one frame's delivery.
struct Ack {
    result: Result<Delivered, BusError>,
    captured: Instant,
    sequence: u64,
}

/// Takes frames from the queue and publishes them until the queue closes or `limit` frames
/// were handed to the producer.
#[derive(Debug)]
pub(crate) struct PublishLoop {
    pub(crate) camera: String,
    pub(crate) publisher: Publisher<Frame>,
    pub(crate) queue: Arc<FrameQueue<Captured>>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) sequencer: Sequencer,
    pub(crate) limit: Option<u64>,
}

/// Rate limits for the loop's warnings.
#[derive(Debug, Default)]
struct Logs {
    too_large: Throttle,
    queue_full: Throttle,
    publish_error: Throttle,
    delivery: Throttle,
}

impl PublishLoop {
    /// Runs until the queue is closed and empty, or the frame limit is reached (then
    /// `limit_reached` is cancelled); then waits for the acknowledgements still due.
    pub(crate) async fn run(mut self, limit_reached: CancellationToken) {
        let mut in_flight: JoinSet<Ack> = JoinSet::new();
        let mut logs = Logs::default();
        loop {
            if in_flight.len() >= MAX_IN_FLIGHT {
                if let Some(ack) = in_flight.join_next().await {
                    self.on_ack(ack, &mut logs);
                }
                continue;
            }
            let frame = tokio::select! {
                biased;
                Some(ack) = in_flight.join_next(), if !in_flight.is_empty() => {
                    self.on_ack(ack, &mut logs);
                    continue;
                }
                frame = self.queue.pop() => frame,
            };
            let Some(frame) = frame else { break };
            self.publish(frame, &mut in_flight, &mut logs).await;
            if self.limit.is_some_and(|limit| self.sequencer.used() >= limit) {
                limit_reached.cancel();
                break;
            }
        }
        while let Some(ack) = in_flight.join_next().await {
            self.on_ack(ack, &mut logs);
        }
    }

    async fn publish(&mut self, frame: Captured, in_flight: &mut JoinSet<Ack>, logs: &mut Logs) {
        let sequence = self.sequencer.peek();
        let message = Frame {
            camera_id: self.camera.clone(),
            sequence,
            capture_time: Some(lookout_proto::timestamp(frame.mark.wall)),
            width: frame.width,
            height: frame.height,
            encoding: Encoding::Jpeg.into(),
            data: frame.jpeg,
        };
        match self.publisher.try_enqueue(&message, None).await {
            Ok(pending) => {
                self.sequencer.advance();
                self.stats.sequence(sequence);
                let captured = frame.mark.mono;
                in_flight
                    .spawn(async move { Ack { result: pending.wait().await, captured, sequence } });
            }
            Err(BusError::TooLarge { size, limit, .. }) => {
                self.stats.dropped(DropReason::TooLarge);
                if let Some(also_dropped) = logs.too_large.ready() {
                    error!(
                        camera_id = %self.camera,
                        size,
                        limit,
                        width = frame.width,
                        height = frame.height,
                        also_dropped,
                        "frame is larger than the producer's message.max.bytes and was \
                         skipped: lower --jpeg-quality or --max-width/--max-height, or raise \
                         message.max.bytes on the producer and the brokers",
                    );
                }
            }
            Err(BusError::QueueFull { .. }) => {
                self.stats.dropped(DropReason::ProducerQueueFull);
                if let Some(also_dropped) = logs.queue_full.ready() {
                    warn!(camera_id = %self.camera, also_dropped, "the Kafka producer's queue is full (brokers slow or down); frame dropped");
                }
            }
            Err(e) => {
                self.stats.dropped(DropReason::PublishError);
                if let Some(also_dropped) = logs.publish_error.ready() {
                    warn!(camera_id = %self.camera, error = %e, also_dropped, "frame not published");
                }
            }
        }
    }

    fn on_ack(&self, joined: Result<Ack, JoinError>, logs: &mut Logs) {
        match joined {
            Ok(Ack { result: Ok(_), captured, .. }) => self.stats.published(captured.elapsed()),
            Ok(Ack { result: Err(e), sequence, .. }) => {
                self.stats.dropped(DropReason::DeliveryFailed);
                if let Some(also_dropped) = logs.delivery.ready() {
                    warn!(camera_id = %self.camera, sequence, error = %e, also_dropped, "frame not delivered");
                }
            }
            Err(_) => self.stats.dropped(DropReason::DeliveryFailed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_line_through_and_counts_the_rest() {
        let mut t = Throttle::default();
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), None);
        assert_eq!(t.ready(), None);
        t.last = Some(Instant::now() - LOG_EVERY - Duration::from_millis(1));
        assert_eq!(t.ready(), Some(2));
    }
}
