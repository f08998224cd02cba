//! `lookout-recorder`: decides when a camera's label really changed and stores that moment
//! (the frame, the old and new label, the scores, the model) in Postgres or SQLite, losing
//! nothing and duplicating nothing whatever is killed when.
//!
//! - [`detector`]: change detection per camera and model, pure and deterministic: a bounded
//!   reorder window restores frame order, then a label must hold `--min-frames` frames with
//!   score ≥ `--min-score` to be a change. A detector's label is the set of classes present
//!   (`lookout_proto::objects`), so its changes are object events: a class appeared or left.
//! - [`store`]: sqlx storage, Postgres or SQLite, migrations embedded; the detector's state is
//!   stored in the same transaction as the changes it decides.
//! - [`snapshots`]: the frames topic, read without a consumer group into a bounded buffer, and
//!   the whole rule for each change's JPEG (when it is waited for, when a change is stored
//!   without one).
//! - [`Recorder`]: the consumer of `lookout.predictions` (group `recorder`), in batches of up
//!   to 500 predictions of one partition. A batch's handler returns (and so its Kafka offsets
//!   are stored) only after the one transaction holding its effect committed: the decided
//!   frames and the predictions parked in the stored reorder window, of every stream in the
//!   batch. A restart reloads the detector state and window from the database, so a
//!   re-delivered prediction is recognised and nothing is decided twice or lost. Committed
//!   changes are then published on `lookout.changes` from the database (an outbox).
//! - Bad data is refused, not retried: text that cannot be stored (over 256 bytes, control
//!   characters) is dead-lettered where it enters, and so is a prediction the database refuses
//!   for its data (SQLSTATE classes 22, 23, 54); only connection-type errors are retried.
//! - [`health`]: the `database` readiness check; while the database is unusable the handler
//!   returns `Transient`, so consumption pauses with no offset moving, and resumes when it is
//!   back. A configuration error (bad password, unknown database, read-only file) stops the
//!   service with a clear message instead of retrying for ever.
//! - [`metrics`]: metric names.

pub mod detector;
pub mod health;
pub mod metrics;
mod recorder;
pub mod snapshots;
pub mod store;

use std::time::Duration;

use lookout_bus::{Bus, BusError};
use lookout_service::Readiness;
use tokio_util::sync::CancellationToken;

pub use detector::{Detector, DetectorConfig};
pub use recorder::{
    MAX_TEXT_BYTES, Memory, Recorder, RecorderConfig, StatsSnapshot, THUMBNAIL_WIDTH, change_event,
    observation, thumbnail,
};
pub use store::{Access, Store, StoreError};

/// The recorder's command line: its own options and those every service takes.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "lookout-recorder", version)]
pub struct Args {
    /// Recorder options.
    #[command(flatten)]
    pub recorder: RecorderArgs,
    /// Options every service takes.
    #[command(flatten)]
    pub common: lookout_service::CommonArgs,
}

/// Runs the recorder service: telemetry, signals, admin server (`/readyz` includes the
/// `database` check), then [`run`].
pub async fn main(args: Args) -> std::process::ExitCode {
    lookout_service::main("lookout-recorder", args.common.clone(), |svc| async move {
        let bus = svc.bus()?;
        svc.watch_kafka(&bus);
        run(args.recorder, bus, svc.readiness.clone(), svc.shutdown.clone()).await?;
        Ok(())
    })
    .await
}

/// Errors that stop the recorder.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// The database failed in a way retrying does not fix.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A background task failed.
    #[error("recorder task failed: {0}")]
    Task(String),
}

