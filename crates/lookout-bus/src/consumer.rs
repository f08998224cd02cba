//! Consumer groups with at-least-once delivery.
//!
//! One task reads from Kafka and hands each message to the task of its partition through a
//! bounded queue; each partition task handles its messages in order and stores a message's
//! offset only after its handler succeeded (or after it was dead-lettered). librdkafka
//! commits stored offsets in the background, on rebalance and on close, so a crash or a
//! rebalance re-delivers at most what was in flight and loses nothing.

use std::{collections::HashMap, marker::PhantomData, sync::Arc, time::Duration};

use lookout_proto::{BusMessage, Topic};
use rdkafka::{
    ClientContext, Message as _, TopicPartitionList,
    consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError, KafkaResult, RDKafkaErrorCode},
    message::{Header, OwnedHeaders, OwnedMessage},
    producer::FutureRecord,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    Bus, BusError, Handler, HandlerError,
    headers::{self, MessageHeaders},
    metrics as m,
};

/// A busy partition stores its offset at least every this many handled messages.
const STORE_EVERY: usize = 64;
/// Messages queued per partition task before the reader waits: the in-flight bound.
const DEFAULT_QUEUE_DEPTH: usize = 16;
/// First and largest pause before a transient failure is retried.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a stopping consumer waits for librdkafka to close it (leave the group).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a consumer group without committed offsets starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The oldest retained message: nothing produced before the group existed is missed.
    #[default]
    Earliest,
    /// Only messages produced from now on.
    Latest,
}

/// Where a message came from and what its headers say.
#[derive(Debug, Clone)]
pub struct MessageMeta {
    /// Full topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Kafka key, when UTF-8.
    pub key: Option<String>,
    /// Kafka timestamp, Unix milliseconds.
    pub timestamp_ms: Option<i64>,
    /// The standard Lookout headers.
    pub headers: MessageHeaders,
}

impl MessageMeta {
    /// Reads the metadata of a Kafka message.
    pub fn of(message: &OwnedMessage) -> Self {
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().and_then(|k| std::str::from_utf8(k).ok()).map(str::to_owned),
            timestamp_ms: message.timestamp().to_millis(),
            headers: MessageHeaders::from_kafka(message.headers()),
        }
    }
}

/// A decoded message and where it came from.
#[derive(Debug, Clone)]
pub struct Incoming<M> {
    /// The decoded message.
    pub message: M,
    /// Topic, partition, offset and headers.
    pub meta: MessageMeta,
}

