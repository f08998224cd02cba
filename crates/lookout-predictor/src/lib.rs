//! `lookout-predictor`: labels frames with an ONNX model and publishes predictions.
//!
//! The predictor is a member of a consumer group (`predictor` by default) on `lookout.frames`.
//! For each frame it decodes the JPEG within limits, resizes the region the model keeps (the
//! centre crop, or the whole frame for a detector) and normalises it as the model's manifest
//! says ([`model::Manifest`]), runs the model with tract or ONNX Runtime ([`backend`]) and
//! publishes a `Prediction` on `lookout.predictions`, keyed by camera, carrying the frame's
//! sequence number and the model's name: a classifier's top-k labels (softmax applied when
//! the manifest says so), or a detector's objects (boxes in fractions of the frame, after
//! per-class non-maximum suppression, [`detect`]) with the best score of each class found as
//! its top-k. The frame's offset is stored only after the prediction was delivered.
//!
//! Modules: [`model`] (manifest, loading, labelling), [`detect`] (a detector's
//! post-processing), [`frame`] (decoding with limits and the resize of the kept region),
//! [`backend`] (tract, ONNX Runtime), `labeller` (the frames handler), `workers` (the
//! labelling threads), [`replay`] (stored frames labelled again), [`metrics`].
//!
//! Scaling: frames of one camera are spread over all partitions of the frames topic, so `N`
//! replicas (up to the partition count) share even a single camera's load. Within a replica,
//! `--workers` threads label frames at once; `--threads` gives each ONNX Runtime run more
//! threads; `--batch` lets one run of the model take several frames that queued up in a
//! partition.
//!
//! Every frame gets a prediction. One that is not labelled (older than `--max-frame-age`, not
//! a JPEG, undecodable, too large, a shape the model cannot use) is published with its
//! `skipped` reason and no labels, counted and logged with its camera and sequence, so
//! consumers that restore order never wait for it. A frame that makes the decoder or the model
//! panic is skipped the same way and also dead-lettered; the service keeps running.

pub mod backend;
pub mod detect;
pub mod frame;
mod labeller;
pub mod metrics;
pub mod model;
pub mod replay;
#[doc(hidden)]
pub mod test_hooks;
mod workers;

use std::{path::PathBuf, sync::Arc, time::Duration};

use lookout_bus::{Bus, BusError, Incoming, topics};
use lookout_proto::v1::Frame;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use backend::{BackendKind, EngineOptions, ExecutionProvider};
pub use frame::{FrameError, FrameLimits};
pub use model::ModelError;

use crate::{labeller::Labeller, model::Model, workers::Workers};

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

    /// The engine that runs the model: tract (pure Rust) or onnxruntime (needs a build with
    /// the `onnxruntime` feature and the ONNX Runtime library). Default: the manifest's
    /// `backend`, else tract.
    #[arg(long, env = "LOOKOUT_PREDICTOR_BACKEND", value_enum)]
    pub backend: Option<BackendKind>,

    /// Frames labelled at the same time by this replica, each on its own thread (its own
    /// tract state or ONNX Runtime session).
    #[arg(long, env = "LOOKOUT_PREDICTOR_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// Threads one run of the model may use (ONNX Runtime's intra-op threads). tract runs
    /// each frame on one thread: use --workers.
    #[arg(long, env = "LOOKOUT_PREDICTOR_THREADS", default_value_t = 1)]
    pub threads: usize,

    /// Most frames of one partition labelled in one run of the model, when they queued up
    /// (and the model takes a batch dimension); 1 labels frame by frame.
    #[arg(long, env = "LOOKOUT_PREDICTOR_BATCH", default_value_t = 1)]
    pub batch: usize,

    /// Where ONNX Runtime runs the model: cpu, cuda or openvino (the library must have been
    /// built with that provider; asking for one it lacks is an error).
    #[arg(long, env = "LOOKOUT_PREDICTOR_EXECUTION_PROVIDER", value_enum, default_value = "cpu")]
    pub execution_provider: ExecutionProvider,

    /// The ONNX Runtime shared library: a path (the `onnxruntime` wheel's
    /// `onnxruntime/capi/libonnxruntime.so.*`), or a file name the dynamic loader looks up.
    #[arg(long, env = "ORT_DYLIB_PATH", default_value = backend::DEFAULT_ONNXRUNTIME_LIBRARY)]
    pub onnxruntime_library: PathBuf,

    /// Refuse images with more pixels than this, before decoding them.
    #[arg(long, env = "LOOKOUT_MAX_PIXELS", default_value_t = 40_000_000)]
    pub max_pixels: u64,

    /// Refuse images whose longer side is more than this many times the shorter one.
    #[arg(long, env = "LOOKOUT_MAX_ASPECT_RATIO", default_value_t = 20.0)]
    pub max_aspect_ratio: f32,

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
    /// The labelling threads could not be started.
    #[error("cannot start the labelling threads: {0}")]
    Workers(#[source] std::io::Error),
    /// A replay could not go on.
    #[error("replay: {0}")]
    Replay(String),
}

