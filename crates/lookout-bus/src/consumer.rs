//! Consumer groups with at-least-once delivery, one task per partition.
//!
//! How it runs (the design of vector's Kafka source):
//!
//! - A **driver thread** polls the consumer's main queue for as long as the subscriber runs.
//!   Only group events come there (rebalances, errors), so the member answers its group at all
//!   times, however slow a handler is: it never leaves the group for `max.poll.interval.ms`.
//! - Each assigned partition is read from **its own queue** (librdkafka's partition queues)
//!   by **its own task**, which hands the handler up to `max` messages at a time, in order,
//!   and stores the offset of the last one only after the handler succeeded (or the bad ones
//!   were dead-lettered). librdkafka commits stored offsets every second, on revoke and on
//!   close.
//! - A partition's queue is bounded by librdkafka (`queued.min.messages`,
//!   `queued.max.messages.kbytes` apply per partition here): a partition whose handler is
//!   slow stops being fetched, the others go on. A partition whose handler fails transiently
//!   is **paused** (its prefetched messages dropped, fetching stopped) until the retry
//!   succeeds.
//! - On **revoke**, the rebalance waits (at most the drain timeout) for the partition's task to
//!   finish the messages it is on, then commits: the next owner starts after them, so a
//!   rebalance hands no message to two members. A task still busy at the deadline is
//!   abandoned; its messages are handled again by the next owner. Lost partitions (a session
//!   timeout) are abandoned at once, and get a new task if they come back. Groups use the `cooperative-sticky` assignor, so only the
//!   partitions that move stop.
//! - A **handler that panics** stops the subscriber with [`BusError::HandlerPanicked`]: the
//!   service fails and its orchestrator restarts it, rather than a partition silently wedged.

use std::{
    collections::HashMap,
    marker::PhantomData,
    sync::{Arc, mpsc as std_mpsc},
    time::Duration,
};

use lookout_proto::{BusMessage, Topic};
use rdkafka::{
    ClientContext, Offset, TopicPartitionList,
    consumer::{
        BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
        stream_consumer::StreamPartitionQueue,
    },
    error::{KafkaError, KafkaResult, RDKafkaErrorCode},
};
use tokio::{
    sync::{mpsc, watch},
    task::{AbortHandle, JoinSet},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{
    Bus, BusError, HandlerError, Incoming, RawMessage,
    backoff::Backoff,
    dead_letter::{DeadLettered, DeadLetters},
    metrics as m,
};

/// First and largest pause before a transient failure is retried.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a stopping consumer waits for librdkafka to close it (leave the group).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a revoke waits for a partition's task to finish what it is on.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a consumer group without committed offsets starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The oldest retained message: nothing produced before the group existed is missed.
    #[default]
    Earliest,
    /// Only messages produced from now on.
    Latest,
}

/// A handler for messages of type `M`, one at a time.
///
/// Return `Ok(())` when the message is done (its offset will be stored),
/// [`HandlerError::Transient`] to get the same message again after a backoff, or
/// [`HandlerError::Permanent`] to dead-letter it. Closures `Fn(Incoming<M>) -> impl Future`
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

/// Messages of a batch that can never be handled, by their index in the batch, with why.
/// They are dead-lettered; the rest of the batch is done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rejected(Vec<(usize, String)>);

impl Rejected {
    /// Nothing rejected: the whole batch is done.
    pub fn none() -> Self {
        Self::default()
    }

    /// Rejects the message at `index` of the batch.
    pub fn push(&mut self, index: usize, reason: impl Into<String>) {
        self.0.push((index, reason.into()));
    }

    /// Whether nothing was rejected.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A handler for batches of messages of type `M`: up to `max` messages of one partition, in
/// order (see [`Subscriber::run_batched`]).
///
/// Return `Ok(rejected)` when the batch is done (the listed messages are dead-lettered and
/// the offsets of all are stored); [`HandlerError::Transient`] to get the same batch again
/// after a backoff; or [`HandlerError::Permanent`] when the batch cannot be handled as a
/// whole: its messages then come again one at a time (batches of one), and those refused alone
/// are dead-lettered. A batch that fails must have had no effect (roll its transaction back).
/// Closures `Fn(Vec<Incoming<M>>) -> impl Future` are batch handlers.
pub trait BatchHandler<M>: Send + Sync + 'static {
    /// Handles a batch.
    fn handle(
        &self,
        batch: Vec<Incoming<M>>,
    ) -> impl Future<Output = Result<Rejected, HandlerError>> + Send;
}

