//! `lookout replay`: stored frames labelled again by a model, into a topic of their own.

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write as _},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lookout_bus::{Bus, embedded::EmbeddedBroker};
use lookout_predictor::{
    BackendKind, PredictorArgs,
    replay::{DEFAULT_REPLAY_PREFIX, ReplayProgress, ReplayRange, replay, replay_bus},
};
use lookout_proto::v1::Prediction;
use lookout_recorder::{
    detector::{Detector, DetectorConfig},
    observation,
    store::{StoredChange, StreamKey},
};
use lookout_service::CommonArgs;
use tokio_util::sync::CancellationToken;

use crate::changes::{parse_since, print_changes};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Example: label the last hour of the porch camera again with the detector, then compare
its changes with those the recorder stored from the live classifier:

  lookout replay --from 1h --camera porch --model models/ssdlite-mobilenet-v2-coco
  lookout changes --since 1h --camera porch --model efficientnet-lite0

The replayed predictions stay on replay.lookout.predictions (see --into) for
`lookout tap replay.lookout.predictions`; the live groups and their offsets are not touched.")]
pub(crate) struct ReplayArgs {
    /// Label frames stored at or after this time: RFC 3339 (`2026-11-22T18:00:00Z`) or a
    /// duration ago (`90s`, `30m`, `2h`).
    #[arg(long, value_parser = parse_since)]
    from: i64,

    /// Stop before frames stored at this time (same forms as --from). Default: the end of the
    /// frames topic when the replay starts.
    #[arg(long, value_parser = parse_since)]
    to: Option<i64>,

    /// Only this camera's frames.
    #[arg(long)]
    camera: Option<String>,

    /// The model: its manifest (`model.toml`) or the folder holding it.
    #[arg(long)]
    model: PathBuf,

    /// Prefix of the topic the predictions go to, before the bus's own prefix and
    /// `lookout.predictions`: by default `replay.lookout.predictions`.
    #[arg(long, default_value = DEFAULT_REPLAY_PREFIX)]
    into: String,

    /// Labelling threads (as the predictor's --workers).
    #[arg(long, default_value_t = 1)]
    workers: usize,

    /// The engine that runs the model (default: the manifest's backend, else tract).
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,

    /// Consecutive frames a new label must hold to count as a change in the summary (as the
    /// recorder's --min-frames).
    #[arg(long, default_value_t = 3)]
    min_frames: u32,

    #[command(flatten)]
    common: CommonArgs,
}

/// Creates the default replay topic on an embedded broker, which cannot create topics when
/// asked over the network: `lookout broker` and `lookout demo` call it.
pub(crate) fn create_replay_topic(broker: &EmbeddedBroker, prefix: &str) -> anyhow::Result<()> {
    let predictions = &lookout_proto::topics::PREDICTIONS;
    let name = format!("{prefix}{DEFAULT_REPLAY_PREFIX}{}", predictions.name());
    broker.create_topic(&name, predictions.partitions())?;
    Ok(())
}

pub(crate) async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    if args.into.is_empty() {
        bail!("--into must not be empty: replayed predictions would go to the live topic");
    }
    if args.to.is_some_and(|to| to <= args.from) {
        bail!("--to must be after --from");
    }
    let bus = Bus::new(args.common.bus_config("lookout-replay"))
        .context("cannot create the Kafka client")?;
    let out = replay_bus(&bus, &args.into)?;
    let mut predictor = PredictorArgs::for_model(&args.model);
    predictor.workers = args.workers.max(1);
    predictor.backend = args.backend.or(predictor.backend);
    let range = ReplayRange { from_ms: args.from, to_ms: args.to, camera: args.camera.clone() };

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.cancel();
        }
    });

    // A replay reads partitions at their own pace, so one camera's frames may arrive far out
    // of order: the window holds them all rather than skip a gap.
    let config = DetectorConfig {
        min_frames: args.min_frames.max(1),
        window_frames: usize::MAX,
        ..Default::default()
    };
    let mut summary = Summary { config, streams: BTreeMap::new(), changes: Vec::new() };
    let mut bar = Bar::new();
    let done = replay(
        predictor,
        &bus,
        &out,
        &range,
        |p, predictions| {
            summary.offer(predictions);
            bar.show(p);
        },
        shutdown.clone(),
    )
    .await?;
    bar.finish(&done);
    summary.finish();

    let topic = out.topic_name(lookout_proto::topics::PREDICTIONS.name());
    eprintln!(
        "replay: {} frames labelled, {} skipped, {} of other cameras passed over; predictions on {topic}",
        done.labelled, done.skipped, done.passed_over
    );
    if shutdown.is_cancelled() {
        eprintln!("replay: interrupted before the end of the range");
    }
    println!("Label changes in the replayed predictions (--min-frames {}):", config.min_frames);
    let mut stdout = std::io::stdout().lock();
    print_changes(&summary.changes, false, &mut stdout)?;
    Ok(())
}

