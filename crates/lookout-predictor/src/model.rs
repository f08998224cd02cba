//! ONNX models described by a manifest, run by one of the [`crate::backend`]s.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use image::RgbImage;
use serde::Deserialize;

pub use crate::detect::{BBox, BoxLayout};
pub use crate::frame::{FrameError, FrameLimits};
use crate::{
    backend::{self, BackendKind, Engine, EngineOptions},
    detect, frame,
};

/// Errors loading a model. Each names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The manifest could not be read.
    #[error("cannot read model manifest {path}")]
    ManifestRead {
        /// Manifest path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not valid.
    #[error("invalid model manifest {path}: {message}")]
    Manifest {
        /// Manifest path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The ONNX file is missing.
    #[error("model file {path} does not exist (named by the manifest {manifest})")]
    ModelFileMissing {
        /// ONNX path.
        path: PathBuf,
        /// Manifest path.
        manifest: PathBuf,
    },
    /// The labels file could not be read.
    #[error("cannot read labels file {path}")]
    Labels {
        /// Labels path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The model and the labels disagree.
    #[error(
        "model {model} has {outputs} outputs but labels file {labels_path} has {labels} labels"
    )]
    LabelCount {
        /// ONNX path.
        model: PathBuf,
        /// Labels path.
        labels_path: PathBuf,
        /// Number of labels.
        labels: usize,
        /// Number of model outputs.
        outputs: usize,
    },
    /// The manifest and the model disagree about inputs or outputs.
    #[error("model {model} does not match its manifest: {message}")]
    Mismatch {
        /// ONNX path.
        model: PathBuf,
        /// What differs.
        message: String,
    },
    /// The engine could not load or optimise the model.
    #[error("cannot load ONNX model {model} with {backend}: {message}")]
    Engine {
        /// ONNX path.
        model: PathBuf,
        /// `tract` or `onnxruntime`.
        backend: &'static str,
        /// The engine's error chain.
        message: String,
    },
    /// The ONNX Runtime shared library could not be loaded.
    #[error(
        "cannot load the ONNX Runtime library {library}: {message} (set ORT_DYLIB_PATH or \
         --onnxruntime-library to the libonnxruntime.so.* of the `onnxruntime` wheel; README, \
         \"The predictor\")"
    )]
    OnnxruntimeLibrary {
        /// The path or name given.
        library: PathBuf,
        /// The loader's error.
        message: String,
    },
    /// The engine options do not fit together.
    #[error("{0}")]
    Options(String),
}

/// The manifest file (`model.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Model name, sent in every prediction.
    pub name: String,
    /// Model version, sent in every prediction.
    pub version: String,
    /// ONNX file, relative to the manifest.
    pub file: PathBuf,
    /// Labels file, relative to the manifest: one label per line (line number = class id), or
    /// `id<TAB>label` lines (ids may have gaps).
    pub labels: PathBuf,
    /// The engine used unless `--backend` says otherwise (default tract).
    #[serde(default)]
    pub backend: Option<BackendKind>,
    /// Output kind.
    pub kind: Kind,
    /// The input tensor.
    pub input: Input,
    /// Image preprocessing.
    pub preprocess: Preprocess,
    /// A classifier's output tensor (`kind = "classification"`).
    #[serde(default)]
    pub output: Option<Output>,
    /// A detector's output tensors and post-processing (`kind = "detection"`).
    #[serde(default)]
    pub detection: Option<Detection>,
}

/// What the model outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One score per label.
    Classification,
    /// Boxes with labels: one score per anchor and class, one box per anchor.
    Detection,
}

impl Kind {
    /// The name used in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classification => "classification",
            Self::Detection => "detection",
        }
    }
}

/// Input tensor description.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Input name in the graph.
    pub name: String,
    /// Shape, `[1, 3, H, W]` for NCHW or `[1, H, W, 3]` for NHWC.
    pub shape: [usize; 4],
    /// `NCHW` or `NHWC`.
    pub layout: Layout,
    /// Channel order, `RGB` or `BGR`.
    pub color: Color,
}

/// Tensor layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Layout {
    /// Batch, channels, height, width.
    NCHW,
    /// Batch, height, width, channels.
    NHWC,
}

/// Channel order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Color {
    /// Red, green, blue.
    RGB,
    /// Blue, green, red.
    BGR,
}

