//! The frames handler: checks each frame, labels the good ones on a worker (several in one run
//! of the model when a partition has a backlog and the model takes batches), and publishes one
//! `Prediction` per frame, labelled or skipped with its reason.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use lookout_bus::{HandlerError, Incoming, Publisher, Rejected};
use lookout_proto::v1::{
    BoundingBox, Detection, Encoding, Frame, Label, ModelKind, ModelRef, Prediction, SkipReason,
    Timings,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    metrics as m,
    model::{FrameError, FrameLimits, Kind, Labels, Model, Scored, StageTimes},
    workers::Workers,
};

/// What became of one frame.
#[derive(Debug)]
enum Outcome {
    Labelled { labels: Labels, times: StageTimes },
    Skipped { reason: SkipReason, why: String, dead_letter: bool },
}

impl Outcome {
    fn skipped(reason: SkipReason, why: impl Into<String>) -> Self {
        Self::Skipped { reason, why: why.into(), dead_letter: false }
    }

    fn from_error(e: &FrameError) -> Self {
        let reason = match e {
            FrameError::TooLarge { .. } | FrameError::TooMuchMemory(_) => SkipReason::TooLarge,
            FrameError::NotJpeg(_) | FrameError::Decode(_) => SkipReason::Undecodable,
            FrameError::Panicked { stage: "decode", .. } => SkipReason::Undecodable,
            FrameError::AspectRatio { .. }
            | FrameError::Inference(_)
            | FrameError::Panicked { .. } => SkipReason::Unsupported,
        };
        // A frame that broke the decoder or the model goes to the dead-letter topic too, so
        // that it can be looked at.
        let dead_letter = matches!(e, FrameError::Panicked { .. } | FrameError::Inference(_));
        Self::Skipped { reason, why: e.to_string(), dead_letter }
    }
}

/// The value of the `outcome` label of [`m::FRAMES`].
fn outcome_label(reason: SkipReason) -> &'static str {
    match reason {
        SkipReason::Unspecified => "labelled",
        SkipReason::TooOld => "too_old",
        SkipReason::Undecodable => "undecodable",
        SkipReason::TooLarge => "too_large",
        SkipReason::Unsupported => "unsupported",
    }
}

/// Labels frames; shared by every partition's handler.
#[derive(Debug)]
pub(crate) struct Labeller {
    pub(crate) model: Arc<Model>,
    pub(crate) workers: Workers,
    pub(crate) predictions: Publisher<Prediction>,
    pub(crate) instance: String,
    pub(crate) top_k: usize,
    pub(crate) max_age: Option<Duration>,
    pub(crate) limits: FrameLimits,
    pub(crate) shutdown: CancellationToken,
}

impl Labeller {
    /// Handles frames of one partition, in order. Every frame gets a prediction (labelled or
    /// skipped); a frame that made the decoder or the model panic is also dead-lettered. On
    /// shutdown the frames in progress are given up (`Transient`: their offsets are not stored
    /// and the next owner labels them) rather than waited for.
    pub(crate) async fn handle(
        &self,
        batch: Vec<Incoming<Frame>>,
    ) -> Result<Rejected, HandlerError> {
        self.label_all(batch).await.map(|(rejected, _)| rejected)
    }

