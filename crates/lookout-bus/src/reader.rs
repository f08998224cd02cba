//! Readers by position: a topic's partitions read without a consumer group and without
//! commits, from a time, an offset, the last N messages or the end; and single messages
//! fetched again by position.
//!
//! ```no_run
//! # async fn demo(bus: lookout_bus::Bus) -> Result<(), lookout_bus::BusError> {
//! use lookout_bus::Start;
//! use tokio_util::sync::CancellationToken;
//!
//! let name = bus.topic_name("lookout.changes");
//! let shutdown = CancellationToken::new();
//! let reader = bus.reader(&name).start(Start::Last(10)).open(&shutdown).await?;
//! if let Some(reader) = reader {
//!     let first = reader.recv().await?;
//!     println!("{}/{}@{}", first.topic, first.partition, first.offset);
//! }
//! # Ok(()) }
//! ```

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _, StreamConsumer},
    error::KafkaError,
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{Bus, BusError, RawMessage};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a reader waiting for its topic asks again.
const TOPIC_WAIT: Duration = Duration::from_millis(500);
/// How long a fetch by position waits for its message.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a reader starts on each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest retained message.
    Beginning,
    /// After the newest message: only messages produced from now on.
    End,
    /// This offset (kept within what the partition retains).
    Offset(i64),
    /// The last `n` messages of each partition (`Last(1)`: the newest).
    Last(u64),
    /// The first message whose Kafka timestamp is at or after this time (Unix ms).
    Time(i64),
}

/// One partition's place at the time a reader opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionStart {
    /// Partition id.
    pub partition: i32,
    /// The first offset the reader reads.
    pub offset: i64,
    /// The partition's end (the offset of the next message) when the reader opened.
    pub high: i64,
}

/// Configures a [`Reader`]; from [`Bus::reader`].
#[derive(Debug, Clone)]
pub struct ReaderBuilder {
    bus: Bus,
    topic: String,
    partitions: Option<Vec<i32>>,
    start: Start,
    wait_for_topic: bool,
    opts: Vec<(String, String)>,
}

impl ReaderBuilder {
    pub(crate) fn new(bus: Bus, topic: &str) -> Self {
        Self {
            bus,
            topic: topic.to_owned(),
            partitions: None,
            start: Start::Beginning,
            wait_for_topic: false,
            opts: Vec::new(),
        }
    }

    /// Reads only these partitions (default: all).
    pub fn partitions(mut self, partitions: impl IntoIterator<Item = i32>) -> Self {
        self.partitions = Some(partitions.into_iter().collect());
        self
    }

    /// Where to start (default: the beginning).
    pub fn start(mut self, start: Start) -> Self {
        self.start = start;
        self
    }

    /// Waits for the topic to exist instead of failing with [`BusError::UnknownTopic`].
    pub fn wait_for_topic(mut self) -> Self {
        self.wait_for_topic = true;
        self
    }

    /// Sets a librdkafka consumer property for this reader (e.g. `max.partition.fetch.bytes`);
    /// the user's `--kafka-opt` properties still win.
    pub fn with_opt(mut self, key: &str, value: &str) -> Self {
        self.opts.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Positions the reader. `Ok(None)` when `shutdown` came while waiting for the topic.
    pub async fn open(self, shutdown: &CancellationToken) -> Result<Option<Reader>, BusError> {
        let partitions = loop {
            let (bus, topic) = (self.bus.clone(), self.topic.clone());
            match blocking(move || crate::admin::partitions_blocking(&bus, &topic)).await {
                Ok(ids) => break ids,
                Err(e @ BusError::UnknownTopic { .. }) if !self.wait_for_topic => return Err(e),
                Err(e) => {
                    debug!(topic = %self.topic, error = %e, "waiting for the topic");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(None),
                        () = tokio::time::sleep(TOPIC_WAIT) => {}
                    }
                }
            }
        };
        let partitions: Vec<i32> = match &self.partitions {
            None => partitions,
            Some(wanted) => {
                if let Some(missing) = wanted.iter().find(|p| !partitions.contains(p)) {
                    return Err(BusError::UnknownPartition {
                        topic: self.topic.clone(),
                        partition: *missing,
                        partitions: partitions.len() as i32,
                    });
                }
                wanted.clone()
            }
        };
        let fetcher = Fetcher::new(self.bus.clone(), &self.topic);
        let starts = positions(&self.bus, &self.topic, &partitions, self.start, &fetcher).await?;
        let mut base: Vec<(&str, &str)> = vec![
            ("group.id", "lookout-reader"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            // Readers follow live data: answer fetches quickly (see the consumer's note).
            ("fetch.wait.max.ms", "10"),
        ];
        base.extend(self.opts.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let consumer: StreamConsumer =
            self.bus.client_config(&base).create().map_err(BusError::Config)?;
        let mut tpl = TopicPartitionList::new();
        for s in &starts {
            tpl.add_partition_offset(&self.topic, s.partition, Offset::Offset(s.offset))
                .map_err(kafka(&self.topic))?;
        }
        consumer.assign(&tpl).map_err(kafka(&self.topic))?;
        Ok(Some(Reader { consumer, topic: self.topic.into(), starts, fetcher }))
    }
}

/// Reads a topic's partitions from given positions, without a group and without commits.
/// Messages of one partition come in order; partitions are interleaved as they arrive.
pub struct Reader {
    consumer: StreamConsumer,
    topic: Arc<str>,
    starts: Vec<PartitionStart>,
    fetcher: Fetcher,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("topic", &self.topic).field("starts", &self.starts).finish()
    }
}

impl Reader {
    /// The topic's full name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Where each partition started, and where it ended when the reader opened.
    pub fn starts(&self) -> &[PartitionStart] {
        &self.starts
    }