impl<M, F, Fut> BatchHandler<M> for F
where
    M: Send + 'static,
    F: Fn(Vec<Incoming<M>>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Rejected, HandlerError>> + Send,
{
    fn handle(
        &self,
        batch: Vec<Incoming<M>>,
    ) -> impl Future<Output = Result<Rejected, HandlerError>> + Send {
        self(batch)
    }
}

/// A handler of undecoded messages, for tools that handle any topic.
pub trait RawHandler: Send + Sync + 'static {
    /// Handles one message; see [`Handler`] for the meaning of the result.
    fn handle(&self, message: &RawMessage)
    -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// How many messages a partition task hands a handler at a time.
#[derive(Debug, Clone, Copy)]
struct Batching {
    max: usize,
    linger: Duration,
}

/// A consumer-group member for one topic of type `M`.
#[derive(Debug)]
pub struct Subscriber<M> {
    group: Group,
    _message: PhantomData<fn() -> M>,
}

impl<M: BusMessage> Subscriber<M> {
    pub(crate) fn new(bus: Bus, topic: Topic<M>, group: &str) -> Self {
        let name = bus.topic_name(topic.name());
        Self { group: Group::new(bus, vec![name], group), _message: PhantomData }
    }

    /// Where a new group starts (default: the earliest retained message).
    pub fn start_at(mut self, start: StartAt) -> Self {
        self.group.start = start;
        self
    }

    /// How long a revoke waits for a partition's handler to finish the messages it is on
    /// (default 10 s); keep it below `max.poll.interval.ms`.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.group.drain_timeout = timeout;
        self
    }

    /// How many partitions this member owns, updated at every rebalance: 0 before it joined,
    /// while a rebalance is under way, and after it stopped.
    pub fn assignment(&self) -> watch::Receiver<usize> {
        self.group.assigned.subscribe()
    }

    /// Consumes one message at a time per partition until `shutdown` is cancelled, then lets
    /// each partition finish the message it is on, commits and leaves the group. Messages
    /// that do not decode, or whose `content-type` names another type, are dead-lettered.
    pub async fn run<H: Handler<M>>(
        self,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let work = OneByOne { handler, _message: PhantomData };
        self.group
            .run(Arc::new(work), Batching { max: 256, linger: Duration::ZERO }, shutdown)
            .await
    }

    /// Consumes in batches: the handler gets up to `max` messages of one partition at a time,
    /// in order, waiting at most `linger` after the first for the batch to fill. Partitions
    /// are batched separately (several partitions' batches are handled at once, each in its
    /// own task). Offsets are stored after the handler succeeded. See [`BatchHandler`].
    pub async fn run_batched<H: BatchHandler<M>>(
        self,
        max: usize,
        linger: Duration,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let work = Batched { handler, _message: PhantomData };
        self.group.run(Arc::new(work), Batching { max: max.max(1), linger }, shutdown).await
    }
}

/// A consumer-group member that hands raw messages to a [`RawHandler`].
#[derive(Debug)]
pub struct RawSubscriber {
    group: Group,
}

impl RawSubscriber {
    pub(crate) fn new(bus: Bus, topics: Vec<String>, group: &str) -> Self {
        Self { group: Group::new(bus, topics, group) }
    }

    /// Where a new group starts.
    pub fn start_at(mut self, start: StartAt) -> Self {
        self.group.start = start;
        self
    }

    /// How many partitions this member owns; see [`Subscriber::assignment`].
    pub fn assignment(&self) -> watch::Receiver<usize> {
        self.group.assigned.subscribe()
    }

