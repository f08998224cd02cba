use std::{
    marker::PhantomData,
    time::{Duration, Instant},
};

use lookout_proto::{BusMessage, Topic};
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{DeliveryFuture, FutureRecord},
};

use crate::{Bus, BusError, TraceContext, headers, metrics as m};

/// How long `send` and `enqueue` wait for room in a full producer queue before failing.
const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between attempts while the producer queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(2);

/// A message the brokers acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition it was written to.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// The trace context it was sent with.
    pub trace: TraceContext,
}

/// A message in the producer's queue, not yet acknowledged.
#[must_use = "a pending message's delivery result should be awaited"]
pub struct Pending {
    topic: String,
    counters: Counters,
    bytes: usize,
    trace: TraceContext,
    delivery: Delivery,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl Pending {
    /// Waits for the brokers' acknowledgement.
    pub async fn wait(self) -> Result<Delivered, BusError> {
        let outcome = match self.delivery {
            Delivery::Queued(future) => match future.await {
                Ok(Ok(d)) => Ok(d),
                Ok(Err((source, _message))) => Err(source),
                Err(_cancelled) => Err(KafkaError::Canceled),
            },
            Delivery::Refused(source) => Err(source),
        };
        match outcome {
            Ok(d) => {
                self.counters.messages.increment(1);
                self.counters.bytes.increment(self.bytes as u64);
                Ok(Delivered { partition: d.partition, offset: d.offset, trace: self.trace })
            }
            Err(source) => {
                metrics::counter!(m::PRODUCE_ERRORS, "topic" => self.topic.clone(), "kind" => "delivery")
                    .increment(1);
                Err(BusError::Delivery { topic: self.topic, source })
            }
        }
    }
}

/// Publishes messages of type `M` on one topic.
#[derive(Debug, Clone)]
pub struct Publisher<M> {
    bus: Bus,
    counters: Counters,
    topic: Topic<M>,
    name: String,
    content_type: String,
    queue_timeout: Duration,
    _message: PhantomData<fn(M)>,
}

impl<M: BusMessage> Publisher<M> {
    pub(crate) fn new(bus: Bus, topic: Topic<M>) -> Self {
        let name = bus.topic_name(topic.name());
        let counters = Counters {
            messages: metrics::counter!(m::PRODUCED_MESSAGES, "topic" => name.clone()),
            bytes: metrics::counter!(m::PRODUCED_BYTES, "topic" => name.clone()),
        };
        Self {
            bus,
            counters,
            topic,
            name,
            content_type: topic.content_type(),
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            _message: PhantomData,
        }
    }

    /// How long to wait for room when the producer queue is full (default 30 s).
    pub fn with_queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// The full topic name, prefix included.
    pub fn topic_name(&self) -> &str {
        &self.name
    }

    /// Sends a message in a new trace and waits for the brokers' acknowledgement.
    pub async fn send(&self, message: &M) -> Result<Delivered, BusError> {
        self.enqueue(message, None).await?.wait().await
    }

    /// Sends a message as part of an existing trace (a child span of `parent`).
    pub async fn send_traced(
        &self,
        message: &M,
        parent: &TraceContext,
    ) -> Result<Delivered, BusError> {
        self.enqueue(message, Some(parent)).await?.wait().await
    }

    /// Hands a message to the producer, waiting while its queue is full (backpressure), and
    /// returns without waiting for the acknowledgement: await [`Pending::wait`] for that.
    pub async fn enqueue(
        &self,
        message: &M,
        parent: Option<&TraceContext>,
    ) -> Result<Pending, BusError> {
        let started = Instant::now();
        let prepared = self.prepare(message, parent).await?;
        loop {
            match self.try_send(&prepared) {
                Ok(p) => return Ok(p),
                Err(Full) if started.elapsed() < self.queue_timeout => {
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err(Full) => {
                    self.count_error("queue_full");
                    return Err(BusError::QueueFull {
                        topic: self.name.clone(),
                        waited: started.elapsed(),
                    });
                }
            }
        }
    }

    /// Hands a message to the producer or fails at once with [`BusError::QueueFull`]: for
    /// callers that would rather drop old data than wait (a live camera).
    pub async fn try_enqueue(
        &self,
        message: &M,
        parent: Option<&TraceContext>,
    ) -> Result<Pending, BusError> {
        let prepared = self.prepare(message, parent).await?;
        self.try_send(&prepared).map_err(|Full| {
            self.count_error("queue_full");
            BusError::QueueFull { topic: self.name.clone(), waited: Duration::ZERO }
        })
    }

    async fn prepare(
        &self,
        message: &M,
        parent: Option<&TraceContext>,
    ) -> Result<Prepared, BusError> {
        let payload = self.topic.encode(message);
        let limit = self.bus.max_message_bytes();
        if payload.len() > limit {
            self.count_error("too_large");
            return Err(BusError::TooLarge {
                topic: self.name.clone(),
                size: payload.len(),
                limit,
            });
        }
        let partition = match self.topic.partitioning() {
            lookout_proto::Partitioning::ByKey => None,
            lookout_proto::Partitioning::SpreadBySequence => {
                let n = self.bus.partition_count(&self.name).await?;
                self.topic.partition_for(message, n)
            }
        };
        let trace = parent.map_or_else(TraceContext::new_root, TraceContext::child);
        let traceparent = trace.header_bytes();
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header { key: headers::CONTENT_TYPE, value: Some(self.content_type.as_str()) })
            .insert(Header { key: headers::TRACEPARENT, value: Some(&traceparent[..]) });
        Ok(Prepared { key: message.key().to_owned(), payload, partition, headers, trace })
    }

    fn try_send(&self, p: &Prepared) -> Result<Pending, Full> {
        let mut record = FutureRecord::to(&self.name)
            .key(p.key.as_str())
            .payload(p.payload.as_slice())
            .headers(p.headers.clone());
        if let Some(partition) = p.partition {
            record = record.partition(partition);
        }
        match self.bus.producer().send_result(record) {
            Ok(delivery) => Ok(Pending {
                topic: self.name.clone(),
                counters: self.counters.clone(),
                bytes: p.payload.len(),
                trace: p.trace,
                delivery: Delivery::Queued(delivery),
            }),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Err(Full),
            Err((source, _)) => {
                Ok(Pending::failed(self.name.clone(), self.counters.clone(), p.trace, source))
            }
        }
    }

    fn count_error(&self, kind: &'static str) {
        metrics::counter!(m::PRODUCE_ERRORS, "topic" => self.name.clone(), "kind" => kind)
            .increment(1);
    }
}

/// Metric handles, resolved once per publisher instead of once per message.
#[derive(Clone)]
struct Counters {
    messages: metrics::Counter,
    bytes: metrics::Counter,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

struct Prepared {
    key: String,
    payload: Vec<u8>,
    partition: Option<i32>,
    headers: OwnedHeaders,
    trace: TraceContext,
}

struct Full;

impl Pending {
    /// A message the producer refused outright (unknown partition, bad config…): the error is
    /// reported when the caller waits for it, like any delivery failure.
    fn failed(topic: String, counters: Counters, trace: TraceContext, source: KafkaError) -> Self {
        Self { topic, counters, bytes: 0, trace, delivery: Delivery::Refused(source) }
    }
}

enum Delivery {
    Queued(DeliveryFuture),
    Refused(KafkaError),
}