/// A handler of undecoded messages, for tools that handle any topic.
pub trait RawHandler: Send + Sync + 'static {
    /// Handles one message; see [`Handler`] for the meaning of the result.
    fn handle(
        &self,
        message: &OwnedMessage,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A consumer-group member for one topic of type `M`.
#[derive(Debug)]
pub struct Subscriber<M> {
    core: GroupConsumer,
    content_type: String,
    _message: PhantomData<fn() -> M>,
}

impl<M: BusMessage> Subscriber<M> {
    pub(crate) fn new(bus: Bus, topic: Topic<M>, group: &str) -> Self {
        let name = bus.topic_name(topic.name());
        Self {
            core: GroupConsumer::new(bus, vec![name], group),
            content_type: topic.content_type(),
            _message: PhantomData,
        }
    }

    /// Where a new group starts (default: the earliest retained message).
    pub fn start_at(mut self, start: StartAt) -> Self {
        self.core.start = start;
        self
    }

    /// How many messages each partition may have queued for its handler (default 16).
    pub fn queue_depth(mut self, depth: usize) -> Self {
        self.core.queue_depth = depth.max(1);
        self
    }

    /// How many partitions this member owns, updated at every rebalance: 0 before it joined,
    /// while a rebalance is under way, and after it stopped.
    pub fn assignment(&self) -> watch::Receiver<usize> {
        self.core.assigned.subscribe()
    }

    /// Consumes until `shutdown` is cancelled, then waits for the messages being handled,
    /// commits the stored offsets and leaves the group.
    pub async fn run<H: Handler<M>>(
        self,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let typed = Typed { handler, content_type: self.content_type, _message: PhantomData };
        self.core.run(Arc::new(typed), shutdown).await
    }
}

/// A consumer-group member that hands raw messages to a [`RawHandler`].
#[derive(Debug)]
pub struct RawSubscriber {
    core: GroupConsumer,
}

impl RawSubscriber {
    pub(crate) fn new(bus: Bus, topics: Vec<String>, group: &str) -> Self {
        Self { core: GroupConsumer::new(bus, topics, group) }
    }

    /// Where a new group starts.
    pub fn start_at(mut self, start: StartAt) -> Self {
        self.core.start = start;
        self
    }

    /// How many partitions this member owns; see [`Subscriber::assignment`].
    pub fn assignment(&self) -> watch::Receiver<usize> {
        self.core.assigned.subscribe()
    }

    /// Consumes until `shutdown` is cancelled; see [`Subscriber::run`].
    pub async fn run<H: RawHandler>(
        self,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        self.core.run(Arc::new(handler), shutdown).await
    }
}

/// Decodes, checks the content type, then calls the typed handler.
struct Typed<M, H> {
    handler: H,
    content_type: String,
    _message: PhantomData<fn() -> M>,
}

impl<M: BusMessage, H: Handler<M>> RawHandler for Typed<M, H> {
    async fn handle(&self, message: &OwnedMessage) -> Result<(), HandlerError> {
        let meta = MessageMeta::of(message);
        if let Some(ct) = &meta.headers.content_type
            && ct != &self.content_type
        {
            return Err(HandlerError::Reject(format!(
                "content-type {ct} where {} was expected",
                self.content_type
            )));
        }
        let Some(payload) = message.payload() else {
            return Err(HandlerError::Reject("empty payload".into()));
        };
        let decoded = M::decode(payload).map_err(|e| {
            HandlerError::Reject(format!("cannot decode {}: {e}", self.content_type))
        })?;
        self.handler.handle(Incoming { message: decoded, meta }).await
    }
}

#[derive(Debug)]
struct GroupConsumer {
    bus: Bus,
    topics: Vec<String>,
    group: String,
    start: StartAt,
    queue_depth: usize,
    assigned: Arc<watch::Sender<usize>>,
}

type Member = StreamConsumer<GroupContext>;

struct Worker {
    tx: mpsc::Sender<OwnedMessage>,
}

impl GroupConsumer {
    fn new(bus: Bus, topics: Vec<String>, group: &str) -> Self {
        Self {
            bus,
            topics,
            group: group.to_owned(),
            start: StartAt::Earliest,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            assigned: Arc::new(watch::Sender::new(0)),
        }
    }

    fn create(&self) -> Result<Member, BusError> {
        let reset = match self.start {
            StartAt::Earliest => "earliest",
            StartAt::Latest => "latest",
        };
        let config = self.bus.client_config(&[
            ("group.id", &self.group),
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            // The offset is stored by us, after the handler succeeded; never by librdkafka.
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", reset),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "1000"),
            ("queued.max.messages.kbytes", "16384"),
            // Frames are live data: answer fetches quickly rather than waiting for a fuller batch.
            ("fetch.wait.max.ms", "100"),
        ]);
        // The user's options may not turn the offset store back on: it loses messages.
        let mut config = config;
        config.set("enable.auto.offset.store", "false");
        config
            .create_with_context(GroupContext {
                group: self.group.clone(),
                assigned: self.assigned.clone(),
            })
            .map_err(BusError::Config)
    }

    async fn run<H: RawHandler>(
        self,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let consumer = Arc::new(self.create()?);
        let names: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|source| BusError::Kafka { topic: self.topics.join(","), source })?;
        info!(group = %self.group, topics = ?self.topics, "consumer started");

        let mut workers: HashMap<(String, i32), Worker> = HashMap::new();
        let mut tasks = JoinSet::new();
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                r = consumer.recv() => r,
            };
            let message = match received {
                Ok(m) => m.detach(),
                Err(e) => {
                    warn!(group = %self.group, error = %e, "consumer error; librdkafka retries");
                    continue;
                }
            };
            let key = (message.topic().to_owned(), message.partition());
            let worker = workers.entry(key).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(self.queue_depth);
                let ctx = WorkerCtx {
                    consumer: consumer.clone(),
                    consumed: metrics::counter!(m::CONSUMED_MESSAGES, "topic" => message.topic().to_owned()),
                    bus: self.bus.clone(),
                    group: self.group.clone(),
                    shutdown: shutdown.clone(),
                };
                tasks.spawn(ctx.run(rx, handler.clone()));
                Worker { tx }
            });
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                sent = worker.tx.send(message) => {
                    if sent.is_err() {
                        warn!(group = %self.group, "partition task ended early");
                    }
                }
            }
        }

        // Stop handing out work; let each partition task finish the message it is on.
        drop(workers);
        while tasks.join_next().await.is_some() {}
        // The final commit and the consumer's close block, and librdkafka's close can wait
        // forever for a group coordinator that does not answer (seen on the embedded broker):
        // do both on a thread of their own and wait for it a bounded time. The stored offsets
        // are committed before the close, so a close given up on loses nothing; the thread is
        // left behind and ends with the process.
        let group = self.group.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let spawned =
            std::thread::Builder::new().name("lookout-consumer-close".into()).spawn(move || {
                match consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) => {}
                    Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                    Err(e) => warn!(group = %group, error = %e, "final commit failed"),
                }
                consumer.unsubscribe();
                drop(consumer);
                let _ = done_tx.send(());
            });
        match spawned {
            Err(e) => warn!(group = %self.group, error = %e, "cannot start the closing thread"),
            Ok(_) => {
                if tokio::time::timeout(CLOSE_TIMEOUT, done_rx).await.is_err() {
                    warn!(group = %self.group, timeout = ?CLOSE_TIMEOUT, "the consumer did not close in time; offsets were committed, leaving it");
                }
            }
        }
        self.assigned.send_replace(0);
        info!(group = %self.group, "consumer stopped");
        Ok(())
    }
}