    /// Consumes until `shutdown` is cancelled; see [`Subscriber::run`].
    pub async fn run<H: RawHandler>(
        self,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let work = Raw(handler);
        self.group
            .run(Arc::new(work), Batching { max: 256, linger: Duration::ZERO }, shutdown)
            .await
    }
}

/// What became of a run of messages handed to a handler.
#[derive(Debug, Default)]
struct Verdict {
    /// How many messages, from the first, are done.
    done: usize,
    /// Messages among the done ones to dead-letter: (index, reason).
    rejected: Vec<(usize, String)>,
    /// Why the message after the done ones failed, if it did (transiently or fatally).
    failed: Option<HandlerError>,
}

/// What a partition task does with the messages it read. Handlers of single messages stop
/// between two messages once `stop` is cancelled (fewer done, none failed); batch handlers
/// finish their batch.
trait Work: Send + Sync + 'static {
    fn handle(
        &self,
        messages: &[RawMessage],
        stop: &CancellationToken,
    ) -> impl Future<Output = Verdict> + Send;
}

/// One-at-a-time typed handler.
struct OneByOne<M, H> {
    handler: H,
    _message: PhantomData<fn() -> M>,
}

impl<M: BusMessage, H: Handler<M>> Work for OneByOne<M, H> {
    async fn handle(&self, messages: &[RawMessage], stop: &CancellationToken) -> Verdict {
        one_at_a_time(messages, stop, |raw| async move {
            match raw.decode::<M>() {
                Ok(incoming) => self.handler.handle(incoming).await,
                Err(reason) => Err(HandlerError::Permanent(reason)),
            }
        })
        .await
    }
}

/// Raw handler, one at a time.
struct Raw<H>(H);

impl<H: RawHandler> Work for Raw<H> {
    async fn handle(&self, messages: &[RawMessage], stop: &CancellationToken) -> Verdict {
        one_at_a_time(messages, stop, |raw| self.0.handle(raw)).await
    }
}

/// Hands `messages` to `handle` one after the other, stopping between two once `stop` is
/// cancelled, or at the first that fails transiently or fatally.
async fn one_at_a_time<'a, F, Fut>(
    messages: &'a [RawMessage],
    stop: &CancellationToken,
    mut handle: F,
) -> Verdict
where
    F: FnMut(&'a RawMessage) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let mut verdict = Verdict::default();
    for (i, raw) in messages.iter().enumerate() {
        if stop.is_cancelled() {
            break;
        }
        match handle(raw).await {
            Ok(()) => {}
            Err(HandlerError::Permanent(reason)) => verdict.rejected.push((i, reason)),
            Err(e) => {
                verdict.failed = Some(e);
                return verdict;
            }
        }
        verdict.done = i + 1;
    }
    verdict
}

/// Batch handler.
struct Batched<M, H> {
    handler: H,
    _message: PhantomData<fn() -> M>,
}

impl<M: BusMessage, H: BatchHandler<M>> Batched<M, H> {
    /// Decodes `messages`; the undecodable ones are rejected, the rest handed over as one
    /// batch. `Err` only for a transient failure.
    async fn batch(&self, messages: &[RawMessage]) -> Result<Vec<(usize, String)>, HandlerError> {
        let mut rejected = Vec::new();
        let mut batch = Vec::with_capacity(messages.len());
        let mut index = Vec::with_capacity(messages.len());
        for (i, raw) in messages.iter().enumerate() {
            match raw.decode::<M>() {
                Ok(incoming) => {
                    batch.push(incoming);
                    index.push(i);
                }
                Err(reason) => rejected.push((i, reason)),
            }
        }
        if batch.is_empty() {
            return Ok(rejected);
        }
        let refused = self.handler.handle(batch).await?;
        for (j, reason) in refused.0 {
            if let Some(&i) = index.get(j) {
                rejected.push((i, reason));
            }
        }
        rejected.sort_by_key(|(i, _)| *i);
        Ok(rejected)
    }
}

