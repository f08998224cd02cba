//! The typed Kafka bus every Lookout service uses. No other crate of the workspace talks to
//! Kafka (or depends on rdkafka): what a service needs, the bus offers.
//!
//! - [`Bus`] holds one producer and the configuration ([`BusConfig`]); clone it freely.
//! - [`Publisher`] sends messages of one topic's type with two headers (`content-type:
//!   application/x-protobuf; messageType=…` and W3C `traceparent`), idempotence on, oversize
//!   messages refused before they are sent, and a full local queue turned into backpressure.
//! - [`Subscriber`] consumes a topic in a consumer group at least once, each partition read
//!   from its own queue by its own task ([`consumer`] explains the design): one message at a
//!   time ([`Subscriber::run`]) or in batches ([`Subscriber::run_batched`]); an offset is
//!   stored only after the handler succeeded; a message that does not decode, or that the
//!   handler refuses for good, goes to the dead-letter topic ([`DeadLetters`]); a transient
//!   failure pauses only its partition and is retried with a [`Backoff`].
//! - [`Reader`] reads chosen partitions without a group from a time, an offset, the last N
//!   messages or the end ([`Start`]), and fetches single messages by position;
//!   [`LiveSubscription`] is a reader from the newest message, for viewers.
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
pub mod backoff;
mod config;
pub mod consumer;
mod dead_letter;
pub mod embedded;
mod error;
pub mod headers;
mod live;
mod message;
pub mod metrics;
mod producer;
mod publisher;
mod reader;

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use rdkafka::{ClientConfig, config::FromClientConfigAndContext as _, producer::Producer as _};

pub use backoff::Backoff;
pub use config::{BusConfig, Compression, KafkaOpt, default_instance};
pub use consumer::{
    BatchHandler, Handler, RawHandler, RawSubscriber, Rejected, StartAt, Subscriber,
};
pub use dead_letter::{DeadLettered, DeadLetters};
pub use error::{BusError, HandlerError};
pub use headers::{Headers, TraceContext};
pub use live::LiveSubscription;
pub use lookout_proto::{BusMessage, Topic, topics};
pub use message::{Incoming, MessageMeta, RawMessage};
pub use publisher::{Batch, Delivered, Pending, Publisher};
pub use reader::{Fetcher, PartitionStart, Reader, ReaderBuilder, Start};

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: &str = "1000000";

/// A connection to the bus: configuration plus one shared producer.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    config: BusConfig,
    producer: producer::Producer,
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
        let producer =
            producer::Producer::from_config_and_context(&producer_config, producer::Acks)
                .map_err(BusError::Config)?;
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

    /// A reader of `topic` (its full name, prefix included) by position, without a group.
    pub fn reader(&self, topic: &str) -> ReaderBuilder {
        ReaderBuilder::new(self.clone(), topic)
    }

    /// Fetches single messages of `topic` (full name) by position.
    pub fn fetcher(&self, topic: &str) -> Fetcher {
        Fetcher::new(self.clone(), topic)
    }

    /// The dead-letter topic's writer.
    pub fn dead_letters(&self) -> DeadLetters {
        DeadLetters::new(self.clone())
    }

    /// Publishes raw bytes with the given headers on `topic` (full name) and waits for the
    /// acknowledgement (partition, offset): for tools and tests that write what the typed publishers would not
    /// (another client's headers, bytes that are not a message).
    pub async fn publish_raw(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &Headers,
    ) -> Result<(i32, i64), BusError> {
        use rdkafka::message::{Header, OwnedHeaders};
        let mut hs = OwnedHeaders::new_with_capacity(headers.len());
        for (key, value) in headers.iter() {
            hs = hs.insert(Header { key, value });
        }
        producer::send_one(self.producer(), topic, key, payload, hs, Duration::from_secs(30))
            .await
            .map_err(|source| BusError::Delivery { topic: topic.to_owned(), source })
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

    pub(crate) fn producer(&self) -> &producer::Producer {
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