struct WorkerCtx {
    consumer: Arc<Member>,
    consumed: metrics::Counter,
    bus: Bus,
    group: String,
    shutdown: CancellationToken,
}

impl WorkerCtx {
    async fn run<H: RawHandler>(self, mut rx: mpsc::Receiver<OwnedMessage>, handler: Arc<H>) {
        // The newest handled offset not yet stored. Storing is an FFI call per message, so a
        // busy partition stores every `STORE_EVERY` messages or whenever its queue runs dry,
        // and always before the task ends: only handled messages are ever stored.
        let mut unstored: Option<(String, i32, i64)> = None;
        let mut since_store = 0;
        while let Some(message) = rx.recv().await {
            if self.shutdown.is_cancelled() {
                break;
            }
            let Some(verdict) = self.handle(&message, &*handler).await else {
                break; // shut down mid-retry: the message is not done, its offset is not stored
            };
            if let Err(reason) = verdict
                && !self.dead_letter(&message, &reason).await
            {
                break;
            }
            self.consumed.increment(1);
            unstored = Some((message.topic().to_owned(), message.partition(), message.offset()));
            since_store += 1;
            if since_store >= STORE_EVERY || rx.is_empty() {
                if let Some((topic, partition, offset)) = unstored.take() {
                    self.store(&topic, partition, offset);
                }
                since_store = 0;
            }
        }
        if let Some((topic, partition, offset)) = unstored {
            self.store(&topic, partition, offset);
        }
    }