impl PredictorArgs {
    /// The options with their defaults (or the `LOOKOUT_*` / `ORT_DYLIB_PATH` variables set in
    /// the environment), for `model`.
    pub fn for_model(model: impl Into<PathBuf>) -> Self {
        use clap::Parser as _;
        let mut args = Args::parse_from(["lookout-predictor"]).predictor;
        args.model = model.into();
        args
    }

    /// How the model is to be run.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            backend: self.backend,
            workers: self.workers.max(1),
            threads: self.threads.max(1),
            batch: self.batch.max(1),
            execution_provider: self.execution_provider,
            onnxruntime_library: self.onnxruntime_library.clone(),
        }
    }

    /// The limits every frame is checked against.
    pub fn frame_limits(&self) -> FrameLimits {
        FrameLimits { max_pixels: self.max_pixels, max_aspect_ratio: self.max_aspect_ratio }
    }
}

/// Loads the model and labels frames until `shutdown` is cancelled. A frame in progress at
/// shutdown is not waited for: its offset is not stored and the next owner labels it.
pub async fn run(
    args: PredictorArgs,
    bus: Bus,
    shutdown: CancellationToken,
) -> Result<(), PredictorError> {
    let path = args.model.clone();
    let options = args.engine_options();
    let model = tokio::task::spawn_blocking(move || Model::load_with(&path, &options))
        .await
        .map_err(|e| ModelError::Options(format!("loading the model failed: {e}")))??;
    info!(
        model = %model.manifest().name,
        version = %model.manifest().version,
        kind = model.manifest().kind.as_str(),
        classes = model.classes(),
        backend = model.backend().as_str(),
        workers = args.workers.max(1),
        threads = args.threads.max(1),
        max_batch = model.max_batch(),
        path = %args.model.display(),
        "model loaded"
    );
    let batch = model.max_batch();
    let labeller = Arc::new(Labeller {
        model: Arc::new(model),
        workers: Workers::start(args.workers).map_err(PredictorError::Workers)?,
        predictions: bus.publisher(&topics::PREDICTIONS),
        instance: bus.config().instance.clone(),
        top_k: args.top_k.max(1),
        max_age: (!args.max_frame_age.is_zero()).then_some(args.max_frame_age),
        limits: args.frame_limits(),
        shutdown: shutdown.clone(),
    });
    let handler = move |frames: Vec<Incoming<Frame>>| {
        let labeller = labeller.clone();
        async move { labeller.handle(frames).await }
    };
    // Batches take what a partition already holds: no frame waits for others to arrive.
    bus.subscriber(&topics::FRAMES, &args.group)
        .run_batched(batch, Duration::ZERO, handler, shutdown)
        .await?;
    Ok(())
}