impl<M: BusMessage, H: BatchHandler<M>> Work for Batched<M, H> {
    async fn handle(&self, messages: &[RawMessage], _stop: &CancellationToken) -> Verdict {
        match self.batch(messages).await {
            Ok(rejected) => Verdict { done: messages.len(), rejected, failed: None },
            Err(HandlerError::Permanent(reason)) if messages.len() == 1 => {
                Verdict { done: 1, rejected: vec![(0, reason)], failed: None }
            }
            Err(HandlerError::Permanent(reason)) => {
                // Find the bad ones: each message alone.
                debug!(
                    messages = messages.len(),
                    reason, "batch refused; handling its messages one at a time"
                );
                let mut verdict = Verdict::default();
                for (i, raw) in messages.iter().enumerate() {
                    match self.batch(std::slice::from_ref(raw)).await {
                        Ok(rejected) => {
                            verdict.rejected.extend(rejected.into_iter().map(|(_, r)| (i, r)));
                        }
                        Err(HandlerError::Permanent(reason)) => verdict.rejected.push((i, reason)),
                        Err(e) => {
                            verdict.failed = Some(e);
                            return verdict;
                        }
                    }
                    verdict.done = i + 1;
                }
                verdict
            }
            Err(e) => Verdict { done: 0, rejected: Vec::new(), failed: Some(e) },
        }
    }
}

type Member = StreamConsumer<GroupContext>;
type TopicPartition = (Arc<str>, i32);

#[derive(Debug)]
struct Group {
    bus: Bus,
    topics: Vec<String>,
    group: String,
    start: StartAt,
    drain_timeout: Duration,
    assigned: Arc<watch::Sender<usize>>,
}

/// What the rebalance callbacks (on the driver thread) ask of the coordinating task. The
/// callback waits until the sender in the event is dropped.
enum Event {
    Assigned(Vec<TopicPartition>, std_mpsc::SyncSender<()>),
    Revoked { partitions: Vec<TopicPartition>, lost: bool, done: std_mpsc::SyncSender<()> },
    Stray(TopicPartition, i64),
}

/// A running partition task.
struct Running {
    stop: CancellationToken,
    abort: AbortHandle,
}

impl Group {
    fn new(bus: Bus, topics: Vec<String>, group: &str) -> Self {
        Self {
            bus,
            topics,
            group: group.to_owned(),
            start: StartAt::Earliest,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            assigned: Arc::new(watch::Sender::new(0)),
        }
    }

