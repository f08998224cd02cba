use std::{
    cell::RefCell,
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicI32, Ordering},
    },
    time::{Duration, Instant},
};

use lookout_proto::{BusMessage, Topic};
use rdkafka::{
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::BaseRecord,
};

use crate::{
    Bus, BusError, TraceContext, headers, metrics as m,
    producer::{Ack, QUEUE_FULL_BACKOFF, queue_full},
};

/// How long `send` and `enqueue` wait for room in a full producer queue before failing.
const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

thread_local! {
    /// Where messages are encoded: librdkafka copies the bytes, so one buffer per thread
    /// serves every message and no allocation is made per message.
    static ENCODE_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

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
    shared: Arc<Shared>,
    bytes: usize,
    trace: TraceContext,
    delivery: Delivery,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("topic", &self.shared.name).finish_non_exhaustive()
    }
}

impl Pending {
    /// Waits for the brokers' acknowledgement.
    pub async fn wait(self) -> Result<Delivered, BusError> {
        let outcome = match self.delivery {
            Delivery::Queued(ack) => ack.wait_one().await,
            Delivery::Refused(source) => Err(source),
        };
        match outcome {
            Ok((partition, offset)) => {
                self.shared.messages.increment(1);
                self.shared.bytes.increment(self.bytes as u64);
                Ok(Delivered { partition, offset, trace: self.trace })
            }
            Err(source) => {
                self.shared.count_error("delivery");
                Err(BusError::Delivery { topic: self.shared.name.clone(), source })
            }
        }
    }
}

/// Publishes messages of type `M` on one topic.
#[derive(Debug, Clone)]
pub struct Publisher<M> {
    bus: Bus,
    topic: Topic<M>,
    shared: Arc<Shared>,
    queue_timeout: Duration,
    _message: PhantomData<fn(M)>,
}

/// What every message of a publisher shares: names and metric handles resolved once.
struct Shared {
    name: String,
    content_type: String,
    /// The topic's partition count, asked of the brokers once (0: not yet).
    partitions: AtomicI32,
    messages: metrics::Counter,
    bytes: metrics::Counter,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Shared {
    fn count_error(&self, kind: &'static str) {
        metrics::counter!(m::PRODUCE_ERRORS, "topic" => self.name.clone(), "kind" => kind)
            .increment(1);
    }
}

impl<M: BusMessage> Publisher<M> {
    pub(crate) fn new(bus: Bus, topic: Topic<M>) -> Self {
        let name = bus.topic_name(topic.name());
        let shared = Arc::new(Shared {
            messages: metrics::counter!(m::PRODUCED_MESSAGES, "topic" => name.clone()),
            bytes: metrics::counter!(m::PRODUCED_BYTES, "topic" => name.clone()),
            content_type: topic.content_type(),
            partitions: AtomicI32::new(0),
            name,
        });
        Self { bus, topic, shared, queue_timeout: DEFAULT_QUEUE_TIMEOUT, _message: PhantomData }
    }

