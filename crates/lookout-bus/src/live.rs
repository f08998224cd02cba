//! Live subscriptions: for viewers that want the newest data, not every message.

use std::{marker::PhantomData, time::Duration};

use lookout_proto::{BusMessage, Topic};
use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer, StreamConsumer},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{Bus, BusError, Handler, HandlerError, Incoming, MessageMeta, metrics as m};

const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
const TOPIC_WAIT: Duration = Duration::from_millis(500);

/// Reads a topic from its newest message on, without a consumer group and without commits,
/// so any number of viewers can read the same topic independently and a restarted viewer
/// never replays history. Each partition starts at its last message, so the first handler
/// call comes at once when the topic has data.
///
/// Handlers should be quick (store the latest value and return): messages are handled one
/// at a time in arrival order, and a message that fails to decode is counted and skipped.
#[derive(Debug)]
pub struct LiveSubscription<M> {
    bus: Bus,
    name: String,
    _message: PhantomData<fn() -> M>,
}

impl<M: BusMessage> LiveSubscription<M> {
    pub(crate) fn new(bus: Bus, topic: Topic<M>) -> Self {
        let name = bus.topic_name(topic.name());
        Self { bus, name, _message: PhantomData }
    }

    /// Reads until `shutdown` is cancelled. Waits for the topic to exist first.
    pub async fn run<H: Handler<M>>(
        self,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let group = format!("{}-live-{}", self.bus.config().service, uuid::Uuid::new_v4());
        let consumer: StreamConsumer = self
            .bus
            .client_config(&[
                ("group.id", &group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "latest"),
                // Live data: do not let the broker hold a fetch waiting for more. Real Kafka
                // answers as soon as a message is there; the embedded broker always waits the
                // full time, and at 50 ms frames of a 30 fps camera arrived in pairs, of which a
                // viewer shows only the newer one.
                ("fetch.wait.max.ms", "10"),
            ])
            .create()
            .map_err(BusError::Config)?;

        let assignment = loop {
            let bus = self.bus.clone();
            let name = self.name.clone();
            let found = tokio::task::spawn_blocking(move || newest_offsets(&bus, &name))
                .await
                .map_err(|e| BusError::Embedded(format!("metadata task failed: {e}")))?;
            match found {
                Ok(tpl) => break tpl,
                Err(e) => {
                    debug!(topic = %self.name, error = %e, "waiting for topic");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(TOPIC_WAIT) => {}
                    }
                }
            }
        };
        consumer
            .assign(&assignment)
            .map_err(|source| BusError::Kafka { topic: self.name.clone(), source })?;
        info!(topic = %self.name, partitions = assignment.count(), "live subscription started");

        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                r = consumer.recv() => r,
            };
            let message = match received {
                Ok(m) => m.detach(),
                Err(e) => {
                    warn!(topic = %self.name, error = %e, "live subscription error");
                    continue;
                }
            };
            let decoded = message.payload().map(M::decode);
            let Some(Ok(decoded)) = decoded else {
                metrics::counter!(m::LIVE_DECODE_ERRORS, "topic" => self.name.clone()).increment(1);
                warn!(
                    topic = %self.name,
                    partition = message.partition(),
                    offset = message.offset(),
                    "skipping a message that does not decode",
                );
                continue;
            };
            let incoming = Incoming { message: decoded, meta: MessageMeta::of(&message) };
            if let Err(e @ (HandlerError::Retry(_) | HandlerError::Reject(_))) =
                handler.handle(incoming).await
            {
                debug!(topic = %self.name, error = %e, "live handler declined a message");
            }
        }
    }
}

/// The offset of the newest message of every partition (or the end, when empty).
fn newest_offsets(bus: &Bus, topic: &str) -> Result<TopicPartitionList, BusError> {
    let probe: BaseConsumer = bus
        .client_config(&[("group.id", "lookout-live-probe")])
        .create()
        .map_err(BusError::Config)?;
    let kafka = |source| BusError::Kafka { topic: topic.to_owned(), source };
    let partitions = crate::admin::partitions_blocking(bus, topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = probe.fetch_watermarks(topic, p, METADATA_TIMEOUT).map_err(kafka)?;
        let offset = if high > low { Offset::Offset(high - 1) } else { Offset::End };
        tpl.add_partition_offset(topic, p, offset).map_err(kafka)?;
    }
    Ok(tpl)
}