    fn create(&self, events: mpsc::UnboundedSender<Event>) -> Result<Arc<Member>, BusError> {
        let reset = match self.start {
            StartAt::Earliest => "earliest",
            StartAt::Latest => "latest",
        };
        let mut config = self.bus.client_config(&[
            ("group.id", &self.group),
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("auto.offset.reset", reset),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "1000"),
            // Only the partitions that move stop during a rebalance.
            ("partition.assignment.strategy", "cooperative-sticky"),
            // Per partition here (each has its own queue): bounded prefetch.
            ("queued.min.messages", "10000"),
            ("queued.max.messages.kbytes", "8192"),
            // Live video: answer fetches quickly. Real Kafka answers a fetch as soon as data
            // is there, so this only sets how often an idle consumer asks; the embedded broker
            // holds every fetch without data for the full time.
            ("fetch.wait.max.ms", "10"),
        ]);
        // The offset is stored by us, after the handler succeeded; never by librdkafka: its
        // automatic store loses messages. The user's options may not turn it back on.
        config.set("enable.auto.offset.store", "false");
        let context = GroupContext {
            group: self.group.clone(),
            assigned: self.assigned.clone(),
            events,
            wait: self.drain_timeout + Duration::from_secs(5),
        };
        Ok(Arc::new(config.create_with_context(context).map_err(BusError::Config)?))
    }

    async fn run<W: Work>(
        self,
        work: Arc<W>,
        batching: Batching,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let consumer = self.create(events_tx)?;
        let names: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|source| BusError::Kafka { topic: self.topics.join(","), source })?;
        info!(group = %self.group, topics = ?self.topics, "consumer started");

        let driver_stop = CancellationToken::new();
        let driver = spawn_driver(consumer.clone(), driver_stop.clone(), &self.group)?;

        let ctx = Arc::new(PartitionCtx {
            consumer: consumer.clone(),
            work,
            batching,
            dead_letters: self.bus.dead_letters(),
            group: self.group.clone(),
        });
        let mut tasks: JoinSet<(TopicPartition, Result<(), BusError>)> = JoinSet::new();
        let mut running: HashMap<TopicPartition, Running> = HashMap::new();
        let failure = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break None,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Some(e) = self.finished(joined, &mut running) {
                        break Some(e);
                    }
                }
                Some(event) = events.recv() => match event {
                    Event::Assigned(partitions, done) => {
                        for tp in partitions {
                            self.start_partition(&consumer, &ctx, tp, &mut tasks, &mut running);
                        }
                        drop(done);
                    }
                    Event::Revoked { partitions, lost, done } => {
                        if let Some(e) = self.drain(&partitions, lost, &mut tasks, &mut running).await {
                            break Some(e);
                        }
                        drop(done);
                    }
                    Event::Stray((topic, partition), offset) => {
                        break Some(BusError::Internal {
                            group: self.group.clone(),
                            reason: format!("message {topic}/{partition}@{offset} arrived outside its partition's queue"),
                        });
                    }
                },
            }
        };

        // Stop reading; let each partition task finish what it is on (a failure abandons it).
        let all: Vec<TopicPartition> = running.keys().cloned().collect();
        if failure.is_some() {
            tasks.abort_all();
        } else {
            let _ = self.drain(&all, false, &mut tasks, &mut running).await;
        }
        while tasks.join_next().await.is_some() {}
        drop(events);
        driver_stop.cancel();
        let _ = tokio::task::spawn_blocking(move || driver.join()).await;
        drop(ctx);
        close(consumer, &self.group).await;
        self.assigned.send_replace(0);
        match failure {
            None => {
                info!(group = %self.group, "consumer stopped");
                Ok(())
            }
            Some(e) => {
                error!(group = %self.group, error = %e, "consumer failed");
                Err(e)
            }
        }
    }

    fn start_partition<W: Work>(
        &self,
        consumer: &Arc<Member>,
        ctx: &Arc<PartitionCtx<W>>,
        tp: TopicPartition,
        tasks: &mut JoinSet<(TopicPartition, Result<(), BusError>)>,
        running: &mut HashMap<TopicPartition, Running>,
    ) {
        if running.contains_key(&tp) {
            return;
        }
        let Some(queue) = consumer.split_partition_queue(&tp.0, tp.1) else {
            // Only for a partition librdkafka does not know; its messages would reach the main
            // queue, where the driver reports them.
            warn!(group = %self.group, topic = %tp.0, partition = tp.1, "no queue for an assigned partition");
            return;
        };
        let stop = CancellationToken::new();
        let ctx = ctx.clone();
        let key = tp.clone();
        let task_stop = stop.clone();
        let abort = tasks.spawn(async move {
            let result = ctx.run(&key, queue, task_stop).await;
            (key, result)
        });
        debug!(group = %self.group, topic = %tp.0, partition = tp.1, "partition task started");
        running.insert(tp, Running { stop, abort });
    }

    /// A partition task ended: fine when it was told to stop; otherwise the consumer fails.
    fn finished(
        &self,
        joined: Result<(TopicPartition, Result<(), BusError>), tokio::task::JoinError>,
        running: &mut HashMap<TopicPartition, Running>,
    ) -> Option<BusError> {
        match joined {
            Ok((tp, result)) => {
                running.remove(&tp);
                result.err()
            }
            Err(e) => {
                let id = e.id();
                let tp = running.iter().find(|(_, r)| r.abort.id() == id).map(|(tp, _)| tp.clone());
                if let Some(tp) = &tp {
                    running.remove(tp);
                }
                if !e.is_panic() {
                    // Aborted: its partition was lost, or a drain gave up on it. Forgotten
                    // either way, so the partition gets a new task when it is assigned again.
                    return None;
                }
                let (topic, partition) = tp.map_or(("?".into(), -1), |(t, p)| (t.to_string(), p));
                Some(BusError::HandlerPanicked { topic, partition, message: panic_message(e) })
            }
        }
    }

    /// Stops the tasks of `partitions` and waits for them: each finishes the messages it is on
    /// and stores their offsets, unless the partitions are lost (then they are abandoned) or
    /// the drain timeout passes (then the rest are abandoned and handled again by the next
    /// owner).
    async fn drain(
        &self,
        partitions: &[TopicPartition],
        lost: bool,
        tasks: &mut JoinSet<(TopicPartition, Result<(), BusError>)>,
        running: &mut HashMap<TopicPartition, Running>,
    ) -> Option<BusError> {
        let mut waiting: Vec<TopicPartition> = Vec::new();
        for tp in partitions {
            if let Some(r) = running.get(tp) {
                if lost {
                    r.abort.abort();
                } else {
                    r.stop.cancel();
                }
                waiting.push(tp.clone());
            }
        }
        let deadline = Instant::now() + self.drain_timeout;
        while waiting.iter().any(|tp| running.contains_key(tp)) {
            let joined = tokio::select! {
                j = tasks.join_next() => j,
                () = tokio::time::sleep_until(deadline) => {
                    for tp in &waiting {
                        if let Some(r) = running.remove(tp) {
                            warn!(group = %self.group, topic = %tp.0, partition = tp.1, timeout = ?self.drain_timeout, "partition task did not finish in time; abandoned, its messages will be handled again");
                            r.abort.abort();
                        }
                    }
                    return None;
                }
            };
            let Some(joined) = joined else { break };
            if let Some(e) = self.finished(joined, running) {
                return Some(e);
            }
        }
        None
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".to_owned())
}