/// Preprocessing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// How the frame becomes the input's H x W.
    #[serde(default)]
    pub resize: Resize,
    /// With [`Resize::Crop`]: resize the shorter side to this, then centre-crop to the input
    /// size.
    #[serde(default)]
    pub resize_shorter: Option<u32>,
    /// Resize filter.
    pub filter: Filter,
    /// Per-channel mean, pixel values 0..=255.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
}

/// How the frame is fitted to the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Resize the shorter side to `resize_shorter` keeping the aspect ratio, then keep the
    /// centre (a classifier's usual preprocessing).
    #[default]
    Crop,
    /// Resize the whole frame to the input's size, without keeping the aspect ratio (how SSD
    /// detectors are trained; boxes are then fractions of the whole frame).
    Stretch,
}

/// Resize filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filter {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear.
    Triangle,
    /// Bicubic (Catmull-Rom).
    CatmullRom,
    /// Gaussian.
    Gaussian,
    /// Lanczos, window 3.
    Lanczos3,
}

/// Output tensor description.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Output name in the graph.
    pub name: String,
    /// Apply softmax (the model outputs logits).
    pub softmax: bool,
}

/// A detector's outputs and post-processing ([`crate::detect`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detection {
    /// Output with one score (a probability) per anchor and class: `[1, anchors, classes]`.
    pub scores: String,
    /// Output with one box per anchor: `[1, anchors, 4]` (or `[1, anchors, 1, 4]`), in
    /// fractions of the input.
    pub boxes: String,
    /// How a box's four values are ordered.
    pub box_layout: BoxLayout,
    /// The class id that means "no object" (never reported).
    #[serde(default)]
    pub background_class: Option<u32>,
    /// Lowest score reported.
    pub score_threshold: f32,
    /// Per-class non-maximum suppression: of two boxes of one class overlapping more than
    /// this (intersection over union), the lower-scoring one is dropped.
    pub iou_threshold: f32,
    /// Most objects reported per frame.
    pub max_detections: usize,
}

impl Detection {
    fn settings(&self) -> detect::Settings {
        detect::Settings {
            layout: self.box_layout,
            background: self.background_class,
            score_threshold: self.score_threshold,
            iou_threshold: self.iou_threshold,
            max_detections: self.max_detections,
        }
    }
}

impl Manifest {
    /// The graph outputs the model is read from, in the order the engines return them.
    pub fn output_names(&self) -> Vec<&str> {
        match (self.kind, &self.output, &self.detection) {
            (Kind::Classification, Some(o), _) => vec![o.name.as_str()],
            (Kind::Detection, _, Some(d)) => vec![d.scores.as_str(), d.boxes.as_str()],
            _ => Vec::new(),
        }
    }
}

/// One scored class.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Class id (line of the labels file).
    pub class_id: u32,
    /// Label text.
    pub name: String,
    /// Probability.
    pub score: f32,
}

/// One object a detector found.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Its class and score.
    pub label: Scored,
    /// Where, in fractions of the frame (the input is the whole frame, stretched).
    pub bbox: BBox,
}

/// What the model says about one image.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Labels {
    /// A classifier's best classes; a detector's classes found, each with its best score.
    /// Best first.
    pub top: Vec<Scored>,
    /// A detector's objects, best first; empty for a classifier.
    pub objects: Vec<Object>,
}

/// Time spent per stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageTimes {
    /// JPEG decode.
    pub decode: Duration,
    /// Resize, crop, normalise.
    pub preprocess: Duration,
    /// The model.
    pub inference: Duration,
}

/// A loaded, optimised model, ready to run. Cheap to share between threads.
pub struct Model {
    manifest: Manifest,
    /// Label of each class id (a detector's labels may have gaps).
    labels: Vec<Option<String>>,
    engine: Box<dyn Engine>,
    backend: BackendKind,
    path: PathBuf,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("kind", &self.manifest.kind)
            .field("path", &self.path)
            .field("labels", &self.labels.len())
            .field("engine", &self.engine)
            .finish()
    }
}

impl Model {
    /// Loads the manifest at `manifest_path` (or `model.toml` inside it, if it is a folder),
    /// the labels and the ONNX model with tract, and checks that they agree.
    pub fn load(manifest_path: &Path) -> Result<Self, ModelError> {
        Self::load_with(manifest_path, &EngineOptions::new(BackendKind::Tract))
    }