/// The recorder's own options. Each is also an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct RecorderArgs {
    /// Database URL: `postgres://user:password@host/db` or `sqlite://path` (created if
    /// missing).
    #[arg(long, env = "LOOKOUT_DATABASE_URL", default_value = store::DEFAULT_DATABASE_URL, value_parser = parse_database_url)]
    pub database_url: String,

    /// Consecutive frames a new top-1 label must hold to be a change.
    #[arg(long, env = "LOOKOUT_MIN_FRAMES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub min_frames: u32,

    /// Lowest top-1 score that counts towards a change, 0 to 1. Classifiers spread probability
    /// over similar classes, so a clear picture may score only 0.3 on its best label.
    #[arg(long, env = "LOOKOUT_MIN_SCORE", default_value_t = 0.25, value_parser = parse_score)]
    pub min_score: f32,

    /// Out-of-order predictions held per camera before a missing one is given up on.
    #[arg(long, env = "LOOKOUT_REORDER_FRAMES", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub reorder_frames: u32,

    /// How long a missing prediction is waited for before it is given up on (e.g. 3s, 500ms).
    #[arg(long, env = "LOOKOUT_REORDER_TIMEOUT", default_value = "3s", value_parser = lookout_service::parse_duration)]
    pub reorder_timeout: Duration,

    /// Frames kept per camera for snapshots (beyond them, and beyond --snapshot-memory, only
    /// their positions, to fetch one again when a change needs it).
    #[arg(long, env = "LOOKOUT_SNAPSHOT_BUFFER", default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    pub snapshot_buffer: u32,

    /// Memory for buffered frames over all cameras (suffixes k, M, G: powers of 1024).
    #[arg(long, env = "LOOKOUT_SNAPSHOT_MEMORY", default_value = "256M", value_parser = lookout_service::parse_bytes, value_name = "BYTES")]
    pub snapshot_memory: u64,

    /// How long a change waits for a frame the frames reader has not read yet but may still
    /// bring (it is stored without a snapshot after that); also how long a camera whose frame
    /// positions are full waits for its predictions before its oldest are dropped.
    #[arg(long, env = "LOOKOUT_SNAPSHOT_WAIT", default_value = "3s", value_parser = lookout_service::parse_duration)]
    pub snapshot_wait: Duration,

    /// A camera with no frame and no prediction for this long is dropped from memory (its
    /// detector state stays in the database).
    #[arg(long, env = "LOOKOUT_RECORDER_IDLE", default_value = "10m", value_parser = lookout_service::parse_duration)]
    pub idle: Duration,

    /// Delete changes captured more than this many days ago; 0 keeps them forever.
    #[arg(long, env = "LOOKOUT_RETAIN_DAYS", default_value_t = 30)]
    pub retain_days: u32,

    /// Consumer group on the predictions topic.
    #[arg(long, env = "LOOKOUT_RECORDER_GROUP", default_value = "recorder")]
    pub group: String,
}

impl RecorderArgs {
    /// The recorder configuration these options describe.
    pub fn config(&self) -> RecorderConfig {
        RecorderConfig {
            detector: DetectorConfig {
                min_frames: self.min_frames,
                min_score: self.min_score,
                window_frames: self.reorder_frames as usize,
                window_timeout: self.reorder_timeout,
            },
            snapshot_buffer: self.snapshot_buffer as usize,
            snapshot_memory: usize::try_from(self.snapshot_memory).unwrap_or(usize::MAX),
            snapshot_wait: self.snapshot_wait,
            idle: self.idle,
            retain: (self.retain_days > 0)
                .then(|| Duration::from_secs(u64::from(self.retain_days) * 86_400)),
            group: self.group.clone(),
        }
    }
}

fn parse_database_url(s: &str) -> Result<String, String> {
    let ok = ["postgres://", "postgresql://", "sqlite:"].iter().any(|p| s.starts_with(p));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("{}: use postgres://… or sqlite://…", store::redact(s)))
    }
}

fn parse_score(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a score between 0 and 1")),
    }
}

/// Opens the database (applying migrations) and records until `shutdown`.
pub async fn run(
    args: RecorderArgs,
    bus: Bus,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), RecorderError> {
    let store = open_store(&args.database_url, &shutdown).await?;
    let Some(store) = store else { return Ok(()) };
    let recorder = Recorder::new(args.config(), bus, store.clone(), readiness);
    let result = recorder.run(shutdown).await;
    store.close().await;
    result
}

/// Opens the database, retrying while it is unreachable (a recorder may start before its
/// database); a configuration error (bad password, unknown database, read-only file) is
/// returned at once. `None` when shut down first.
async fn open_store(
    url: &str,
    shutdown: &CancellationToken,
) -> Result<Option<Store>, RecorderError> {
    let mut backoff = lookout_bus::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match Store::open(url, Access::ReadWrite).await {
            Ok(s) => return Ok(Some(s)),
            Err(e) if e.kind() == store::ErrorKind::Transient => {
                tracing::warn!(error = %e, "database not usable yet; retrying");
            }
            Err(e) => return Err(e.into()),
        }
        if !backoff.wait(shutdown).await {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        recorder: RecorderArgs,
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        Args::command().debug_assert();
    }

    #[test]
    fn options_parse_and_validate() {
        use clap::{CommandFactory as _, Parser as _};
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.recorder.database_url, store::DEFAULT_DATABASE_URL);
        let c = cli.recorder.config();
        assert_eq!(c.detector.min_frames, 3);
        assert_eq!(c.retain, Some(Duration::from_secs(30 * 86_400)));
        let cli =
            Cli::try_parse_from(["x", "--retain-days", "0", "--reorder-timeout", "250ms"]).unwrap();
        assert_eq!(cli.recorder.config().retain, None);
        assert_eq!(cli.recorder.config().detector.window_timeout, Duration::from_millis(250));
        assert!(Cli::try_parse_from(["x", "--min-score", "1.5"]).is_err());
        assert!(Cli::try_parse_from(["x", "--min-frames", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--database-url", "mysql://db"]).is_err());
    }
}
