//! The writing task between the partition handlers and the sinks.
//!
//! The bus hands each partition's handler a batch of up to `--batch-size` records (waiting at
//! most `--batch-timeout` for it to fill). The handler sends its batch here with a oneshot and
//! waits for the verdicts. The task takes every batch that is waiting (up to `batch_size`
//! records in all), writes them to every sink (retrying, with a backoff, what a sink did not
//! take), then answers each batch. A handler therefore returns, and its offsets are stored,
//! only after every sink accepted its records; while a sink is slow or down the handlers wait,
//! their partitions' queues fill, and the consumer stops fetching: back-pressure, with memory
//! bounded by the bus's per-partition queues.

use std::{sync::Arc, time::Duration};

use lookout_bus::Backoff;
use lookout_service::Readiness;
use lookout_telemetry::console_only;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    metrics as m,
    record::Entry,
    sink::{ItemResult, Sink},
};

/// First and largest pause before a sink is tried again.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The readiness check that is false while a sink does not take records.
pub const READINESS_CHECK: &str = "sinks";

/// A partition's batch of records and where their verdicts go (one per record, in order).
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) entries: Vec<Arc<Entry>>,
    pub(crate) ack: oneshot::Sender<Vec<Verdict>>,
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

/// Writes the batches of the partition handlers to the sinks.
#[derive(Debug)]
pub(crate) struct Batcher {
    pub(crate) sinks: Vec<Sink>,
    pub(crate) batch_size: usize,
    pub(crate) readiness: Readiness,
    pub(crate) shutdown: CancellationToken,
}

impl Batcher {
    /// Runs until every handler is gone (the channel is closed).
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut records = first.entries.len();
            jobs.push(first);
            // Whatever other partitions have ready goes into the same write.
            while records < self.batch_size {
                let Ok(job) = rx.try_recv() else { break };
                records += job.entries.len();
                jobs.push(job);
            }
            let entries: Vec<Arc<Entry>> =
                jobs.iter().flat_map(|j| j.entries.iter().cloned()).collect();
            let mut verdicts = self.write(&entries).await.into_iter();
            for job in jobs.drain(..) {
                let mine: Vec<Verdict> = verdicts.by_ref().take(job.entries.len()).collect();
                let _ = job.ack.send(mine);
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
            let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
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
                    attempt = backoff.attempts() + 1,
                    "sink did not take the batch; will retry",
                );
                if !backoff.wait(&self.shutdown).await {
                    let reason = format!("shutting down before {} took the record", sink.name());
                    return vec![Verdict::NotWritten(reason); entries.len()];
                }
            }
        }
        self.readiness.set(READINESS_CHECK, true);
        // Per-batch events stay on the console: shipped, each would be a record to ship.
        console_only(|| debug!(records = entries.len(), "batch written"));
        verdicts
    }
}

fn refuse(verdict: &mut Verdict, sink: &str, reason: &str) {
    let this = format!("{sink} refused the record: {reason}");
    *verdict = match std::mem::replace(verdict, Verdict::Written) {
        Verdict::Refused(earlier) => Verdict::Refused(format!("{earlier}; {this}")),
        _ => Verdict::Refused(this),
    };
}
