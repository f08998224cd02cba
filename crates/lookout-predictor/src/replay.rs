//! Replay: stored frames labelled again, by any model, into predictions topics of their own.
//!
//! [`replay`] reads `lookout.frames` by position from a time (Kafka timestamps) to another
//! time, or to the end the topic had when the replay started, without a consumer group: the
//! live predictors' groups and offsets are not touched. Each frame in the range (of one camera,
//! or of all) is labelled as the live predictor labels it — the same decoding limits, the same
//! model code — except that no frame is too old, and the prediction is published on the
//! predictions topic of another topic prefix (`replay.lookout.predictions` by default), so
//! the live viewer and recorder never see it. A replay stops by itself at the end of its range.

use std::{collections::HashMap, sync::Arc, time::Duration};

use lookout_bus::{Bus, BusConfig, Incoming, Start, admin, topics};
use lookout_proto::v1::{Frame, Prediction};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{PredictorArgs, PredictorError, labeller::Labeller, model::Model, workers::Workers};

/// Which stored frames a replay labels.
#[derive(Debug, Clone, Default)]
pub struct ReplayRange {
    /// The first frames: those stored at or after this time (Unix ms, the Kafka timestamp).
    pub from_ms: i64,
    /// Frames stored before this time (Unix ms); `None`: up to the end of the topic as it was
    /// when the replay started.
    pub to_ms: Option<i64>,
    /// Only this camera's frames.
    pub camera: Option<String>,
}

/// Where a replay stands; passed to the progress callback after each batch of frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayProgress {
    /// Messages of the frames topic in the range, all cameras.
    pub total: u64,
    /// Messages of the range read so far.
    pub read: u64,
    /// Frames labelled (predictions with labels published).
    pub labelled: u64,
    /// Frames of the camera asked for that could not be labelled (a prediction with the
    /// reason is published all the same).
    pub skipped: u64,
    /// Messages of other cameras, or not frames at all, passed over.
    pub passed_over: u64,
}

/// The prefix replayed predictions go under by default: `replay.lookout.predictions`.
pub const DEFAULT_REPLAY_PREFIX: &str = "replay.";

/// How many frames are labelled at once: enough to keep every worker busy.
const CHUNK: usize = 16;

/// The bus replayed predictions are published on: `bus`'s, with `into` added to its prefix.
pub fn replay_bus(bus: &Bus, into: &str) -> Result<Bus, PredictorError> {
    let config: BusConfig = bus.config().clone();
    let prefix = format!("{}{into}", config.topic_prefix);
    Ok(Bus::new(config.with_topic_prefix(prefix))?)
}