/// Polls the main queue on a thread of its own, so that rebalance callbacks may wait for
/// partition tasks without holding a runtime thread.
fn spawn_driver(
    consumer: Arc<Member>,
    stop: CancellationToken,
    group: &str,
) -> Result<std::thread::JoinHandle<()>, BusError> {
    let handle = tokio::runtime::Handle::current();
    let group = group.to_owned();
    std::thread::Builder::new()
        .name("lookout-consumer".into())
        .spawn(move || {
            handle.block_on(async move {
                loop {
                    let received = tokio::select! {
                        () = stop.cancelled() => break,
                        r = consumer.recv() => r,
                    };
                    match received {
                        // Every assigned partition has its own queue: nothing should come here.
                        Ok(m) => {
                            let tp = (
                                Arc::<str>::from(rdkafka::Message::topic(&m)),
                                rdkafka::Message::partition(&m),
                            );
                            let offset = rdkafka::Message::offset(&m);
                            drop(m);
                            let _ = consumer.context().events.send(Event::Stray(tp, offset));
                        }
                        Err(e) => {
                            warn!(group = %group, error = %e, "consumer error; librdkafka retries")
                        }
                    }
                }
            });
        })
        .map_err(|e| BusError::Internal {
            group: String::new(),
            reason: format!("cannot start the consumer thread: {e}"),
        })
}

/// Commits the stored offsets and leaves the group. librdkafka's close can wait forever for a
/// group coordinator that does not answer (seen on the embedded broker): both run on a thread
/// of their own, waited for a bounded time. The offsets are committed before the close, so a
/// close given up on loses nothing; the thread is left behind and ends with the process.
async fn close(consumer: Arc<Member>, group: &str) {
    let group_name = group.to_owned();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let spawned =
        std::thread::Builder::new().name("lookout-consumer-close".into()).spawn(move || {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => warn!(group = %group_name, error = %e, "final commit failed"),
            }
            consumer.unsubscribe();
            drop(consumer);
            let _ = done_tx.send(());
        });
    match spawned {
        Err(e) => warn!(group, error = %e, "cannot start the closing thread"),
        Ok(_) => {
            if tokio::time::timeout(CLOSE_TIMEOUT, done_rx).await.is_err() {
                warn!(group, timeout = ?CLOSE_TIMEOUT, "the consumer did not close in time; offsets were committed, leaving it");
            }
        }
    }
}

