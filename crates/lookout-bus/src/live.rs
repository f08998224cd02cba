//! Live subscriptions: for viewers that want the newest data, not every message.

use std::marker::PhantomData;

use lookout_proto::{BusMessage, Topic};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{Bus, BusError, Handler, Start, metrics as m};

/// Reads a topic from its newest message on, without a consumer group and without commits,
/// so any number of viewers can read the same topic independently and a restarted viewer
/// never replays history. Each partition starts at its last message (or further back, see
/// [`LiveSubscription::with_history`]), so the first handler call comes at once when the
/// topic has data. Built on the bus's [`Reader`](crate::Reader).
///
/// Handlers should be quick (store the latest value and return): messages are handled one
/// at a time in arrival order, and a message that fails to decode is counted and skipped.
#[derive(Debug)]
pub struct LiveSubscription<M> {
    bus: Bus,
    name: String,
    back: u64,
    _message: PhantomData<fn() -> M>,
}

impl<M: BusMessage> LiveSubscription<M> {
    pub(crate) fn new(bus: Bus, topic: Topic<M>) -> Self {
        let name = bus.topic_name(topic.name());
        Self { bus, name, back: 1, _message: PhantomData }
    }

    /// Starts `n` messages back in each partition instead of at the last one, so that a
    /// restarted reader has recent history (a viewer's changes feed).
    pub fn with_history(mut self, n: u64) -> Self {
        self.back = n.max(1);
        self
    }

    /// Reads until `shutdown` is cancelled. Waits for the topic to exist first.
    pub async fn run<H: Handler<M>>(
        self,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let opened = self
            .bus
            .reader(&self.name)
            .start(Start::Last(self.back))
            .wait_for_topic()
            .open(&shutdown)
            .await?;
        let Some(reader) = opened else { return Ok(()) };
        info!(topic = %self.name, partitions = reader.starts().len(), "live subscription started");
        let decode_errors = metrics::counter!(m::LIVE_DECODE_ERRORS, "topic" => self.name.clone());
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                r = reader.recv() => r,
            };
            let raw = match received {
                Ok(raw) => raw,
                Err(e) => {
                    warn!(topic = %self.name, error = %e, "live subscription error");
                    continue;
                }
            };
            match raw.decode::<M>() {
                Ok(incoming) => {
                    if let Err(e) = handler.handle(incoming).await {
                        debug!(topic = %self.name, error = %e, "live handler declined a message");
                    }
                }
                Err(reason) => {
                    decode_errors.increment(1);
                    warn!(topic = %self.name, partition = raw.partition, offset = raw.offset, reason, "skipping a message that does not decode");
                }
            }
        }
    }
}
