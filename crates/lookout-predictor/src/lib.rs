//! `lookout-predictor`: labels frames with an ONNX model and publishes predictions.
//!
//! The predictor is a member of consumer group `predictor` on `lookout.frames`. For each frame
//! it decodes the JPEG, resizes, crops and normalises it as the model's manifest says
//! ([`model::Manifest`]), runs the model with tract (loaded and optimised once), applies
//! softmax and publishes the top-k labels as a `Prediction` on `lookout.predictions`, keyed by
//! camera and carrying the frame's sequence number. The frame's offset is stored only after
//! the prediction was delivered.
//!
//! Scaling: frames of one camera are spread over all partitions of the frames topic, so `N`
//! replicas (up to the partition count) share even a single camera's load.
//!
//! Live-ness: a frame older than `--max-frame-age` when its turn comes is skipped and counted,
//! so a slow predictor never falls further and further behind a live camera. `0` disables the
//! check (for replays).
//!
//! Bad input: a frame that is not JPEG, does not decode, or is larger than `--max-pixels` is
//! counted and logged with its camera and sequence, and skipped.

pub mod metrics;
pub mod model;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use lookout_bus::{Bus, BusError, HandlerError, Incoming, Publisher, topics};
use lookout_proto::v1::{Encoding, Frame, Label, ModelRef, Prediction, Timings};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{metrics as m, model::Model};
pub use model::{FrameError, ModelError};

/// The predictor's own options.
#[derive(Debug, Clone, clap::Args)]
pub struct PredictorArgs {
    /// Model manifest (`model.toml`), or the folder holding it.
    #[arg(long, env = "LOOKOUT_MODEL", default_value = "models/efficientnet-lite0/model.toml")]
    pub model: PathBuf,

    /// Number of labels per prediction.
    #[arg(long, env = "LOOKOUT_TOP_K", default_value_t = 5)]
    pub top_k: usize,

    /// Skip frames older than this when their turn comes (e.g. 2s, 500ms); 0 labels every
    /// frame however old (replays).
    #[arg(long, env = "LOOKOUT_MAX_FRAME_AGE", default_value = "2s", value_parser = lookout_service::parse_duration)]
    pub max_frame_age: Duration,

    /// Frames labelled at the same time by this replica (scale out with replicas first).
    #[arg(long, env = "LOOKOUT_PREDICTOR_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// Refuse images with more pixels than this, before decoding them.
    #[arg(long, env = "LOOKOUT_MAX_PIXELS", default_value_t = 40_000_000)]
    pub max_pixels: u64,

    /// Consumer group on the frames topic.
    #[arg(long, env = "LOOKOUT_PREDICTOR_GROUP", default_value = "predictor")]
    pub group: String,
}

/// The `lookout-predictor` command line (also `lookout predictor`).
#[derive(Debug, clap::Parser)]
#[command(
    name = "lookout-predictor",
    version,
    about = "Labels camera frames with an ONNX model and publishes the predictions."
)]
pub struct Args {
    /// Predictor options.
    #[command(flatten)]
    pub predictor: PredictorArgs,
    /// Options every service takes.
    #[command(flatten)]
    pub common: lookout_service::CommonArgs,
}

/// Runs the predictor service: telemetry, signals, admin server, then [`run`].
pub async fn main(args: Args) -> std::process::ExitCode {
    lookout_service::main("lookout-predictor", args.common.clone(), |svc| async move {
        let bus = svc.bus()?;
        svc.watch_kafka(&bus);
        run(args.predictor, bus, svc.shutdown.clone()).await?;
        Ok(())
    })
    .await
}

