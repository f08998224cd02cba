//! The typed Kafka bus every Lookout service uses.
//!
//! - [`Bus`] holds one producer and the configuration ([`BusConfig`]); clone it freely.
//! - [`Publisher`] sends messages of one topic's type, with the standard [`headers`]
//!   (content type, service, instance, produce time, W3C `traceparent`), idempotence on,
//!   oversize messages refused before they are sent, and a full local queue turned into
//!   backpressure.
//! - [`Subscriber`] consumes a topic in a consumer group at least once: an offset is stored
//!   only after the handler succeeded, each partition is handled in order by its own task with
//!   a bounded queue, and a message that does not decode goes to the dead-letter topic
//!   (`lookout.dlq`) with its origin and the error in headers.
//! - [`LiveSubscription`] is for viewers: no group, no commits, starting at the newest message.
//! - [`admin`] creates the registry's topics and describes them; [`embedded`] runs librdkafka's
//!   mock cluster as a broker that needs no installation.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lookout_bus::BusError> {
//! use lookout_bus::{Bus, BusConfig};
//! use lookout_proto::{topics, v1::Frame};
//!
//! let bus = Bus::new(BusConfig::new("127.0.0.1:9092", "lookout-camera"))?;
//! let frames = bus.publisher(&topics::FRAMES);
//! frames.send(&Frame { camera_id: "lobby".into(), sequence: 1, ..Default::default() }).await?;
//! # Ok(()) }
//! ```
//!
//! Publishing a message on a topic of another type does not compile:
//!
//! ```compile_fail
//! # async fn demo(bus: lookout_bus::Bus) {
//! use lookout_proto::{topics, v1::Frame};
//! bus.publisher(&topics::PREDICTIONS).send(&Frame::default()).await;
//! # }
//! ```

pub mod admin;
mod config;
mod consumer;
pub mod embedded;
mod error;
pub mod headers;
mod live;
pub mod metrics;
mod publisher;

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use rdkafka::{
    ClientConfig,
    producer::{FutureProducer, Producer as _},
};

pub use config::{BusConfig, Compression, KafkaOpt, default_instance};
pub use consumer::{Incoming, MessageMeta, RawHandler, RawSubscriber, StartAt, Subscriber};
pub use error::{BusError, HandlerError};
pub use headers::TraceContext;
pub use live::LiveSubscription;
pub use lookout_proto::{BusMessage, Topic, topics};
pub use publisher::{Delivered, Pending, Publisher};
pub use rdkafka::message::OwnedMessage;

/// A handler for messages of type `M`.
///
/// Return `Ok(())` when the message is done (its offset will be stored),
/// [`HandlerError::Retry`] to get the same message again after a backoff, or
/// [`HandlerError::Reject`] to dead-letter it. Closures `Fn(Incoming<M>) -> impl Future`
/// are handlers.
pub trait Handler<M>: Send + Sync + 'static {
    /// Handles one message.
    fn handle(&self, message: Incoming<M>)
    -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<M, F, Fut> Handler<M> for F
where
    M: Send + 'static,
    F: Fn(Incoming<M>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(
        &self,
        message: Incoming<M>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self(message)
    }
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: &str = "1000000";

/// A connection to the bus: configuration plus one shared producer.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    config: BusConfig,
    producer: FutureProducer,
    max_message_bytes: usize,
    partition_counts: Mutex<HashMap<String, i32>>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("brokers", &self.inner.config.brokers)
            .field("service", &self.inner.config.service)
            .field("instance", &self.inner.config.instance)
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// Creates the producer. Connecting happens in the background; nothing blocks here.
    pub fn new(config: BusConfig) -> Result<Self, BusError> {
        let producer_config = config.producer_config();
        let max_message_bytes = config
            .opt_or("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES)
            .parse()
            .map_err(|_| BusError::BadOption("message.max.bytes=<not a number>".into()))?;
        let producer: FutureProducer = producer_config.create().map_err(BusError::Config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                producer,
                max_message_bytes,
                partition_counts: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The configuration this bus was made from.
    pub fn config(&self) -> &BusConfig {
        &self.inner.config
    }

    /// The full name of a topic, with the configured prefix.
    pub fn topic_name(&self, name: &str) -> String {
        format!("{}{name}", self.inner.config.topic_prefix)
    }

    /// The largest encoded message the producer sends (`message.max.bytes`, minus nothing:
    /// the guard compares the payload alone, and the brokers check the whole record).
    pub fn max_message_bytes(&self) -> usize {
        self.inner.max_message_bytes
    }

    /// A publisher for one topic.
    pub fn publisher<M: BusMessage>(&self, topic: &Topic<M>) -> Publisher<M> {
        Publisher::new(self.clone(), *topic)
    }

    /// A consumer-group subscriber for one topic.
    pub fn subscriber<M: BusMessage>(&self, topic: &Topic<M>, group: &str) -> Subscriber<M> {
        Subscriber::new(self.clone(), *topic, group)
    }

    /// A consumer-group subscriber that hands raw messages to its handler (for tools).
    pub fn raw_subscriber(&self, topics: &[String], group: &str) -> RawSubscriber {
        RawSubscriber::new(self.clone(), topics.to_vec(), group)
    }

    /// A live subscription: starts at the newest message of each partition, commits nothing.
    pub fn live<M: BusMessage>(&self, topic: &Topic<M>) -> LiveSubscription<M> {
        LiveSubscription::new(self.clone(), *topic)
    }

    /// Waits until every message handed to the producer has been delivered or failed.
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        // librdkafka's flush polls in 100 ms steps even with nothing left to send.
        if self.inner.producer.in_flight_count() == 0 {
            return Ok(());
        }
        self.inner
            .producer
            .flush(timeout)
            .map_err(|source| BusError::Kafka { topic: "*".into(), source })
    }

    /// A client configuration for other clients (consumers, admin) of this bus: the brokers,
    /// then `base`, then the user's `--kafka-opt` properties.
    pub fn client_config(&self, base: &[(&str, &str)]) -> ClientConfig {
        self.inner.config.client_config(base)
    }

    pub(crate) fn producer(&self) -> &FutureProducer {
        &self.inner.producer
    }

    /// The partition count of a topic, asked of the brokers once and then remembered.
    pub(crate) async fn partition_count(&self, topic: &str) -> Result<i32, BusError> {
        if let Some(n) = self.cached_partitions(topic) {
            return Ok(n);
        }
        let bus = self.clone();
        let name = topic.to_owned();
        let n = tokio::task::spawn_blocking(move || admin::partition_count_blocking(&bus, &name))
            .await
            .map_err(|e| BusError::Embedded(format!("metadata task failed: {e}")))??;
        self.inner.partition_counts.lock().expect("not poisoned").insert(topic.to_owned(), n);
        Ok(n)
    }

    fn cached_partitions(&self, topic: &str) -> Option<i32> {
        self.inner.partition_counts.lock().expect("not poisoned").get(topic).copied()
    }
}
