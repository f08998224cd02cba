//! The batching task between the partition handlers and the sinks.
//!
//! Each partition handler sends its record with a oneshot and waits for the verdict. The task
//! gathers records into a batch, writes the batch to every sink (retrying, with a backoff, what
//! a sink did not take), then answers every record of the batch. A handler therefore returns,
//! and its offset is stored, only after every sink accepted its record; and while a sink is
//! slow or down the handlers wait, their partitions' queues fill, and the consumer stops
//! fetching: back-pressure, with memory bounded by the bus's per-partition queues.
//!
//! A partition has one record in flight (its handler waits for the verdict), so a batch holds at
//! most one record per partition. A batch is therefore written as soon as it holds a record of
//! every partition that had records in the last [`ACTIVE_WINDOW`] (waiting longer would only
//! delay), when no further record arrives for [`GATHER_IDLE`], when it holds `batch_size`
//! records, or when `batch_timeout` has passed since its first record.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use lookout_service::Readiness;
use lookout_telemetry::console_only;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    metrics as m,
    record::Entry,
    sink::{ItemResult, Sink},
};

/// How long the task waits for one more record before writing the batch it has.
pub const GATHER_IDLE: Duration = Duration::from_millis(2);
/// A partition with a record this recent is expected to send its next one with the batch.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(1);
/// First and largest pause before a sink is tried again.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The readiness check that is false while a sink does not take records.
pub const READINESS_CHECK: &str = "sinks";

/// A record and where its verdict goes.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) entry: Arc<Entry>,
    pub(crate) ack: oneshot::Sender<Verdict>,
}

/// What became of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every sink accepted it.
    Written,
    /// A sink refused it for good (the reasons of every refusing sink).
    Refused(String),
    /// Not written everywhere before shutdown; it will be delivered again.
    NotWritten(String),
}

/// Batches records and writes them to the sinks.
#[derive(Debug)]
pub(crate) struct Batcher {
    pub(crate) sinks: Vec<Sink>,
    pub(crate) batch_size: usize,
    pub(crate) batch_timeout: Duration,
    pub(crate) readiness: Readiness,
    pub(crate) shutdown: CancellationToken,
    /// When each (topic, partition) last handed in a record.
    pub(crate) active: HashMap<(String, i32), Instant>,
}

impl Batcher {
    /// Runs until every handler is gone (the channel is closed).
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs = Vec::with_capacity(self.batch_size);
        while let Some(first) = rx.recv().await {
            jobs.push(first);
            self.gather(&mut rx, &mut jobs).await;
            let entries: Vec<Arc<Entry>> = jobs.iter().map(|j| j.entry.clone()).collect();
            let verdicts = self.write(&entries).await;
            for (job, verdict) in jobs.drain(..).zip(verdicts) {
                let _ = job.ack.send(verdict);
            }
        }
    }

    async fn gather(&mut self, rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
        let started = Instant::now();
        let deadline = started + self.batch_timeout;
        self.active.retain(|_, seen| started.duration_since(*seen) < ACTIVE_WINDOW);
        for job in jobs.iter() {
            self.active.insert(partition_of(job), started);
        }
        while jobs.len() < self.batch_size {
            let present: HashSet<(String, i32)> = jobs.iter().map(partition_of).collect();
            if self.active.keys().all(|p| present.contains(p)) {
                break;
            }
            let until = deadline.min(Instant::now() + GATHER_IDLE);
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(job)) => {
                    self.active.insert(partition_of(&job), Instant::now());
                    jobs.push(job);
                }
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Writes a batch to every sink, retrying until each took every record (or refused some
    /// for good), or until shutdown.
    async fn write(&mut self, entries: &[Arc<Entry>]) -> Vec<Verdict> {
        metrics::histogram!(m::BATCH_RECORDS).record(entries.len() as f64);
        let mut verdicts = vec![Verdict::Written; entries.len()];
        for sink in &mut self.sinks {
            let kind = sink.kind();
            let mut pending: Vec<usize> = (0..entries.len()).collect();
            let mut backoff = BACKOFF_MIN;
            loop {
                let batch: Vec<&Entry> = pending.iter().map(|&i| &*entries[i]).collect();
                let failure = match sink.write(&batch).await {
                    Ok(results) => {
                        let mut again = Vec::new();
                        let mut last_reason = String::new();
                        for (&i, result) in pending.iter().zip(results) {
                            match result {
                                ItemResult::Written => {
                                    metrics::counter!(m::RECORDS_WRITTEN, "sink" => kind)
                                        .increment(1);
                                }
                                ItemResult::Refused(reason) => {
                                    metrics::counter!(m::RECORDS_REFUSED, "sink" => kind)
                                        .increment(1);
                                    refuse(&mut verdicts[i], sink.name(), &reason);
                                }
                                ItemResult::Retry(reason) => {
                                    again.push(i);
                                    last_reason = reason;
                                }
                            }
                        }
                        metrics::counter!(m::BATCHES, "sink" => kind).increment(1);
                        if again.is_empty() {
                            break;
                        }
                        pending = again;
                        format!("{} records not taken: {last_reason}", pending.len())
                    }
                    Err(e) => e.to_string(),
                };
                metrics::counter!(m::SINK_ERRORS, "sink" => kind).increment(1);
                self.readiness.set(READINESS_CHECK, false);
                warn!(
                    sink = sink.name(),
                    error = %failure,
                    records = pending.len(),
                    retry_in_ms = backoff.as_millis() as u64,
                    "sink did not take the batch; will retry",
                );
                if !pause(&self.shutdown, backoff).await {
                    let reason = format!("shutting down before {} took the record", sink.name());
                    return vec![Verdict::NotWritten(reason); entries.len()];
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        self.readiness.set(READINESS_CHECK, true);
        // Per-batch events stay on the console: shipped, each would be a record to ship.
        console_only(|| debug!(records = entries.len(), "batch written"));
        verdicts
    }
}

fn partition_of(job: &Job) -> (String, i32) {
    (job.entry.origin.topic.clone(), job.entry.origin.partition)
}

fn refuse(verdict: &mut Verdict, sink: &str, reason: &str) {
    let this = format!("{sink} refused the record: {reason}");
    *verdict = match std::mem::replace(verdict, Verdict::Written) {
        Verdict::Refused(earlier) => Verdict::Refused(format!("{earlier}; {this}")),
        _ => Verdict::Refused(this),
    };
}

/// Sleeps unless shut down first; false when shut down.
pub(crate) async fn pause(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}