    /// Reads and checks the manifest at `manifest_path` (or `model.toml` inside it).
    pub fn read_manifest(manifest_path: &Path) -> Result<(Manifest, PathBuf), ModelError> {
        let manifest_path = if manifest_path.is_dir() {
            manifest_path.join("model.toml")
        } else {
            manifest_path.to_owned()
        };
        let text = std::fs::read_to_string(&manifest_path)
            .map_err(|source| ModelError::ManifestRead { path: manifest_path.clone(), source })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| ModelError::Manifest {
            path: manifest_path.clone(),
            message: e.to_string(),
        })?;
        check_manifest(&manifest)
            .map_err(|message| ModelError::Manifest { path: manifest_path.clone(), message })?;
        Ok((manifest, manifest_path))
    }

    /// Loads the model as [`Model::load`] does, run by `options.backend` (when `None`, the
    /// manifest's backend, else tract) with `options`' workers, threads and batch size.
    pub fn load_with(manifest_path: &Path, options: &EngineOptions) -> Result<Self, ModelError> {
        let (manifest, manifest_path) = Self::read_manifest(manifest_path)?;
        let dir = manifest_path.parent().unwrap_or(Path::new("."));
        let model_path = dir.join(&manifest.file);
        if !model_path.is_file() {
            return Err(ModelError::ModelFileMissing { path: model_path, manifest: manifest_path });
        }
        let labels_path = dir.join(&manifest.labels);
        let text = std::fs::read_to_string(&labels_path)
            .map_err(|source| ModelError::Labels { path: labels_path.clone(), source })?;
        let mut labels = parse_labels(&text);
        let backend = options.backend.or(manifest.backend).unwrap_or(BackendKind::Tract);
        let loaded = backend::load(&manifest, &model_path, backend, options)?;
        let mismatch =
            |message: String| ModelError::Mismatch { model: model_path.clone(), message };
        match manifest.kind {
            Kind::Classification => {
                let outputs: usize = loaded.outputs[0].iter().product();
                if outputs != labels.len() {
                    return Err(ModelError::LabelCount {
                        model: model_path,
                        labels_path,
                        labels: labels.len(),
                        outputs,
                    });
                }
            }
            Kind::Detection => {
                let classes = detection_classes(&manifest, &loaded.outputs).map_err(mismatch)?;
                if labels.len() > classes {
                    let id = labels.len() - 1;
                    return Err(mismatch(format!(
                        "labels file {} names class id {id}, but the scores output has {classes} \
                         classes",
                        labels_path.display()
                    )));
                }
                labels.resize(classes, None);
            }
        }
        Ok(Self { manifest, labels, engine: loaded.engine, backend, path: model_path })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The number of classes the model scores.
    pub fn classes(&self) -> usize {
        self.labels.len()
    }

    /// The engine running the model.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// The most frames one run of the model takes (1 unless batching was asked for and the
    /// model allows it).
    pub fn max_batch(&self) -> usize {
        self.engine.max_batch()
    }

    /// Values in the input tensor of one image.
    pub fn input_len(&self) -> usize {
        self.manifest.input.shape.iter().product()
    }

    /// Decodes a JPEG within `limits`; see [`frame::decode_jpeg`].
    pub fn decode(bytes: &[u8], limits: &FrameLimits) -> Result<RgbImage, FrameError> {
        frame::decode_jpeg(bytes, limits)
    }

    /// Resizes the kept region, crops and normalises `img` into `out` ([`Model::input_len`]
    /// values).
    pub fn preprocess_into(&self, img: &RgbImage, out: &mut [f32]) {
        frame::preprocess_into(&self.manifest, img, out);
    }

    /// The input tensor of one image.
    pub fn preprocess(&self, img: &RgbImage) -> Vec<f32> {
        let mut out = vec![0f32; self.input_len()];
        self.preprocess_into(img, &mut out);
        out
    }

    /// Runs the model on `batch` prepared images (one after another in `input`) with worker
    /// `worker`'s state, and returns what it says about each: a classifier's `k` best
    /// classes, a detector's objects and the best score of each class found (at most `k`).
    pub fn infer_batch(
        &self,
        worker: usize,
        input: &[f32],
        batch: usize,
        k: usize,
    ) -> Result<Vec<Labels>, FrameError> {
        debug_assert_eq!(input.len(), batch * self.input_len());
        let raw = self.engine.run(worker, input, batch).map_err(FrameError::Inference)?;
        debug_assert_eq!(raw.len(), self.manifest.output_names().len(), "one vector per output");
        let classes = self.labels.len();
        // Values of each output per image.
        let per_image = raw
            .iter()
            .map(|output| {
                let n = output.len();
                n.is_multiple_of(batch).then_some(n / batch).ok_or_else(|| {
                    FrameError::Inference(format!(
                        "the model returned {n} values for {batch} images"
                    ))
                })
            })
            .collect::<Result<Vec<usize>, _>>()?;
        match (self.manifest.kind, &self.manifest.detection) {
            (Kind::Detection, Some(detection)) => {
                let (scores, boxes) = (&raw[0], &raw[1]);
                let (anchors, box_anchors) = (per_image[0] / classes, per_image[1] / 4);
                if per_image[0] != anchors * classes || box_anchors != anchors {
                    return Err(FrameError::Inference(format!(
                        "the model returned {} scores and {} box values per image for {classes} \
                         classes",
                        per_image[0], per_image[1]
                    )));
                }
                let named: Vec<bool> = self.labels.iter().map(Option::is_some).collect();
                let settings = detection.settings();
                Ok(scores
                    .chunks_exact(per_image[0])
                    .zip(boxes.chunks_exact(per_image[1]))
                    .map(|(s, b)| {
                        let found = detect::detect(s, b, classes, &named, &settings);
                        self.objects(&found, k)
                    })
                    .collect())
            }
            _ => {
                if per_image[0] != classes {
                    return Err(FrameError::Inference(format!(
                        "the model returned {} values per image for {classes} classes",
                        per_image[0]
                    )));
                }
                let softmax_wanted = self.manifest.output.as_ref().is_some_and(|o| o.softmax);
                Ok(raw[0]
                    .chunks_exact(classes)
                    .map(|scores| {
                        let mut scores = scores.to_vec();
                        if softmax_wanted {
                            softmax(&mut scores);
                        }
                        Labels { top: self.top_k(&scores, k), objects: Vec::new() }
                    })
                    .collect())
            }
        }
    }

    /// Runs the model on one prepared image; see [`Model::infer_batch`].
    pub fn infer(&self, input: &[f32], k: usize) -> Result<Labels, FrameError> {
        Ok(self.infer_batch(0, input, 1, k)?.remove(0))
    }

    fn scored(&self, class_id: u32, score: f32) -> Scored {
        let name = self.labels[class_id as usize].clone().unwrap_or_default();
        Scored { class_id, name, score }
    }

    /// The `k` best classes of a classifier.
    fn top_k(&self, scores: &[f32], k: usize) -> Vec<Scored> {
        let mut idx: Vec<usize> = (0..scores.len()).collect();
        idx.sort_unstable_by(|a, b| scores[*b].total_cmp(&scores[*a]));
        idx.into_iter().take(k).map(|i| self.scored(i as u32, scores[i])).collect()
    }

    /// A detector's objects, and the best score of each class found as its top `k`.
    fn objects(&self, found: &[detect::Found], k: usize) -> Labels {
        let top = detect::best_per_class(found)
            .into_iter()
            .take(k)
            .map(|(class_id, score)| self.scored(class_id, score))
            .collect();
        let objects = found
            .iter()
            .map(|f| Object { label: self.scored(f.class_id, f.score), bbox: f.bbox })
            .collect();
        Labels { top, objects }
    }

    /// Decode, preprocess and infer one JPEG, timing each stage; see [`Model::infer_batch`].
    pub fn label(
        &self,
        bytes: &[u8],
        k: usize,
        limits: &FrameLimits,
    ) -> Result<(Labels, StageTimes), FrameError> {
        let t0 = Instant::now();
        let img = Self::decode(bytes, limits)?;
        let t1 = Instant::now();
        let input = self.preprocess(&img);
        let t2 = Instant::now();
        let labels = self.infer(&input, k)?;
        let t3 = Instant::now();
        let times = StageTimes { decode: t1 - t0, preprocess: t2 - t1, inference: t3 - t2 };
        Ok((labels, times))
    }
}

