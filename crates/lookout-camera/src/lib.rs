//! `lookout-camera`: captures frames from a webcam, a video file, a network stream, an image
//! folder or a generated test pattern, and publishes them as JPEG [`Frame`] messages on
//! `lookout.frames`.
//!
//! ```text
//! source ──▶ capture task ──▶ FrameQueue (drop-oldest) ──▶ publish loop ──▶ lookout.frames
//!            (encode once,     8 frames                    ≤16 unacknowledged
//!             shrink to fit)
//! ```
//!
//! Modules:
//! - [`source`]: the `--source` syntax and the sources ([`source::webcam`] through nokhwa,
//!   files and streams through an ffmpeg child process, the image slideshow, the synthetic
//!   pattern);
//! - [`jpeg`]: frame boundaries in an MJPEG stream, dimensions from the JPEG header, scaling
//!   and encoding;
//! - [`sequence`]: sequence numbers that keep increasing across restarts
//!   (`start_unix_millis * 1000 + frame_index`);
//! - `fit`: frames over the producer's `message.max.bytes` encoded again, smaller
//!   ([`jpeg::shrink`]), or dropped and counted when they cannot fit;
//! - `queue` and `publish`: the bounded drop-oldest queue and the publishing loop;
//! - [`metrics`]: metric names;
//! - [`site`]: the cameras of a site file (`--config`), each in its own task of one process.
//!
//! [`run`] is the whole camera ([`Camera::open`], which fails fast on a bad source, then
//! [`Camera::run`]); the binary only parses [`Args`] and calls those two:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use lookout_bus::{Bus, BusConfig};
//! use lookout_camera::{CameraArgs, SourceSpec};
//!
//! let bus = Bus::new(lookout_camera::producer_config(BusConfig::new("127.0.0.1:9092", "lookout-camera")))?;
//! let mut args = CameraArgs::new(SourceSpec::Synthetic);
//! args.frames = Some(100);
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let summary = lookout_camera::run(args, bus, Default::default(), shutdown).await?;
//! assert_eq!(summary.published, 100);
//! # Ok(()) }
//! ```
//!
//! [`Frame`]: lookout_proto::v1::Frame

mod args;
mod error;
mod fit;
pub mod jpeg;
pub mod metrics;
mod publish;
mod queue;
pub mod sequence;
mod service;
pub mod site;
pub mod source;

use std::{sync::Arc, time::SystemTime};

use lookout_bus::{Bus, BusConfig, topics};
use lookout_service::Readiness;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use args::{Args, CameraArgs, IMAGES_FPS, SYNTHETIC_FPS};
pub use error::CameraError;
pub use fit::MESSAGE_OVERHEAD;
pub use metrics::Summary;
pub use publish::MAX_IN_FLIGHT;
pub use service::main;
pub use source::{SourceSpec, WebcamRef};

use crate::{
    fit::Fitter,
    metrics::{DropReason, Stats},
    publish::{PublishLoop, Throttle},
    queue::{FrameQueue, Overflow},
    sequence::Sequencer,
    source::{
        Captured, Health, Pacer, Source, SourceContext,
        ffmpeg::{Ffmpeg, FfmpegConfig, Input},
        images::Slideshow,
        synthetic::{self, Synthetic},
        webcam::{Webcam, WebcamRequest},
    },
};

/// Frames held between capture and publishing; beyond that the oldest is dropped (live and
/// paced sources) or the source waits (`--no-pace`).
pub const QUEUE_FRAMES: usize = 8;

/// Producer settings the camera uses unless the user set them with `--kafka-opt`: a few
/// megabytes of local buffer at most, a frame not delivered within a few seconds is given up
/// (it would be stale), a broker that comes back is reconnected within a second, and a frame is
/// sent at once instead of lingering 5 ms for others to batch with (a camera sends one frame per
/// tens of milliseconds: lingering would only add latency).
pub const PRODUCER_DEFAULTS: [(&str, &str); 4] = [
    ("queue.buffering.max.kbytes", "8192"),
    ("linger.ms", "0"),
    ("message.timeout.ms", "5000"),
    ("reconnect.backoff.max.ms", "1000"),
];