    /// Runs the handler, retrying transient failures. `None` when shut down meanwhile;
    /// `Some(Err(reason))` when the message is to be dead-lettered.
    async fn handle<H: RawHandler>(
        &self,
        message: &OwnedMessage,
        handler: &H,
    ) -> Option<Result<(), String>> {
        let mut backoff = RETRY_BACKOFF_MIN;
        loop {
            match handler.handle(message).await {
                Ok(()) => return Some(Ok(())),
                Err(HandlerError::Reject(reason)) => return Some(Err(reason)),
                Err(HandlerError::Retry(reason)) => {
                    metrics::counter!(m::HANDLER_RETRIES, "topic" => message.topic().to_owned())
                        .increment(1);
                    warn!(
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        reason,
                        retry_in_ms = backoff.as_millis() as u64,
                        "handler failed; will retry",
                    );
                    if !self.pause(backoff).await {
                        return None;
                    }
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
    }

    /// Sends a message to the dead-letter topic, retrying until it is delivered. Returns
    /// false when shut down before that (the message then stays unacknowledged).
    async fn dead_letter(&self, message: &OwnedMessage, reason: &str) -> bool {
        let dlq = self.bus.topic_name(lookout_proto::topics::DLQ);
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let mut headers = OwnedHeaders::new();
        for (k, v) in headers::all(message.headers()) {
            headers = headers.insert(Header { key: &k, value: Some(&v) });
        }
        let headers = headers
            .insert(Header { key: headers::DLQ_TOPIC, value: Some(message.topic()) })
            .insert(Header { key: headers::DLQ_PARTITION, value: Some(&partition) })
            .insert(Header { key: headers::DLQ_OFFSET, value: Some(&offset) })
            .insert(Header { key: headers::DLQ_ERROR, value: Some(reason) })
            .insert(Header { key: headers::DLQ_GROUP, value: Some(&self.group) });
        let mut backoff = RETRY_BACKOFF_MIN;
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&dlq).headers(headers.clone());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            let sent = self.bus.producer().send(record, Duration::from_secs(5)).await;
            match sent {
                Ok(_) => {
                    metrics::counter!(m::DEAD_LETTERS, "topic" => message.topic().to_owned())
                        .increment(1);
                    warn!(
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        reason,
                        dlq = %dlq,
                        "message dead-lettered",
                    );
                    return true;
                }
                Err((e, _)) => {
                    warn!(dlq = %dlq, error = %e, "dead-letter topic unavailable; will retry");
                    if !self.pause(backoff).await {
                        return false;
                    }
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
    }

    /// Marks everything up to `offset` done. librdkafka commits stored offsets in the
    /// background.
    fn store(&self, topic: &str, partition: i32, offset: i64) {
        // `rd_kafka_offset_store` stores `offset + 1` itself: the next message to read.
        if let Err(e) = self.consumer.store_offset(topic, partition, offset) {
            // The partition was revoked meanwhile: its new owner handles the message again.
            debug!(topic, partition, offset, error = %e, "offset not stored");
        }
    }

    /// Sleeps unless shut down first; false when shut down.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }
}

/// Logs rebalances and failed commits and publishes the assignment's size; does nothing slow
/// inside librdkafka's callbacks.
struct GroupContext {
    group: String,
    assigned: Arc<watch::Sender<usize>>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        // The whole assignment, whichever assignment strategy (eager or incremental) is used.
        let owned = consumer.assignment().map_or(0, |tpl| tpl.count());
        self.assigned.send_replace(owned);
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!(group = %self.group, partitions = %describe(tpl), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                info!(group = %self.group, partitions = %describe(tpl), "partitions revoked");
            }
            Rebalance::Error(e) => warn!(group = %self.group, error = %e, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            // During a rebalance commits are refused; the next owner re-handles those messages.
            Err(e) => debug!(group = %self.group, error = %e, "commit failed"),
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    let mut s = String::new();
    for (i, e) in tpl.elements().iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{}/{}", e.topic(), e.partition()));
    }
    s
}