/// What every partition task of a subscriber shares.
struct PartitionCtx<W> {
    consumer: Arc<Member>,
    work: Arc<W>,
    batching: Batching,
    dead_letters: DeadLetters,
    group: String,
}

impl<W: Work> PartitionCtx<W> {
    /// Reads one partition until `stop`: takes what is there (up to the batch size, lingering
    /// for more when asked), hands it to the handler, dead-letters what it refused and stores
    /// the offset after the last message done. A transient failure pauses the partition and
    /// retries after a backoff. Returns when stopped, after the messages it was on are done
    /// (or, when stopped while retrying, abandoned without storing their offsets).
    async fn run(
        &self,
        tp: &TopicPartition,
        queue: StreamPartitionQueue<GroupContext>,
        stop: CancellationToken,
    ) -> Result<(), BusError> {
        use futures_util::{FutureExt as _, StreamExt as _};

        let consumed = metrics::counter!(m::CONSUMED_MESSAGES, "topic" => tp.0.to_string());
        let retries = metrics::counter!(m::HANDLER_RETRIES, "topic" => tp.0.to_string());
        let mut stream = queue.stream();
        let mut chunk: Vec<RawMessage> = Vec::with_capacity(self.batching.max.min(1024));
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        loop {
            // The first message: wait for it.
            let first = tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                m = stream.next() => m,
            };
            match first {
                Some(Ok(m)) => chunk.push(RawMessage::copy_from(&m, &tp.0)),
                Some(Err(e)) => {
                    warn!(group = %self.group, topic = %tp.0, partition = tp.1, error = %e, "partition read error");
                    continue;
                }
                None => return Ok(()),
            }
            // More: what is already there, then what comes within the linger time.
            let linger_until = Instant::now() + self.batching.linger;
            while chunk.len() < self.batching.max {
                let next = match stream.next().now_or_never() {
                    Some(n) => n,
                    None if self.batching.linger.is_zero() => break,
                    None => tokio::select! {
                        biased;
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep_until(linger_until) => break,
                        n = stream.next() => n,
                    },
                };
                match next {
                    Some(Ok(m)) => chunk.push(RawMessage::copy_from(&m, &tp.0)),
                    Some(Err(e)) => {
                        warn!(group = %self.group, topic = %tp.0, partition = tp.1, error = %e, "partition read error");
                        break;
                    }
                    None => break,
                }
            }

            let mut start = 0;
            let mut paused = false;
            let outcome = 'handle: loop {
                let verdict = self.work.handle(&chunk[start..], &stop).await;
                let stopped = verdict.failed.is_none() && start + verdict.done < chunk.len();
                for (i, reason) in &verdict.rejected {
                    let raw = &chunk[start + i];
                    match self.dead_letters.send(raw, &self.group, reason, &stop).await? {
                        DeadLettered::Stopped => {
                            // Not dead-lettered: the messages from here on are not done.
                            self.store(tp, &chunk[..start + i]);
                            break 'handle Stop::Abandoned;
                        }
                        outcome => warn!(
                            group = %self.group,
                            topic = %tp.0,
                            partition = tp.1,
                            offset = raw.offset,
                            reason = %reason,
                            truncated = matches!(outcome, DeadLettered::Truncated { .. }),
                            dlq = %self.dead_letters.topic(),
                            "message dead-lettered",
                        ),
                    }
                }
                consumed.increment(verdict.done as u64);
                start += verdict.done;
                let reason = match verdict.failed {
                    None if stopped => {
                        // Told to stop between two messages: the rest are not done.
                        self.store(tp, &chunk[..start]);
                        break Stop::Abandoned;
                    }
                    None => break Stop::Done,
                    Some(HandlerError::Transient(reason)) => reason,
                    Some(HandlerError::Fatal(reason) | HandlerError::Permanent(reason)) => {
                        self.store(tp, &chunk[..start]);
                        return Err(BusError::HandlerFailed {
                            topic: tp.0.to_string(),
                            partition: tp.1,
                            reason,
                        });
                    }
                };
                self.store(tp, &chunk[..start]);
                if !paused {
                    self.pause(tp, true);
                    paused = true;
                }
                retries.increment(1);
                let delay_hint = backoff.attempts();
                warn!(
                    group = %self.group,
                    topic = %tp.0,
                    partition = tp.1,
                    offset = chunk[start].offset,
                    reason,
                    attempt = delay_hint + 1,
                    "handler failed; partition paused, will retry",
                );
                if !backoff.wait(&stop).await {
                    break Stop::Abandoned;
                }
            };
            backoff.reset();
            if paused {
                self.pause(tp, false);
            }
            match outcome {
                Stop::Done => {
                    self.store(tp, &chunk);
                    chunk.clear();
                }
                Stop::Abandoned => return Ok(()),
            }
        }
    }

    /// Marks everything up to the last of `done` handled. librdkafka commits stored offsets in
    /// the background.
    fn store(&self, tp: &TopicPartition, done: &[RawMessage]) {
        let Some(last) = done.last() else { return };
        // `rd_kafka_offset_store` stores `offset + 1` itself: the next message to read.
        if let Err(e) = self.consumer.store_offset(&tp.0, tp.1, last.offset) {
            // The partition was revoked meanwhile: its new owner handles the message again.
            debug!(topic = %tp.0, partition = tp.1, offset = last.offset, error = %e, "offset not stored");
        }
    }

    /// Pauses (stops fetching, drops what was prefetched) or resumes one partition. On resume
    /// librdkafka fetches from after the last message this task took.
    fn pause(&self, tp: &TopicPartition, pause: bool) {
        let mut tpl = TopicPartitionList::new();
        if tpl.add_partition_offset(&tp.0, tp.1, Offset::Invalid).is_err() {
            return;
        }
        let result = if pause { self.consumer.pause(&tpl) } else { self.consumer.resume(&tpl) };
        if let Err(e) = result {
            debug!(topic = %tp.0, partition = tp.1, pause, error = %e, "cannot pause/resume partition");
        }
    }
}