/// The label changes the replayed predictions make, found as the recorder finds them.
#[derive(Debug)]
struct Summary {
    config: DetectorConfig,
    streams: BTreeMap<StreamKey, Detector>,
    changes: Vec<StoredChange>,
}

impl Summary {
    fn offer(&mut self, predictions: &[Prediction]) {
        for p in predictions {
            let Ok((key, obs)) = observation(p) else { continue };
            let config = self.config;
            let detector = self.streams.entry(key.clone()).or_insert_with(|| Detector::new(config));
            // Time stands still: a gap waits for its frame (it comes, replays read all).
            let outcome = detector.offer(obs, Duration::ZERO);
            self.keep(&key, outcome.changes);
        }
    }

    fn finish(&mut self) {
        let keys: Vec<StreamKey> = self.streams.keys().cloned().collect();
        for key in keys {
            let outcome = self.streams.get_mut(&key).expect("a key").tick(Duration::MAX);
            self.keep(&key, outcome.changes);
        }
        self.changes.sort_by_key(|c| (c.capture_time_ms, c.frame_sequence));
    }

    fn keep(&mut self, key: &StreamKey, changes: Vec<lookout_recorder::detector::Change>) {
        self.changes.extend(changes.into_iter().map(|c| StoredChange {
            change_id: 0,
            key: key.clone(),
            frame_sequence: c.sequence,
            previous: c.previous,
            current: c.current,
            capture_time_ms: c.capture_time_ms,
            recorded_time_ms: 0,
            snapshot_bytes: 0,
            snapshot_missing: false,
        }));
    }
}

/// Progress on standard error: a bar redrawn in place on a terminal, a line every few seconds
/// otherwise.
#[derive(Debug)]
struct Bar {
    terminal: bool,
    started: Instant,
    last: Option<Instant>,
}

impl Bar {
    fn new() -> Self {
        Self { terminal: std::io::stderr().is_terminal(), started: Instant::now(), last: None }
    }

    fn show(&mut self, p: &ReplayProgress) {
        let every = if self.terminal { Duration::from_millis(100) } else { Duration::from_secs(5) };
        if self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        self.draw(p, false);
    }

    fn finish(&mut self, p: &ReplayProgress) {
        self.draw(p, true);
    }

    fn draw(&self, p: &ReplayProgress, last: bool) {
        let line = line(p, self.started.elapsed());
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(err, "\r{line}\x1b[K{}", if last { "\n" } else { "" })
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
}

/// `[#########-----------]  450/1000 frames  45%  38.2 frames/s  ETA 14s`
fn line(p: &ReplayProgress, elapsed: Duration) -> String {
    const WIDTH: u64 = 24;
    let total = p.total.max(1);
    let filled = (p.read.min(total) * WIDTH / total) as usize;
    let rate = p.read as f64 / elapsed.as_secs_f64().max(1e-3);
    let eta = if rate > 0.0 && p.read < p.total {
        format!("  ETA {:.0}s", (p.total - p.read) as f64 / rate)
    } else {
        String::new()
    };
    format!(
        "[{}{}] {}/{} frames {:>3}%  {rate:.1} frames/s{eta}",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled),
        p.read,
        p.total,
        p.read * 100 / total,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_shows_the_share_read_and_what_is_left() {
        let p = ReplayProgress { total: 1000, read: 250, ..Default::default() };
        let l = line(&p, Duration::from_secs(10));
        assert!(l.starts_with("[######------------------] 250/1000 frames  25%"), "{l}");
        assert!(l.contains("25.0 frames/s"), "{l}");
        assert!(l.ends_with("ETA 30s"), "{l}");
        let end = line(&ReplayProgress { total: 4, read: 4, ..Default::default() }, Duration::ZERO);
        assert!(end.starts_with("[########################] 4/4 frames 100%"), "{end}");
        assert!(!end.contains("ETA"), "{end}");
    }
}
