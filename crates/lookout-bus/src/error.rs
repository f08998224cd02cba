use std::time::Duration;

use rdkafka::error::KafkaError;

/// Errors of the bus. Variants carry the topic (and where known partition and offset) they
/// concern, so a log line says where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The client could not be created from the configuration.
    #[error("invalid Kafka client configuration: {0}")]
    Config(#[source] KafkaError),

    /// A `--kafka-opt` that is not `key=value`.
    #[error("invalid Kafka option {0:?}: expected key=value")]
    BadOption(String),

    /// An unknown compression name.
    #[error("unknown compression {0:?}: expected none, lz4 or zstd")]
    BadCompression(String),

    /// The encoded message is larger than the producer may send.
    #[error(
        "message for topic {topic} is {size} bytes, over the limit of {limit} bytes \
         (message.max.bytes); it was not sent"
    )]
    TooLarge {
        /// Topic the message was for.
        topic: String,
        /// Encoded size in bytes.
        size: usize,
        /// The producer's `message.max.bytes`.
        limit: usize,
    },

    /// The producer's local queue stayed full: the brokers do not keep up or are unreachable.
    #[error("producer queue full for topic {topic} for {waited:?}: the brokers are slow or down")]
    QueueFull {
        /// Topic the message was for.
        topic: String,
        /// How long the publisher waited for room.
        waited: Duration,
    },

    /// The brokers did not accept the message.
    #[error("delivery to topic {topic} failed: {source}")]
    Delivery {
        /// Topic the message was for.
        topic: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },

    /// Any other client error.
    #[error("Kafka error on topic {topic}: {source}")]
    Kafka {
        /// Topic concerned ("*" for cluster-wide operations).
        topic: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },

    /// A topic the operation needs does not exist.
    #[error("topic {topic} does not exist on {brokers}{hint}")]
    UnknownTopic {
        /// The missing topic.
        topic: String,
        /// The bootstrap servers asked.
        brokers: String,
        /// What to do about it.
        hint: &'static str,
    },

    /// A partition the topic does not have.
    #[error("topic {topic} has no partition {partition} (it has {partitions})")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: i32,
        /// How many it has.
        partitions: i32,
    },

    /// The embedded broker could not be started or changed.
    #[error("embedded broker: {0}")]
    Embedded(String),

    /// A handler panicked: the consumer stops, so the service fails and is restarted. The
    /// message it was on is not acknowledged and comes again.
    #[error("the handler for {topic}/{partition} panicked: {message}")]
    HandlerPanicked {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The panic's message.
        message: String,
    },

    /// A handler said it cannot go on ([`HandlerError::Fatal`]).
    #[error("the handler for {topic}/{partition} cannot go on: {reason}")]
    HandlerFailed {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The handler's reason.
        reason: String,
    },

    /// A message could not be dead-lettered and retrying would not help (the dead-letter
    /// topic does not exist, or writing to it is not allowed): the consumer stops rather than
    /// skip the message or retry for ever.
    #[error("cannot dead-letter {message} to {dlq}: {reason}")]
    DeadLetter {
        /// The message, as `topic/partition@offset`.
        message: String,
        /// The dead-letter topic.
        dlq: String,
        /// The producer's error.
        reason: String,
    },

    /// The consumer broke an invariant of its own (a message arrived outside any partition
    /// task); it stops rather than lose the message.
    #[error("consumer of group {group}: {reason}")]
    Internal {
        /// Consumer group.
        group: String,
        /// What went wrong.
        reason: String,
    },

    /// A socket error of the embedded broker's listener.
    #[error("embedded broker listener on {addr}: {source}")]
    Listener {
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A handler's verdict on a message (or a batch) it could not handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// A failure that may pass (a database outage, a full downstream, a broker away): the same
    /// message is offered again after a backoff, its partition is paused meanwhile (the other
    /// partitions go on), and its offset is not stored until it succeeds.
    #[error("transient: {0}")]
    Transient(String),
    /// The message can never be handled (bad data): it goes to the dead-letter topic with this
    /// reason and its offset is stored. A batch handler that answers this for a batch of
    /// several messages gets them again one at a time, so only the bad ones are dead-lettered.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The handler cannot go on at all (a misconfiguration, a resource that will not come):
    /// the subscriber stops with [`BusError::HandlerFailed`], the message is not acknowledged,
    /// and the service fails loudly instead of retrying for ever.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl HandlerError {
    /// A transient failure with this reason.
    pub fn transient(reason: impl std::fmt::Display) -> Self {
        Self::Transient(reason.to_string())
    }

    /// A permanent failure with this reason.
    pub fn permanent(reason: impl std::fmt::Display) -> Self {
        Self::Permanent(reason.to_string())
    }

    /// A fatal failure with this reason.
    pub fn fatal(reason: impl std::fmt::Display) -> Self {
        Self::Fatal(reason.to_string())
    }
}