/// The manifest's own consistency: the sections its kind needs, sizes and thresholds.
fn check_manifest(manifest: &Manifest) -> Result<(), String> {
    let (h, w) = frame::input_hw(manifest)?;
    let p = &manifest.preprocess;
    match (p.resize, p.resize_shorter) {
        (Resize::Crop, None) => {
            return Err("resize = \"crop\" (the default) needs resize_shorter".into());
        }
        (Resize::Crop, Some(shorter)) if shorter < h.max(w) as u32 => {
            return Err(format!(
                "resize_shorter = {shorter} is smaller than the input size {h}x{w}"
            ));
        }
        (Resize::Stretch, Some(_)) => {
            return Err("resize_shorter applies to resize = \"crop\", not \"stretch\"".into());
        }
        _ => {}
    }
    if p.std.contains(&0.0) {
        return Err("std must not be 0".into());
    }
    match manifest.kind {
        Kind::Classification => {
            if manifest.output.is_none() {
                return Err("kind = \"classification\" needs an [output] section".into());
            }
            if manifest.detection.is_some() {
                return Err("[detection] applies to kind = \"detection\"".into());
            }
        }
        Kind::Detection => {
            let Some(d) = &manifest.detection else {
                return Err("kind = \"detection\" needs a [detection] section naming the scores \
                            and boxes outputs"
                    .into());
            };
            if manifest.output.is_some() {
                return Err("[output] applies to kind = \"classification\"; a detector's outputs \
                            are named in [detection]"
                    .into());
            }
            if p.resize != Resize::Stretch {
                return Err("kind = \"detection\" needs resize = \"stretch\": boxes are read as \
                            fractions of the whole frame"
                    .into());
            }
            if d.scores == d.boxes {
                return Err("[detection] scores and boxes name the same output".into());
            }
            if !(0.0..=1.0).contains(&d.score_threshold) {
                return Err(format!("score_threshold = {} is not in 0..=1", d.score_threshold));
            }
            if !(d.iou_threshold > 0.0 && d.iou_threshold <= 1.0) {
                return Err(format!("iou_threshold = {} is not in (0, 1]", d.iou_threshold));
            }
            if d.max_detections == 0 {
                return Err("max_detections must be at least 1".into());
            }
        }
    }
    Ok(())
}