    /// The next message. Cancel-safe. Errors are the client's (a broker away, …); librdkafka
    /// retries on its own, so a caller may log them and go on.
    pub async fn recv(&self) -> Result<RawMessage, BusError> {
        let m = self.consumer.recv().await.map_err(kafka(&self.topic))?;
        Ok(RawMessage::copy_from(&m, &self.topic))
    }

    /// Fetches one message again by position; see [`Fetcher::fetch`].
    pub async fn fetch(&self, partition: i32, offset: i64) -> Result<Option<RawMessage>, BusError> {
        self.fetcher.fetch(partition, offset).await
    }
}

/// Fetches single messages of a topic by position. One fetch at a time per fetcher.
pub struct Fetcher {
    bus: Bus,
    topic: Arc<str>,
    consumer: tokio::sync::Mutex<Option<StreamConsumer>>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl Fetcher {
    pub(crate) fn new(bus: Bus, topic: &str) -> Self {
        Self { bus, topic: topic.into(), consumer: tokio::sync::Mutex::new(None) }
    }

    /// The message at `offset` of `partition`; `None` when it is no longer retained (or not
    /// written yet) after waiting at most 5 s.
    pub async fn fetch(&self, partition: i32, offset: i64) -> Result<Option<RawMessage>, BusError> {
        let mut found = self.fetch_many(&[(partition, offset)]).await?;
        Ok(found.remove(&(partition, offset)))
    }

    /// The messages at these positions, read together: each partition once, from the lowest
    /// offset wanted to the highest. Positions no longer retained (or not written yet) are
    /// missing from the answer; the whole fetch waits at most 5 s.
    pub async fn fetch_many(
        &self,
        positions: &[(i32, i64)],
    ) -> Result<HashMap<(i32, i64), RawMessage>, BusError> {
        let mut wanted: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
        for (p, o) in positions {
            wanted.entry(*p).or_default().insert(*o);
        }
        let mut found = HashMap::new();
        if wanted.is_empty() {
            return Ok(found);
        }
        let mut slot = self.consumer.lock().await;
        if slot.is_none() {
            let consumer: StreamConsumer = self
                .bus
                .client_config(&[
                    ("group.id", "lookout-fetcher"),
                    ("enable.auto.commit", "false"),
                    ("enable.auto.offset.store", "false"),
                    // An offset no longer retained is an error at once, not a jump elsewhere.
                    ("auto.offset.reset", "error"),
                    ("fetch.wait.max.ms", "10"),
                    // A few messages are wanted: do not prefetch megabytes. (Not with
                    // `queued.min.messages=1`: a queue over its threshold postpones the next
                    // fetch by `fetch.queue.backoff.ms`, a second by default, for every fetch.)
                    ("max.partition.fetch.bytes", "262144"),
                    ("queued.max.messages.kbytes", "1024"),
                    ("fetch.queue.backoff.ms", "10"),
                ])
                .create()
                .map_err(BusError::Config)?;
            *slot = Some(consumer);
        }
        let consumer = slot.as_ref().expect("just created");
        let mut tpl = TopicPartitionList::new();
        for (p, offsets) in &wanted {
            let first = *offsets.first().expect("not empty");
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(first))
                .map_err(kafka(&self.topic))?;
        }
        consumer.assign(&tpl).map_err(kafka(&self.topic))?;
        let deadline = tokio::time::Instant::now() + FETCH_TIMEOUT;
        while !wanted.is_empty() {
            let received = match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Err(_) => break,
                Ok(r) => r,
            };
            let m = match received {
                Ok(m) => m,
                Err(e) => {
                    // An offset out of range, a partition gone: what was not found is missing.
                    debug!(topic = %self.topic, error = %e, "cannot fetch");
                    break;
                }
            };
            let (p, o) = (rdkafka::Message::partition(&m), rdkafka::Message::offset(&m));
            let Some(offsets) = wanted.get_mut(&p) else { continue };
            if offsets.remove(&o) {
                found.insert((p, o), RawMessage::copy_from(&m, &self.topic));
            }
            // Offsets only grow within a partition: those below this one are not there.
            offsets.retain(|wanted| *wanted > o);
            if offsets.is_empty() {
                wanted.remove(&p);
            }
        }
        Ok(found)
    }
}