    /// [`Self::handle`], also giving back the predictions published, in the frames' order.
    pub(crate) async fn label_all(
        &self,
        batch: Vec<Incoming<Frame>>,
    ) -> Result<(Rejected, Vec<Prediction>), HandlerError> {
        let now = SystemTime::now();
        let mut outcomes: Vec<Option<Outcome>> =
            batch.iter().map(|f| self.check(&f.message, now)).collect();
        let todo: Vec<usize> = (0..batch.len()).filter(|i| outcomes[*i].is_none()).collect();
        if !todo.is_empty() {
            ::metrics::histogram!(m::BATCH_FRAMES).record(todo.len() as f64);
            let frames: Vec<Bytes> = todo.iter().map(|i| batch[*i].message.data.clone()).collect();
            let (model, limits, k) = (self.model.clone(), self.limits, self.top_k);
            let job = move |worker: usize| label(&model, worker, &frames, &limits, k);
            let results = tokio::select! {
                r = self.workers.run(job) => r.ok_or_else(|| HandlerError::transient("a labelling worker failed"))?,
                () = self.shutdown.cancelled() => {
                    return Err(HandlerError::transient("shutting down: frames in progress are left to the next owner"));
                }
            };
            for (i, outcome) in todo.into_iter().zip(results) {
                outcomes[i] = Some(outcome);
            }
        }

        let outcomes: Vec<Outcome> = outcomes.into_iter().map(|o| o.expect("all set")).collect();
        let sends = batch.iter().zip(&outcomes).map(|(f, o)| self.publish(f, o));
        let published = futures_util::future::join_all(sends)
            .await
            .into_iter()
            .collect::<Result<Vec<Prediction>, HandlerError>>()?;

        let mut rejected = Rejected::none();
        for (i, (incoming, outcome)) in batch.iter().zip(&outcomes).enumerate() {
            let frame = &incoming.message;
            match outcome {
                Outcome::Labelled { labels, times } => {
                    ::metrics::counter!(m::FRAMES, "outcome" => "labelled").increment(1);
                    ::metrics::histogram!(m::DECODE_SECONDS).record(times.decode.as_secs_f64());
                    ::metrics::histogram!(m::PREPROCESS_SECONDS)
                        .record(times.preprocess.as_secs_f64());
                    ::metrics::histogram!(m::INFERENCE_SECONDS)
                        .record(times.inference.as_secs_f64());
                    if let Some(at) =
                        frame.capture_time.as_ref().and_then(lookout_proto::system_time)
                    {
                        let latency = SystemTime::now().duration_since(at).unwrap_or_default();
                        ::metrics::histogram!(m::CAPTURE_TO_PREDICTED_SECONDS)
                            .record(latency.as_secs_f64());
                    }
                    let best = labels.top.first();
                    debug!(camera_id = %frame.camera_id, sequence = frame.sequence, label = best.map(|b| b.name.as_str()), score = best.map(|b| b.score), objects = labels.objects.len(), inference_ms = times.inference.as_millis() as u64, "labelled");
                }
                Outcome::Skipped { reason, why, dead_letter } => {
                    ::metrics::counter!(m::FRAMES, "outcome" => outcome_label(*reason))
                        .increment(1);
                    if *reason == SkipReason::TooOld {
                        debug!(camera_id = %frame.camera_id, sequence = frame.sequence, reason = outcome_label(*reason), "frame skipped: {why}");
                    } else {
                        warn!(camera_id = %frame.camera_id, sequence = frame.sequence, reason = outcome_label(*reason), error = %why, "frame not labelled; a skipped prediction is published");
                    }
                    if *dead_letter {
                        rejected.push(i, why.clone());
                    }
                }
            }
        }
        Ok((rejected, published))
    }

    /// Checks that need no decoding: age, encoding, the size the frame announces.
    fn check(&self, frame: &Frame, now: SystemTime) -> Option<Outcome> {
        let captured = frame.capture_time.as_ref().and_then(lookout_proto::system_time);
        if let (Some(max), Some(at)) = (self.max_age, captured) {
            let age = now.duration_since(at).unwrap_or_default();
            if age > max {
                return Some(Outcome::skipped(
                    SkipReason::TooOld,
                    format!("{} ms old, over --max-frame-age", age.as_millis()),
                ));
            }
        }
        if frame.encoding() != Encoding::Jpeg {
            return Some(Outcome::skipped(
                SkipReason::Unsupported,
                format!("encoding {} is not JPEG", frame.encoding),
            ));
        }
        let announced = u64::from(frame.width) * u64::from(frame.height);
        if announced > self.limits.max_pixels {
            return Some(Outcome::skipped(
                SkipReason::TooLarge,
                format!(
                    "the frame announces {}x{}, over {} pixels",
                    frame.width, frame.height, self.limits.max_pixels
                ),
            ));
        }
        None
    }

