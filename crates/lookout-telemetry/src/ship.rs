//! The shipping thread: takes records from the layer's bounded queue and publishes them on the
//! logs topic.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt as _, stream::FuturesUnordered};
use lookout_bus::{Bus, Publisher, TraceContext, topics};
use lookout_proto::v1::LogRecord;
use tokio::{
    sync::{mpsc, oneshot},
    time::MissedTickBehavior,
};
use tracing::{Subscriber, level_filters::LevelFilter, warn};
use tracing_subscriber::{Layer as _, filter::Filtered, registry::LookupSpan};

use crate::{
    TelemetryError,
    layer::{LogLayer, ShipFilter, count_drop, suppress_this_thread},
    metrics as m,
};

/// Records the layer may queue for the shipping thread before it drops new ones.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;
/// Records handed to the producer and not yet acknowledged, at most.
const MAX_IN_FLIGHT: usize = 1024;
/// How long the shipping thread waits for room in a full producer queue before dropping.
const PRODUCER_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the number of dropped records is reported on the console.
const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// What the layer sends to the shipping thread.
pub(crate) enum Item {
    Record(Box<LogRecord>),
    /// Answered once every record queued before it was acknowledged or dropped.
    Flush(oneshot::Sender<()>),
}

/// How a service ships its logs.
#[derive(Debug, Clone)]
pub struct ShipConfig {
    bus: Bus,
    level: LevelFilter,
    queue_capacity: usize,
}

impl ShipConfig {
    /// Ships through `bus` (whose service and instance names go into every record) at level
    /// `INFO` and above, with a queue of [`DEFAULT_QUEUE_CAPACITY`] records.
    pub fn new(bus: Bus) -> Self {
        Self { bus, level: LevelFilter::INFO, queue_capacity: DEFAULT_QUEUE_CAPACITY }
    }

    /// The lowest level shipped; independent of `RUST_LOG`, which filters the console.
    pub fn level(mut self, level: LevelFilter) -> Self {
        self.level = level;
        self
    }

    /// How many records may wait for the shipping thread.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }
}

/// A handle on the shipping thread.
#[derive(Clone)]
pub struct LogShipper {
    tx: mpsc::Sender<Item>,
    dropped: Arc<AtomicU64>,
}

impl fmt::Debug for LogShipper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogShipper").field("dropped", &self.dropped()).finish_non_exhaustive()
    }
}

impl LogShipper {
    /// Records not shipped so far (queue full, producer refusal, delivery failure).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every record queued so far was acknowledged by the brokers or dropped, at
    /// most `timeout`. True when that happened in time.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (ack, done) = oneshot::channel();
        let flushed = async { self.tx.send(Item::Flush(ack)).await.is_ok() && done.await.is_ok() };
        tokio::time::timeout(timeout, flushed).await.unwrap_or(false)
    }
}

/// The log layer (with its filter) for subscriber `S`, and its shipping thread, started here.
///
/// The thread runs its own single-threaded runtime, so a busy or blocked service runtime does
/// not hold up its logs, and every event emitted on it (the bus client's, this crate's) is
/// kept off the logs topic.
pub fn log_layer<S>(
    config: ShipConfig,
) -> Result<(Filtered<LogLayer, ShipFilter, S>, LogShipper), TelemetryError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let (tx, rx) = mpsc::channel(config.queue_capacity);
    let dropped = Arc::new(AtomicU64::new(0));
    let bus_config = config.bus.config();
    let layer = LogLayer::new(
        tx.clone(),
        bus_config.service.clone(),
        bus_config.instance.clone(),
        dropped.clone(),
    );
    let publisher = config.bus.publisher(&topics::LOGS).with_queue_timeout(PRODUCER_QUEUE_TIMEOUT);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(TelemetryError::Ship)?;
    let counter = dropped.clone();
    std::thread::Builder::new()
        .name("lookout-log-ship".into())
        .spawn(move || {
            suppress_this_thread();
            runtime.block_on(ship(rx, publisher, counter));
        })
        .map_err(TelemetryError::Ship)?;
    Ok((layer.with_filter(ShipFilter::new(config.level)), LogShipper { tx, dropped }))
}

/// Publishes queued records in order until every sender is gone.
async fn ship(
    mut rx: mpsc::Receiver<Item>,
    publisher: Publisher<LogRecord>,
    dropped: Arc<AtomicU64>,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut report = tokio::time::interval(DROP_REPORT_INTERVAL);
    report.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reported = 0;
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            biased;
            Some(result) = in_flight.next(), if !in_flight.is_empty() => {
                settle(result, &dropped, &mut last_error);
            }
            item = rx.recv(), if in_flight.len() < MAX_IN_FLIGHT => match item {
                None => break,
                Some(Item::Record(record)) => {
                    let parent = trace_of(&record);
                    match publisher.enqueue(&record, parent.as_ref()).await {
                        Ok(pending) => in_flight.push(pending.wait()),
                        Err(e) => {
                            count_drop(&dropped, "publish");
                            last_error = Some(e.to_string());
                        }
                    }
                }
                Some(Item::Flush(ack)) => {
                    while let Some(result) = in_flight.next().await {
                        settle(result, &dropped, &mut last_error);
                    }
                    let _ = ack.send(());
                }
            },
            _ = report.tick() => {
                let total = dropped.load(Ordering::Relaxed);
                if total > reported {
                    // On this thread, so on the console only.
                    warn!(
                        dropped = total - reported,
                        total,
                        last_error = last_error.as_deref().unwrap_or("queue full"),
                        "log records were not shipped",
                    );
                    reported = total;
                }
            }
        }
    }
}

fn settle(
    result: Result<lookout_bus::Delivered, lookout_bus::BusError>,
    dropped: &AtomicU64,
    last_error: &mut Option<String>,
) {
    match result {
        Ok(_) => metrics::counter!(m::LOG_RECORDS_SHIPPED).increment(1),
        Err(e) => {
            count_drop(dropped, "delivery");
            *last_error = Some(e.to_string());
        }
    }
}

/// A record about a traced frame is published in that frame's trace.
fn trace_of(record: &LogRecord) -> Option<TraceContext> {
    if record.trace_id.len() != 32 {
        return None;
    }
    let trace_id = u128::from_str_radix(&record.trace_id, 16).ok().filter(|t| *t != 0)?;
    Some(TraceContext { trace_id, ..TraceContext::new_root() })
}