enum Stop {
    Done,
    Abandoned,
}

/// The rebalance callbacks: hand the work to the coordinating task and wait for it, commit
/// after a revoke, and publish the assignment's size.
struct GroupContext {
    group: String,
    assigned: Arc<watch::Sender<usize>>,
    events: mpsc::UnboundedSender<Event>,
    /// The longest a callback waits for the coordinating task.
    wait: Duration,
}

impl GroupContext {
    /// Sends an event and waits until the coordinating task dropped its sender (done), or it
    /// is gone (the subscriber stopped), or the wait ran out.
    fn ask(&self, make: impl FnOnce(std_mpsc::SyncSender<()>) -> Event) {
        let (done, wait) = std_mpsc::sync_channel(0);
        if self.events.send(make(done)).is_err() {
            return;
        }
        if let Err(std_mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(self.wait) {
            warn!(group = %self.group, "rebalance went on before the partition tasks answered");
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements().iter().map(|e| (Arc::<str>::from(e.topic()), e.partition())).collect()
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) if tpl.count() > 0 => {
                // Partition queues are split before the partitions are assigned, so no message
                // reaches the main queue.
                let tps = partitions(tpl);
                self.ask(|done| Event::Assigned(tps, done));
            }
            Rebalance::Revoke(tpl) if tpl.count() > 0 => {
                let lost = consumer.assignment_lost();
                let tps = partitions(tpl);
                self.ask(|done| Event::Revoked { partitions: tps, lost, done });
                if !lost {
                    match consumer.commit_consumer_state(CommitMode::Sync) {
                        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                        Err(e) => {
                            warn!(group = %self.group, error = %e, "commit on revoke failed; the next owner may handle some messages again")
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // The whole assignment, whichever protocol (eager or cooperative) is used.
        let owned = consumer.assignment().map_or(0, |tpl| tpl.count());
        self.assigned.send_replace(owned);
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!(group = %self.group, partitions = %describe(tpl), owned, "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                info!(group = %self.group, partitions = %describe(tpl), owned, "partitions revoked");
            }
            Rebalance::Error(e) => warn!(group = %self.group, error = %e, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            // During a rebalance commits may be refused; the next owner re-handles those.
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