/// Errors that stop the predictor.
#[derive(Debug, thiserror::Error)]
pub enum PredictorError {
    /// The model could not be loaded.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Loads the model and labels frames until `shutdown` is cancelled.
pub async fn run(
    args: PredictorArgs,
    bus: Bus,
    shutdown: CancellationToken,
) -> Result<(), PredictorError> {
    let path = args.model.clone();
    let model = tokio::task::spawn_blocking(move || Model::load(&path))
        .await
        .expect("model loading does not panic")?;
    info!(
        model = %model.manifest().name,
        version = %model.manifest().version,
        classes = model.classes(),
        path = %args.model.display(),
        "model loaded"
    );
    let labeller = Arc::new(Labeller {
        model: Arc::new(model),
        predictions: bus.publisher(&topics::PREDICTIONS),
        workers: Semaphore::new(args.workers.max(1)),
        instance: bus.config().instance.clone(),
        top_k: args.top_k.max(1),
        max_age: (!args.max_frame_age.is_zero()).then_some(args.max_frame_age),
        max_pixels: args.max_pixels,
    });
    let handler = move |frame: Incoming<Frame>| {
        let labeller = labeller.clone();
        async move { labeller.handle(frame).await }
    };
    bus.subscriber(&topics::FRAMES, &args.group).run(handler, shutdown).await?;
    Ok(())
}

struct Labeller {
    model: Arc<Model>,
    predictions: Publisher<Prediction>,
    workers: Semaphore,
    instance: String,
    top_k: usize,
    max_age: Option<Duration>,
    max_pixels: u64,
}

impl Labeller {
    async fn handle(&self, incoming: Incoming<Frame>) -> Result<(), HandlerError> {
        let Incoming { message: frame, meta } = incoming;
        let captured = frame.capture_time.as_ref().and_then(lookout_proto::system_time);
        if let (Some(max), Some(at)) = (self.max_age, captured) {
            let age = SystemTime::now().duration_since(at).unwrap_or_default();
            if age > max {
                ::metrics::counter!(m::FRAMES, "outcome" => "too_old").increment(1);
                debug!(camera_id = %frame.camera_id, sequence = frame.sequence, age_ms = age.as_millis() as u64, "frame too old; skipped");
                return Ok(());
            }
        }
        if frame.encoding() != Encoding::Jpeg {
            ::metrics::counter!(m::FRAMES, "outcome" => "bad_frame").increment(1);
            warn!(camera_id = %frame.camera_id, sequence = frame.sequence, encoding = frame.encoding, "unsupported encoding; frame skipped");
            return Ok(());
        }
        if u64::from(frame.width) * u64::from(frame.height) > self.max_pixels {
            ::metrics::counter!(m::FRAMES, "outcome" => "bad_frame").increment(1);
            warn!(camera_id = %frame.camera_id, sequence = frame.sequence, width = frame.width, height = frame.height, "frame header announces an absurd size; skipped");
            return Ok(());
        }

        let permit = self.workers.acquire().await.expect("semaphore never closed");
        let model = self.model.clone();
        let data = frame.data.clone();
        let (k, max_pixels) = (self.top_k, self.max_pixels);
        let result = tokio::task::spawn_blocking(move || model.classify(&data, k, max_pixels))
            .await
            .map_err(|e| HandlerError::Transient(format!("labelling task failed: {e}")))?;
        drop(permit);
        let (top, times) = match result {
            Ok(r) => r,
            Err(e) => {
                ::metrics::counter!(m::FRAMES, "outcome" => "bad_frame").increment(1);
                warn!(camera_id = %frame.camera_id, sequence = frame.sequence, error = %e, "cannot label frame; skipped");
                return Ok(());
            }
        };
        ::metrics::histogram!(m::DECODE_SECONDS).record(times.decode.as_secs_f64());
        ::metrics::histogram!(m::PREPROCESS_SECONDS).record(times.preprocess.as_secs_f64());
        ::metrics::histogram!(m::INFERENCE_SECONDS).record(times.inference.as_secs_f64());

        let manifest = self.model.manifest();
        let prediction = Prediction {
            camera_id: frame.camera_id.clone(),
            frame_sequence: frame.sequence,
            capture_time: frame.capture_time,
            model: Some(ModelRef {
                name: manifest.name.clone(),
                version: manifest.version.clone(),
            }),
            top_k: top
                .iter()
                .map(|s| Label { class_id: s.class_id, name: s.name.clone(), score: s.score })
                .collect(),
            detections: Vec::new(),
            timings: Some(Timings {
                decode: duration(times.decode),
                preprocess: duration(times.preprocess),
                inference: duration(times.inference),
            }),
            predictor_instance: self.instance.clone(),
            predicted_time: Some(lookout_proto::timestamp(SystemTime::now())),
            skipped: 0,
        };
        let sent = match meta.trace() {
            Some(parent) => self.predictions.send_traced(&prediction, &parent).await,
            None => self.predictions.send(&prediction).await,
        };
        sent.map_err(|e| HandlerError::Transient(e.to_string()))?;
        ::metrics::counter!(m::FRAMES, "outcome" => "labelled").increment(1);
        if let Some(at) = captured {
            let latency = SystemTime::now().duration_since(at).unwrap_or_default();
            ::metrics::histogram!(m::CAPTURE_TO_PREDICTED_SECONDS).record(latency.as_secs_f64());
        }
        let best = &top[0];
        debug!(camera_id = %frame.camera_id, sequence = frame.sequence, label = %best.name, score = best.score, inference_ms = times.inference.as_millis() as u64, "labelled");
        Ok(())
    }
}

fn duration(d: Duration) -> Option<lookout_proto::Duration> {
    lookout_proto::Duration::try_from(d).ok()
}
