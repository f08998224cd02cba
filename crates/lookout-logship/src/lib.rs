//! `lookout-logship`: delivers every service's log records from the logs topic to where
//! operators read logs.
//!
//! Every Lookout service publishes its events as `LogRecord`s on `lookout.logs` (see
//! `lookout-telemetry`). The shipper consumes that topic in its own consumer group (`logship`
//! by default), at least once, and writes each record to every configured sink:
//!
//! - [`sink::stdout`](mod@sink::stdout): a line per record, for people or as JSON;
//! - [`sink::file`](mod@sink::file): JSON lines in daily files rotated by size, closed files gzip-compressed,
//!   old ones deleted;
//! - [`sink::elasticsearch`]: the `_bulk` API of Elasticsearch or OpenSearch, daily indices,
//!   Elastic Common Schema documents; items the server refuses go to the dead-letter topic.
//!
//! How records flow ([`run`]): the bus hands each partition's handler a batch of records
//! (`--batch-size`, `--batch-timeout`); the handler passes it to the writing task ([`batch`])
//! and waits for the verdicts; the records are written to every sink, retried while a sink
//! fails; only then do the handlers return and their offsets get stored. A slow or failing
//! sink thus pauses consumption instead of losing records or growing memory.
//!
//! Modules: [`record`] (renderings of a record), [`sink`], [`batch`], [`metrics`], and the
//! dead-letter copy of refused records.

pub mod batch;
mod dlq;
mod error;
pub mod metrics;
pub mod record;
mod service;
pub mod sink;

use std::{path::PathBuf, sync::Arc, time::Duration};

use lookout_bus::{Bus, HandlerError, Incoming, Rejected, topics};
use lookout_proto::v1::LogRecord;
use lookout_service::{Readiness, parse_bytes, parse_duration};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use error::{LogshipError, SinkError};
pub use service::{Args, main};
pub use sink::{SinkSpec, stdout::StdoutFormat};

use crate::{
    batch::{Batcher, Job, Verdict},
    dlq::DeadLetters,
    record::{Entry, Origin},
    sink::{
        Sink,
        elasticsearch::{ElasticConfig, ElasticSink, Flavour},
        file::{FileSink, FileSinkConfig},
        stdout::StdoutSink,
    },
};

/// The shipper's options. Each is also an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct LogshipArgs {
    /// Where records go (repeatable; in the environment, comma-separated): stdout, file:DIR,
    /// elasticsearch:URL or opensearch:URL. `user:password@` in a URL is sent as basic auth.
    #[arg(
        long = "sink",
        env = "LOOKOUT_LOGSHIP_SINKS",
        value_delimiter = ',',
        default_value = "stdout",
        value_name = "SINK"
    )]
    pub sinks: Vec<SinkSpec>,

    /// Consumer group. Another group gets every record again (e.g. a second shipper elsewhere).
    #[arg(long, env = "LOOKOUT_LOGSHIP_GROUP", default_value = "logship")]
    pub group: String,

    /// How the stdout sink prints records.
    #[arg(long, env = "LOOKOUT_LOGSHIP_STDOUT_FORMAT", value_enum, default_value_t = StdoutFormat::Human)]
    pub stdout_format: StdoutFormat,

    /// Size at which a file sink closes its file, compresses it and starts the next one
    /// (suffixes k, M, G: powers of 1024).
    #[arg(long, env = "LOOKOUT_LOGSHIP_MAX_FILE_BYTES", default_value = "100M", value_parser = parse_bytes, value_name = "BYTES")]
    pub max_file_bytes: u64,

    /// How many closed (compressed) files a file sink keeps; the oldest go first. No limit
    /// when unset.
    #[arg(long, env = "LOOKOUT_LOGSHIP_RETAIN_FILES", value_name = "N")]
    pub retain_files: Option<usize>,

    /// How many days of closed files a file sink keeps, by the date in their names; 0 keeps
    /// them whatever their age.
    #[arg(long, env = "LOOKOUT_LOGSHIP_RETAIN_DAYS", default_value = "14", value_name = "DAYS")]
    pub retain_days: u32,

    /// Most records in one batch.
    #[arg(long, env = "LOOKOUT_LOGSHIP_BATCH_SIZE", default_value = "500", value_name = "N")]
    pub batch_size: usize,

    /// Longest a record waits for its batch to fill.
    #[arg(long, env = "LOOKOUT_LOGSHIP_BATCH_TIMEOUT", default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub batch_timeout: Duration,

    /// Index name before the record's UTC date, for Elasticsearch and OpenSearch
    /// (lookout-logs-2026.05.01).
    #[arg(long, env = "LOOKOUT_LOGSHIP_ES_INDEX_PREFIX", default_value = "lookout-logs-")]
    pub es_index_prefix: String,

    /// Elasticsearch API key, sent as `Authorization: ApiKey KEY`.
    #[arg(long, env = "LOOKOUT_LOGSHIP_ES_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub es_api_key: Option<String>,

    /// A PEM CA certificate to trust for https Elasticsearch/OpenSearch, besides the system's.
    #[arg(long, env = "LOOKOUT_LOGSHIP_ES_CA_CERT", value_name = "PEM")]
    pub es_ca_cert: Option<PathBuf>,

    /// Timeout of one bulk request.
    #[arg(long, env = "LOOKOUT_LOGSHIP_ES_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub es_timeout: Duration,
}