/// The camera's producer configuration: `config` plus [`PRODUCER_DEFAULTS`] for the
/// properties the user did not set.
pub fn producer_config(mut config: BusConfig) -> BusConfig {
    for (key, value) in PRODUCER_DEFAULTS {
        let aliases: &[&str] = match key {
            "message.timeout.ms" => &["message.timeout.ms", "delivery.timeout.ms"],
            other => &[other],
        };
        if !config.kafka_opts.iter().any(|o| aliases.contains(&o.key.as_str())) {
            config = config.with_opt(key, value);
        }
    }
    config
}

/// Runs the camera until the source ends (a file without `--loop`), `--frames` frames were
/// published, the source fails, or `shutdown` is cancelled: [`Camera::open`], then
/// [`Camera::run`].
pub async fn run(
    args: CameraArgs,
    bus: Bus,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<Summary, CameraError> {
    Camera::open(args, readiness).await?.run(bus, shutdown).await
}

/// A camera whose source is open, ready to publish.
#[derive(Debug)]
pub struct Camera {
    args: CameraArgs,
    spec: SourceSpec,
    camera: String,
    source: Source,
    stats: Arc<Stats>,
    health: Health,
}

impl Camera {
    /// Checks the options and opens the source (starts ffmpeg, opens the webcam, loads the
    /// first image), so a bad source fails before anything else starts. Sets the `source`
    /// readiness check to false until frames flow.
    pub async fn open(args: CameraArgs, readiness: Readiness) -> Result<Self, CameraError> {
        Self::open_with(args, Health::single(readiness), Arc::default()).await
    }

    /// [`Camera::open`] with the readiness check and the counters given: one of a site's
    /// cameras has a check and metric labels of its own.
    pub(crate) async fn open_with(
        args: CameraArgs,
        health: Health,
        stats: Arc<Stats>,
    ) -> Result<Self, CameraError> {
        metrics::describe();
        args.validate()?;
        let spec = args.source()?.clone();
        let camera = args.camera_id();
        let ctx = SourceContext {
            camera: camera.clone(),
            jpeg: args.jpeg_options(),
            health: health.clone(),
            stats: Arc::clone(&stats),
        };
        health.set(false);
        let source = open(&spec, &args, ctx).await?;
        Ok(Self { args, spec, camera, source, stats, health })
    }

    /// The camera id frames are published with.
    pub fn camera_id(&self) -> &str {
        &self.camera
    }

    /// Captures and publishes until the source ends, `--frames` frames were published, the
    /// source fails, or `shutdown` is cancelled. Frames already captured are published and
    /// their acknowledgements awaited before it returns.
    ///
    /// Sets the `source` readiness check (true while frames flow); the `kafka` check is the
    /// caller's ([`lookout_service::Service::watch_kafka`]).
    pub async fn run(self, bus: Bus, shutdown: CancellationToken) -> Result<Summary, CameraError> {
        let Self { args, spec, camera, source, stats, health } = self;
        let sequencer = Sequencer::starting_at(SystemTime::now());
        info!(camera_id = %camera, source = %spec, first_sequence = sequencer.peek(), topic = %bus.topic_name(topics::FRAMES.name()), "capturing");

        let overflow =
            if spec.is_live() || args.paced() { Overflow::DropOldest } else { Overflow::Wait };
        let queue = Arc::new(FrameQueue::new(QUEUE_FRAMES, overflow));
        let stop_capture = shutdown.child_token();
        let fitter =
            Fitter::new(&camera, bus.max_message_bytes(), args.jpeg_quality, Arc::clone(&stats));
        let capture = tokio::spawn(capture(
            source,
            fitter,
            Arc::clone(&queue),
            Arc::clone(&stats),
            health,
            camera.clone(),
            stop_capture.clone(),
        ));
        PublishLoop {
            camera: camera.clone(),
            publisher: bus.publisher(&topics::FRAMES),
            queue,
            stats: Arc::clone(&stats),
            sequencer,
            limit: args.frames,
        }
        .run(stop_capture.clone())
        .await;
        stop_capture.cancel();
        let captured = capture.await;

        let s = stats.summary();
        info!(
            camera_id = %camera,
            captured = s.captured,
            published = s.published,
            shrunk = s.shrunk,
            dropped = s.dropped(),
            dropped_too_large = s.dropped_too_large,
            dropped_queue_full = s.dropped_queue_full,
            dropped_delivery_failed = s.dropped_delivery_failed,
            first_sequence = s.first_sequence,
            last_sequence = s.last_sequence,
            "camera stopped",
        );
        captured.map_err(|_| CameraError::Worker { camera, what: "capture task" })??;
        Ok(s)
    }
}

/// Opens the source `spec` names.
async fn open(
    spec: &SourceSpec,
    args: &CameraArgs,
    ctx: SourceContext,
) -> Result<Source, CameraError> {
    let paced = args.paced();
    Ok(match spec {
        SourceSpec::Synthetic => Source::Synthetic(Synthetic::new(
            ctx,
            args.width.unwrap_or(synthetic::DEFAULT_WIDTH),
            args.height.unwrap_or(synthetic::DEFAULT_HEIGHT),
            Pacer::new(args.fps.unwrap_or(SYNTHETIC_FPS), paced),
        )),
        SourceSpec::Images(pattern) => {
            let fps = args.fps.unwrap_or(IMAGES_FPS);
            Source::Images(Box::new(Slideshow::open(ctx, pattern, args.hold, fps, paced).await?))
        }
        SourceSpec::File(path) => {
            let input = Input::File { path: path.clone(), paced, looped: args.loop_file };
            let config = FfmpegConfig { program: args.ffmpeg.clone(), input, fps: args.fps };
            Source::Ffmpeg(Box::new(Ffmpeg::open(ctx, config)?))
        }
        SourceSpec::Stream(url) => {
            let input = Input::Stream { url: url.clone() };
            let config = FfmpegConfig { program: args.ffmpeg.clone(), input, fps: args.fps };
            Source::Ffmpeg(Box::new(Ffmpeg::open(ctx, config)?))
        }
        SourceSpec::Webcam(which) => {
            let request = WebcamRequest {
                width: args.width,
                height: args.height,
                fps: args.fps.map(|f| f.round().max(1.0) as u32),
            };
            Source::Webcam(Webcam::open(ctx, which, request).await?)
        }
    })
}

/// Takes frames from the source, shrunk to fit the message limit, into the queue until the
/// source ends or fails, or `stop`. Closes the queue when it returns, so publishing drains
/// what is left and ends.
async fn capture(
    mut source: Source,
    mut fitter: Fitter,
    queue: Arc<FrameQueue<Captured>>,
    stats: Arc<Stats>,
    health: Health,
    camera: String,
    stop: CancellationToken,
) -> Result<(), CameraError> {
    let mut behind = Throttle::default();
    let result = loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => break Ok(()),
            next = source.next() => next,
        };
        let frame = match next {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        health.set(true);
        let bytes = frame.jpeg.len();
        let fitted = tokio::select! {
            biased;
            () = stop.cancelled() => break Ok(()),
            fitted = fitter.fit(frame) => fitted,
        };
        let Some(frame) = fitted else {
            stats.captured(bytes); // and dropped as too large
            continue;
        };
        let dropped = tokio::select! {
            biased;
            () = stop.cancelled() => break Ok(()),
            dropped = queue.push(frame) => dropped,
        };
        stats.captured(bytes);
        if dropped.is_some() {
            stats.dropped(DropReason::QueueFull);
            if let Some(also_dropped) = behind.ready() {
                warn!(camera_id = %camera, also_dropped, queue = QUEUE_FRAMES, "publishing is behind (brokers slow or down); dropping the oldest frames");
            }
        }
    };
    queue.close();
    drop(source); // stops ffmpeg or the webcam thread
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_defaults_apply_only_where_the_user_set_nothing() {
        let c = producer_config(BusConfig::new("b:9092", "cam"));
        let get = |c: &BusConfig, k: &str| {
            c.kafka_opts.iter().rev().find(|o| o.key == k).map(|o| o.value.clone())
        };
        assert_eq!(get(&c, "message.timeout.ms").as_deref(), Some("5000"));
        assert_eq!(get(&c, "queue.buffering.max.kbytes").as_deref(), Some("8192"));

        let user = BusConfig::new("b:9092", "cam")
            .with_opt("delivery.timeout.ms", "20000")
            .with_opt("queue.buffering.max.kbytes", "1024");
        let c = producer_config(user);
        assert_eq!(get(&c, "message.timeout.ms"), None, "delivery.timeout.ms is its alias");
        assert_eq!(get(&c, "queue.buffering.max.kbytes").as_deref(), Some("1024"));
        assert_eq!(get(&c, "reconnect.backoff.max.ms").as_deref(), Some("1000"));
    }
}