    async fn publish(
        &self,
        incoming: &Incoming<Frame>,
        outcome: &Outcome,
    ) -> Result<Prediction, HandlerError> {
        let frame = &incoming.message;
        let manifest = self.model.manifest();
        let mut prediction = Prediction {
            camera_id: frame.camera_id.clone(),
            frame_sequence: frame.sequence,
            capture_time: frame.capture_time,
            model: Some(ModelRef {
                name: manifest.name.clone(),
                version: manifest.version.clone(),
                kind: match manifest.kind {
                    Kind::Classification => ModelKind::Classification,
                    Kind::Detection => ModelKind::Detection,
                }
                .into(),
            }),
            predictor_instance: self.instance.clone(),
            predicted_time: Some(lookout_proto::timestamp(SystemTime::now())),
            ..Prediction::default()
        };
        match outcome {
            Outcome::Labelled { labels, times } => {
                prediction.top_k = labels.top.iter().map(proto_label).collect();
                prediction.detections = labels
                    .objects
                    .iter()
                    .map(|o| Detection {
                        r#box: Some(BoundingBox {
                            x: o.bbox.xmin,
                            y: o.bbox.ymin,
                            width: o.bbox.xmax - o.bbox.xmin,
                            height: o.bbox.ymax - o.bbox.ymin,
                        }),
                        label: Some(proto_label(&o.label)),
                    })
                    .collect();
                prediction.timings = Some(Timings {
                    decode: duration(times.decode),
                    preprocess: duration(times.preprocess),
                    inference: duration(times.inference),
                });
            }
            Outcome::Skipped { reason, .. } => prediction.set_skipped(*reason),
        }
        let sent = match incoming.meta.trace() {
            Some(parent) => self.predictions.send_traced(&prediction, &parent).await,
            None => self.predictions.send(&prediction).await,
        };
        sent.map(|_| prediction).map_err(|e| HandlerError::Transient(e.to_string()))
    }
}

/// On a worker: decodes and preprocesses each frame, runs the model on the good ones (as many
/// per run as the model takes), and says what became of each. A panic while decoding or in the
/// model is caught and becomes that frame's (or that run's frames') outcome.
fn label(
    model: &Model,
    worker: usize,
    frames: &[Bytes],
    limits: &FrameLimits,
    k: usize,
) -> Vec<Outcome> {
    let len = model.input_len();
    let mut outcomes: Vec<Option<Outcome>> = (0..frames.len()).map(|_| None).collect();
    let mut input: Vec<f32> = Vec::with_capacity(len * frames.len().min(model.max_batch()));
    let mut ready: Vec<(usize, StageTimes)> = Vec::new();
    for (i, bytes) in frames.iter().enumerate() {
        let start = input.len();
        input.resize(start + len, 0.0);
        let t0 = Instant::now();
        let prepared = catch_unwind(AssertUnwindSafe(|| {
            let img = Model::decode(bytes, limits)?;
            let t1 = Instant::now();
            model.preprocess_into(&img, &mut input[start..]);
            Ok::<_, FrameError>(t1)
        }));
        match prepared {
            Ok(Ok(t1)) => {
                let times =
                    StageTimes { decode: t1 - t0, preprocess: t1.elapsed(), ..Default::default() };
                ready.push((i, times));
            }
            Ok(Err(e)) => {
                input.truncate(start);
                outcomes[i] = Some(Outcome::from_error(&e));
            }
            Err(panic) => {
                input.truncate(start);
                let e = FrameError::Panicked { stage: "decode", message: panic_message(&*panic) };
                outcomes[i] = Some(Outcome::from_error(&e));
            }
        }
        // Run a full batch at once, so the input never holds more than one run's frames.
        if ready.len() == model.max_batch() || i + 1 == frames.len() {
            infer(model, worker, &input, &mut ready, k, &mut outcomes);
            input.clear();
        }
    }
    outcomes.into_iter().map(|o| o.expect("every frame has an outcome")).collect()
}

/// Runs the model on the prepared frames `ready` (their inputs one after another in `input`).
fn infer(
    model: &Model,
    worker: usize,
    input: &[f32],
    ready: &mut Vec<(usize, StageTimes)>,
    k: usize,
    outcomes: &mut [Option<Outcome>],
) {
    if ready.is_empty() {
        return;
    }
    let n = ready.len();
    let t0 = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| model.infer_batch(worker, input, n, k)));
    // Each frame's share of the run.
    let share = t0.elapsed() / n as u32;
    let result = match result {
        Ok(r) => r,
        Err(panic) => {
            Err(FrameError::Panicked { stage: "inference", message: panic_message(&*panic) })
        }
    };
    match result {
        Ok(labelled) => {
            for ((i, mut times), labels) in ready.drain(..).zip(labelled) {
                times.inference = share;
                outcomes[i] = Some(Outcome::Labelled { labels, times });
            }
        }
        Err(e) => {
            for (i, _) in ready.drain(..) {
                outcomes[i] = Some(Outcome::from_error(&e));
            }
        }
    }
}

fn proto_label(s: &Scored) -> Label {
    Label { class_id: s.class_id, name: s.name.clone(), score: s.score }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".to_owned())
}

fn duration(d: Duration) -> Option<lookout_proto::Duration> {
    lookout_proto::Duration::try_from(d).ok()
}