fn kafka(topic: &str) -> impl FnOnce(KafkaError) -> BusError + '_ {
    move |source| BusError::Kafka { topic: topic.to_owned(), source }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BusError> + Send + 'static,
) -> Result<T, BusError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BusError::Embedded(format!("metadata task failed: {e}")))?
}

/// Resolves `start` on each partition to an offset.
async fn positions(
    bus: &Bus,
    topic: &str,
    partitions: &[i32],
    start: Start,
    fetcher: &Fetcher,
) -> Result<Vec<PartitionStart>, BusError> {
    let (b, t, ps) = (bus.clone(), topic.to_owned(), partitions.to_vec());
    let (marks, by_time) = blocking(move || {
        let probe: BaseConsumer = b
            .client_config(&[("group.id", "lookout-reader"), ("enable.auto.commit", "false")])
            .create()
            .map_err(BusError::Config)?;
        let mut marks = Vec::with_capacity(ps.len());
        for p in &ps {
            let (low, high) =
                probe.fetch_watermarks(&t, *p, METADATA_TIMEOUT).map_err(kafka(&t))?;
            marks.push((*p, low, high));
        }
        let by_time = match start {
            Start::Time(ms) => {
                let mut tpl = TopicPartitionList::new();
                for p in &ps {
                    tpl.add_partition_offset(&t, *p, Offset::Offset(ms)).map_err(kafka(&t))?;
                }
                let found = probe.offsets_for_times(tpl, METADATA_TIMEOUT).map_err(kafka(&t))?;
                found
                    .elements()
                    .iter()
                    .map(|e| match e.offset() {
                        Offset::Offset(o) => (e.partition(), Some(o)),
                        _ => (e.partition(), None),
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        Ok((marks, by_time))
    })
    .await?;
    let mut out = Vec::with_capacity(marks.len());
    for (partition, low, high) in marks {
        let offset = match start {
            Start::Beginning => low,
            Start::End => high,
            Start::Offset(o) => o.clamp(low, high),
            Start::Last(n) => high.saturating_sub(i64::try_from(n).unwrap_or(i64::MAX)).max(low),
            Start::Time(ms) => {
                match by_time.iter().find(|(p, _)| *p == partition).and_then(|(_, o)| *o) {
                    Some(o) => o.clamp(low, high),
                    // "Nothing at or after that time", or a broker that cannot tell (the
                    // embedded broker answers this for every time): read the timestamps.
                    None => search_by_time(fetcher, partition, low, high, ms).await?,
                }
            }
        };
        out.push(PartitionStart { partition, offset, high });
    }
    Ok(out)
}

/// The first offset in `low..high` whose Kafka timestamp is at or after `ms`, by binary search
/// (a partition's timestamps are close to increasing); `high` when none is. A message that
/// cannot be read counts as late enough, so the search errs towards reading more.
async fn search_by_time(
    fetcher: &Fetcher,
    partition: i32,
    low: i64,
    high: i64,
    ms: i64,
) -> Result<i64, BusError> {
    if high <= low {
        return Ok(high);
    }
    let late_enough = async |offset: i64| -> Result<bool, BusError> {
        let m = fetcher.fetch(partition, offset).await?;
        Ok(m.and_then(|m| m.timestamp_ms).is_none_or(|t| t >= ms))
    };
    if !late_enough(high - 1).await? {
        return Ok(high);
    }
    let (mut lo, mut hi) = (low, high - 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if late_enough(mid).await? {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}