    /// How long to wait for room when the producer queue is full (default 30 s).
    pub fn with_queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// The full topic name, prefix included.
    pub fn topic_name(&self) -> &str {
        &self.shared.name
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
        let partition = self.partition(message).await?;
        let trace = parent.map_or_else(TraceContext::new_root, TraceContext::child);
        loop {
            match self.try_send(message, partition, trace, Ack::one()) {
                Ok(p) => return Ok(p),
                Err(Attempt::Refused(e)) => return Err(e),
                Err(Attempt::Full) if started.elapsed() < self.queue_timeout => {
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err(Attempt::Full) => {
                    self.shared.count_error("queue_full");
                    return Err(BusError::QueueFull {
                        topic: self.shared.name.clone(),
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
        let partition = self.partition(message).await?;
        let trace = parent.map_or_else(TraceContext::new_root, TraceContext::child);
        self.try_send(message, partition, trace, Ack::one()).map_err(|a| match a {
            Attempt::Refused(e) => e,
            Attempt::Full => {
                self.shared.count_error("queue_full");
                BusError::QueueFull { topic: self.shared.name.clone(), waited: Duration::ZERO }
            }
        })
    }

    /// The partition the topic chooses for `message`, or `None` for the key's hash.
    async fn partition(&self, message: &M) -> Result<Option<i32>, BusError> {
        match self.topic.partitioning() {
            lookout_proto::Partitioning::ByKey => Ok(None),
            lookout_proto::Partitioning::SpreadBySequence => {
                let mut n = self.shared.partitions.load(Ordering::Relaxed);
                if n == 0 {
                    n = self.bus.partition_count(&self.shared.name).await?;
                    self.shared.partitions.store(n, Ordering::Relaxed);
                }
                Ok(self.topic.partition_for(message, n))
            }
        }
    }

    /// Starts a batch: messages enqueued on it are acknowledged together, with no allocation
    /// and no wake-up per message (for bulk publishing: a backlog, a replay, an outbox).
    pub fn batch(&self) -> Batch<'_, M> {
        Batch { publisher: self, ack: Ack::batch(), bytes: 0, enqueued: 0 }
    }

    /// Encodes the message and hands it to librdkafka (which copies the bytes); its delivery
    /// report completes `ack`.
    fn try_send(
        &self,
        message: &M,
        partition: Option<i32>,
        trace: TraceContext,
        ack: Arc<Ack>,
    ) -> Result<Pending, Attempt> {
        ENCODE_BUFFER.with_borrow_mut(|buf| {
            buf.clear();
            message.encode(buf).expect("a Vec grows as needed");
            let limit = self.bus.max_message_bytes();
            if buf.len() > limit {
                self.shared.count_error("too_large");
                return Err(Attempt::Refused(BusError::TooLarge {
                    topic: self.shared.name.clone(),
                    size: buf.len(),
                    limit,
                }));
            }
            let traceparent = trace.header_bytes();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: headers::CONTENT_TYPE,
                    value: Some(self.shared.content_type.as_str()),
                })
                .insert(Header { key: headers::TRACEPARENT, value: Some(&traceparent[..]) });
            let mut record = BaseRecord::with_opaque_to(&self.shared.name, ack.clone())
                .key(message.key())
                .payload(buf.as_slice())
                .headers(headers);
            if let Some(partition) = partition {
                record = record.partition(partition);
            }
            let bytes = buf.len();
            ack.expect_one_more();
            match self.bus.producer().send(record) {
                Ok(()) => Ok(Pending {
                    shared: self.shared.clone(),
                    bytes,
                    trace,
                    delivery: Delivery::Queued(ack),
                }),
                Err((e, _)) if queue_full(&e) => {
                    ack.expect_one_less();
                    Err(Attempt::Full)
                }
                // Refused outright (unknown partition, bad config…): reported when the caller
                // waits for it, like any delivery failure.
                Err((source, _)) => {
                    ack.expect_one_less();
                    Ok(Pending {
                        shared: self.shared.clone(),
                        bytes: 0,
                        trace,
                        delivery: Delivery::Refused(source),
                    })
                }
            }
        })
    }
}

enum Attempt {
    /// The producer's queue is full: try again later.
    Full,
    /// Refused for good before sending.
    Refused(BusError),
}

enum Delivery {
    Queued(Arc<Ack>),
    Refused(KafkaError),
}

/// Messages of one publisher acknowledged together; from [`Publisher::batch`].
#[must_use = "a batch's deliveries should be awaited with Batch::wait"]
pub struct Batch<'a, M> {
    publisher: &'a Publisher<M>,
    ack: Arc<Ack>,
    bytes: usize,
    enqueued: usize,
}

impl<M> std::fmt::Debug for Batch<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("topic", &self.publisher.shared.name)
            .field("enqueued", &self.enqueued)
            .finish_non_exhaustive()
    }
}

impl<M: BusMessage> Batch<'_, M> {
    /// Hands a message to the producer, waiting while its queue is full, like
    /// [`Publisher::enqueue`]; its acknowledgement is awaited with the batch's.
    pub async fn enqueue(
        &mut self,
        message: &M,
        parent: Option<&TraceContext>,
    ) -> Result<(), BusError> {
        let p = self.publisher;
        let started = Instant::now();
        let partition = p.partition(message).await?;
        let trace = parent.map_or_else(TraceContext::new_root, TraceContext::child);
        loop {
            match p.try_send(message, partition, trace, self.ack.clone()) {
                Ok(Pending { delivery: Delivery::Refused(source), .. }) => {
                    p.shared.count_error("delivery");
                    return Err(BusError::Delivery { topic: p.shared.name.clone(), source });
                }
                Ok(pending) => {
                    self.bytes += pending.bytes;
                    self.enqueued += 1;
                    return Ok(());
                }
                Err(Attempt::Refused(e)) => return Err(e),
                Err(Attempt::Full) if started.elapsed() < p.queue_timeout => {
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err(Attempt::Full) => {
                    p.shared.count_error("queue_full");
                    return Err(BusError::QueueFull {
                        topic: p.shared.name.clone(),
                        waited: started.elapsed(),
                    });
                }
            }
        }
    }

    /// How many messages were enqueued.
    pub fn len(&self) -> usize {
        self.enqueued
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.enqueued == 0
    }

    /// Waits until every message of the batch was acknowledged; the first failure, if any.
    pub async fn wait(self) -> Result<usize, BusError> {
        let p = self.publisher;
        match self.ack.wait_batch().await {
            Ok(delivered) => {
                p.shared.messages.increment(delivered as u64);
                p.shared.bytes.increment(self.bytes as u64);
                Ok(delivered)
            }
            Err(source) => {
                p.shared.count_error("delivery");
                Err(BusError::Delivery { topic: p.shared.name.clone(), source })
            }
        }
    }
}