/// Labels the frames of `range` with the model of `args` and publishes the predictions on
/// `out`'s predictions topic (created when missing). Returns the final counts; `progress`
/// sees them as they grow, with the predictions just published. Stops early, with what was done, when `shutdown` is cancelled.
pub async fn replay(
    args: PredictorArgs,
    bus: &Bus,
    out: &Bus,
    range: &ReplayRange,
    mut progress: impl FnMut(&ReplayProgress, &[Prediction]),
    shutdown: CancellationToken,
) -> Result<ReplayProgress, PredictorError> {
    let path = args.model.clone();
    let options = args.engine_options();
    let model = tokio::task::spawn_blocking(move || Model::load_with(&path, &options))
        .await
        .map_err(|e| crate::ModelError::Options(format!("loading the model failed: {e}")))??;
    let name = bus.topic_name(topics::FRAMES.name());
    let output = out.topic_name(topics::PREDICTIONS.name());
    info!(model = %model.manifest().name, frames = %name, into = %output, from_ms = range.from_ms, to_ms = range.to_ms, camera = range.camera.as_deref(), "replay starts");
    ensure_output(out).await?;

    let mut done = ReplayProgress::default();
    let Some(reader) = bus.reader(&name).start(Start::Time(range.from_ms)).open(&shutdown).await?
    else {
        return Ok(done);
    };
    // Where each partition's range ends: the first offset at or after `to`, else the end the
    // partition had when the reader opened.
    let mut ends: HashMap<i32, i64> =
        reader.starts().iter().map(|s| (s.partition, s.high)).collect();
    if let Some(to) = range.to_ms
        && let Some(after) = bus.reader(&name).start(Start::Time(to)).open(&shutdown).await?
    {
        for s in after.starts() {
            ends.insert(s.partition, s.offset.min(s.high));
        }
    }
    // Partitions still being read, with the next offset each must reach.
    let mut open: HashMap<i32, i64> = HashMap::new();
    for s in reader.starts() {
        let end = ends[&s.partition];
        if s.offset < end {
            done.total += (end - s.offset) as u64;
            open.insert(s.partition, end);
        }
    }
    progress(&done, &[]);

    let labeller = Labeller {
        model: Arc::new(model),
        workers: Workers::start(args.workers).map_err(PredictorError::Workers)?,
        predictions: out.publisher(&topics::PREDICTIONS),
        instance: format!("replay@{}", bus.config().instance),
        top_k: args.top_k.max(1),
        max_age: None,
        limits: args.frame_limits(),
        shutdown: shutdown.clone(),
    };
    let mut chunk: Vec<Incoming<Frame>> = Vec::with_capacity(CHUNK);
    while !open.is_empty() {
        let m = tokio::select! {
            () = shutdown.cancelled() => break,
            m = reader.recv() => m,
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "reading the frames topic; retrying");
                continue;
            }
        };
        let Some(&end) = open.get(&m.partition) else { continue };
        if m.offset >= end {
            open.remove(&m.partition);
            continue;
        }
        if m.offset + 1 >= end {
            open.remove(&m.partition);
        }
        done.read += 1;
        match m.decode::<Frame>() {
            Ok(frame) if range.camera.as_ref().is_none_or(|c| *c == frame.message.camera_id) => {
                chunk.push(frame)
            }
            Ok(_) => done.passed_over += 1,
            Err(why) => {
                warn!(partition = m.partition, offset = m.offset, error = %why, "not a frame; passed over");
                done.passed_over += 1;
            }
        }
        if chunk.len() == CHUNK || open.is_empty() {
            let predictions = label(&labeller, &mut chunk, &mut done).await?;
            progress(&done, &predictions);
        }
    }
    if !chunk.is_empty() && !shutdown.is_cancelled() {
        let predictions = label(&labeller, &mut chunk, &mut done).await?;
        progress(&done, &predictions);
    }
    out.flush(Duration::from_secs(30))?;
    info!(
        read = done.read,
        labelled = done.labelled,
        skipped = done.skipped,
        passed_over = done.passed_over,
        "replay done"
    );
    Ok(done)
}

/// Labels `chunk` (emptying it) and counts the outcome.
async fn label(
    labeller: &Labeller,
    chunk: &mut Vec<Incoming<Frame>>,
    done: &mut ReplayProgress,
) -> Result<Vec<Prediction>, PredictorError> {
    let frames = std::mem::take(chunk);
    let n = frames.len() as u64;
    let (_, predictions) = labeller
        .label_all(frames)
        .await
        .map_err(|e| PredictorError::Replay(format!("labelling or publishing failed: {e}")))?;
    let skipped = predictions.iter().filter(|p| p.skipped != 0).count() as u64;
    done.labelled += n - skipped;
    done.skipped += skipped;
    Ok(predictions)
}

/// Creates the output predictions topic when it does not exist (with the live topic's
/// partitions and retention).
async fn ensure_output(out: &Bus) -> Result<(), PredictorError> {
    let name = out.topic_name(topics::PREDICTIONS.name());
    let exists = admin::describe(out).await?.iter().any(|t| t.name == name);
    if !exists {
        admin::ensure_topics(out, &[topics::PREDICTIONS.spec()]).await.map_err(|e| {
            PredictorError::Replay(format!(
                "cannot create {name}: {e} (create it with the partitions of the live predictions topic, or use --into with a topic prefix that exists)"
            ))
        })?;
    }
    Ok(())
}