/// Opens every sink of `args`: creates file sink directories, builds HTTP clients.
pub async fn open_sinks(args: &LogshipArgs) -> Result<Vec<Sink>, LogshipError> {
    let mut sinks = Vec::with_capacity(args.sinks.len());
    for spec in &args.sinks {
        let sink = match spec {
            SinkSpec::Stdout => Sink::Stdout(StdoutSink::new(args.stdout_format)),
            SinkSpec::File(dir) => {
                let config = FileSinkConfig {
                    dir: dir.clone(),
                    max_file_bytes: args.max_file_bytes,
                    retain_files: args.retain_files,
                    retain_days: (args.retain_days > 0).then_some(args.retain_days),
                };
                let sink = FileSink::open(config)
                    .await
                    .map_err(|source| LogshipError::Open { sink: spec.to_string(), source })?;
                Sink::File(sink)
            }
            SinkSpec::Elasticsearch(url) | SinkSpec::OpenSearch(url) => {
                let flavour = match spec {
                    SinkSpec::OpenSearch(_) => Flavour::OpenSearch,
                    _ => Flavour::Elasticsearch,
                };
                Sink::Elastic(ElasticSink::new(ElasticConfig {
                    url: url.clone(),
                    flavour,
                    index_prefix: args.es_index_prefix.clone(),
                    api_key: args.es_api_key.clone(),
                    ca_cert: args.es_ca_cert.clone(),
                    timeout: args.es_timeout,
                })?)
            }
        };
        sinks.push(sink);
    }
    Ok(sinks)
}

/// Ships records until `shutdown`: consumes the logs topic in group `args.group` and writes
/// every record to every sink. Sets the `sinks` readiness check (false while a sink fails).
pub async fn run(
    args: LogshipArgs,
    bus: Bus,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), LogshipError> {
    let sinks = open_sinks(&args).await?;
    let names: Vec<String> = sinks.iter().map(|s| s.name().to_owned()).collect();
    let batch_size = args.batch_size.max(1);
    let (jobs, rx) = mpsc::channel(batch_size);
    let batcher =
        Batcher { sinks, batch_size, readiness: readiness.clone(), shutdown: shutdown.clone() };
    let batcher = tokio::spawn(batcher.run(rx));
    readiness.set(batch::READINESS_CHECK, true);

    let shared = Arc::new(Shared {
        jobs,
        dead_letters: DeadLetters::new(&bus, &args.group),
        shutdown: shutdown.clone(),
    });
    info!(sinks = ?names, group = %args.group, batch_size, "shipping logs");
    let handler = move |batch: Vec<Incoming<LogRecord>>| {
        let shared = shared.clone();
        async move { shared.handle(batch).await }
    };
    let consumed = bus
        .subscriber(&topics::LOGS, &args.group)
        .run_batched(batch_size, args.batch_timeout, handler, shutdown)
        .await;
    // The handler, and with it the batcher's last sender, is gone: the batcher finishes.
    batcher.await.map_err(|e| LogshipError::Batcher(e.to_string()))?;
    consumed?;
    Ok(())
}

/// What each partition handler uses.
#[derive(Debug)]
struct Shared {
    jobs: mpsc::Sender<Job>,
    dead_letters: DeadLetters,
    shutdown: CancellationToken,
}

impl Shared {
    /// Hands a partition's batch to the writing task and returns once every sink has each
    /// record (`Ok`: the offsets are stored) or dead-lettered it (`Ok` too), or when they were
    /// not written before shutdown (`Transient`: the offsets are not stored and the records
    /// come again).
    async fn handle(&self, batch: Vec<Incoming<LogRecord>>) -> Result<Rejected, HandlerError> {
        let (entries, metas): (Vec<Arc<Entry>>, Vec<_>) = batch
            .into_iter()
            .map(|Incoming { message, meta }| {
                let origin = Origin {
                    topic: meta.topic.to_string(),
                    partition: meta.partition,
                    offset: meta.offset,
                    timestamp_ms: meta.timestamp_ms,
                };
                (Arc::new(Entry { record: message, origin }), meta)
            })
            .unzip();
        let stopped = || HandlerError::transient("the writing task stopped");
        let (ack, verdicts) = oneshot::channel();
        self.jobs.send(Job { entries: entries.clone(), ack }).await.map_err(|_| stopped())?;
        let verdicts = verdicts.await.map_err(|_| stopped())?;
        for ((verdict, entry), meta) in verdicts.into_iter().zip(&entries).zip(metas) {
            match verdict {
                Verdict::Written => {}
                Verdict::NotWritten(reason) => return Err(HandlerError::Transient(reason)),
                Verdict::Refused(reason) => {
                    if !self.dead_letters.send(&entry.record, meta, &reason, &self.shutdown).await?
                    {
                        return Err(HandlerError::transient(
                            "shut down before the dead letter was delivered",
                        ));
                    }
                }
            }
        }
        Ok(Rejected::none())
    }
}