/// A labels file: `id<TAB>label` lines when every line is one (a detector's ids have gaps),
/// else one label per line, line number = class id.
fn parse_labels(text: &str) -> Vec<Option<String>> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let with_ids: Option<Vec<(usize, &str)>> = lines
        .iter()
        .map(|l| {
            let (id, name) = l.split_once('\t')?;
            Some((id.trim().parse().ok()?, name.trim()))
        })
        .collect();
    match with_ids {
        Some(pairs) if !pairs.is_empty() => {
            let len = pairs.iter().map(|(id, _)| id + 1).max().unwrap_or(0);
            let mut labels = vec![None; len];
            for (id, name) in pairs {
                labels[id] = Some(name.to_owned());
            }
            labels
        }
        _ => text.lines().map(|l| Some(l.trim().to_owned())).collect(),
    }
}

/// A detector's class count, from the shapes of its outputs (scores, boxes; batch of one):
/// the scores' last dimension; the boxes must hold 4 values for each of the scores' anchors.
fn detection_classes(manifest: &Manifest, shapes: &[Vec<usize>]) -> Result<usize, String> {
    let names = manifest.output_names();
    let (scores, boxes) = (&shapes[0], &shapes[1]);
    let classes = scores.last().copied().unwrap_or(0);
    let per_image: usize = scores.iter().product();
    if scores.len() < 2 || classes < 2 {
        return Err(format!(
            "scores output {:?} has shape {scores:?}, not [1, anchors, classes]",
            names[0]
        ));
    }
    let anchors = per_image / classes;
    let box_values: usize = boxes.iter().product();
    if boxes.last() != Some(&4) || box_values != anchors * 4 {
        return Err(format!(
            "boxes output {:?} has shape {boxes:?}, not 4 values for each of the {anchors} anchors \
             of scores output {:?} {scores:?}",
            names[1], names[0]
        ));
    }
    Ok(classes)
}

fn softmax(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in v.iter_mut() {
        *x /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut v = vec![1.0, 3.0, 2.0];
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(v[1] > v[2] && v[2] > v[0]);
    }
}
