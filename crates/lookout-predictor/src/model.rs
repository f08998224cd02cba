//! ONNX models described by a manifest, run by one of the [`crate::backend`]s.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use image::RgbImage;
use serde::Deserialize;

pub use crate::frame::{FrameError, FrameLimits};
use crate::{
    backend::{self, BackendKind, Engine, EngineOptions},
    frame,
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
    /// Labels file (one per line, line number = class id), relative to the manifest.
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
    /// The output tensor.
    pub output: Output,
}

/// What the model outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One score per label.
    Classification,
    /// Boxes with labels (reserved; not supported yet).
    Detection,
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
    /// Resize the shorter side to this, then centre-crop to the input size.
    pub resize_shorter: u32,
    /// Resize filter.
    pub filter: Filter,
    /// Per-channel mean, pixel values 0..=255.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
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
    labels: Vec<String>,
    engine: Box<dyn Engine>,
    backend: BackendKind,
    path: PathBuf,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
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
        let invalid =
            |message: String| ModelError::Manifest { path: manifest_path.clone(), message };
        if manifest.kind != Kind::Classification {
            return Err(invalid("only kind = \"classification\" is supported".into()));
        }
        let (h, w) = frame::input_hw(&manifest).map_err(invalid)?;
        if manifest.preprocess.resize_shorter < h.max(w) as u32 {
            return Err(invalid(format!(
                "resize_shorter = {} is smaller than the input size {h}x{w}",
                manifest.preprocess.resize_shorter
            )));
        }
        if manifest.preprocess.std.contains(&0.0) {
            return Err(invalid("std must not be 0".into()));
        }
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
        let labels: Vec<String> = std::fs::read_to_string(&labels_path)
            .map_err(|source| ModelError::Labels { path: labels_path.clone(), source })?
            .lines()
            .map(|l| l.trim().to_owned())
            .collect();
        let backend = options.backend.or(manifest.backend).unwrap_or(BackendKind::Tract);
        let loaded = backend::load(&manifest, &model_path, backend, options)?;
        if loaded.outputs != labels.len() {
            return Err(ModelError::LabelCount {
                model: model_path,
                labels_path,
                labels: labels.len(),
                outputs: loaded.outputs,
            });
        }
        Ok(Self { manifest, labels, engine: loaded.engine, backend, path: model_path })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The number of classes.
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
    /// `worker`'s state, and returns the probabilities of each class, per image.
    pub fn infer_batch(
        &self,
        worker: usize,
        input: &[f32],
        batch: usize,
    ) -> Result<Vec<Vec<f32>>, FrameError> {
        debug_assert_eq!(input.len(), batch * self.input_len());
        let raw = self.engine.run(worker, input, batch).map_err(FrameError::Inference)?;
        let classes = self.labels.len();
        if raw.len() != batch * classes {
            return Err(FrameError::Inference(format!(
                "the model returned {} values for {batch} images of {classes} classes",
                raw.len()
            )));
        }
        Ok(raw
            .chunks_exact(classes)
            .map(|scores| {
                let mut scores = scores.to_vec();
                if self.manifest.output.softmax {
                    softmax(&mut scores);
                }
                scores
            })
            .collect())
    }

    /// Runs the model on one prepared image and returns the probability of each class.
    pub fn infer(&self, input: &[f32]) -> Result<Vec<f32>, FrameError> {
        Ok(self.infer_batch(0, input, 1)?.remove(0))
    }

    /// The `k` best classes.
    pub fn top_k(&self, scores: &[f32], k: usize) -> Vec<Scored> {
        let mut idx: Vec<usize> = (0..scores.len()).collect();
        idx.sort_unstable_by(|a, b| scores[*b].total_cmp(&scores[*a]));
        idx.into_iter()
            .take(k)
            .map(|i| Scored { class_id: i as u32, name: self.labels[i].clone(), score: scores[i] })
            .collect()
    }

    /// Decode, preprocess and infer one JPEG, timing each stage.
    pub fn classify(
        &self,
        bytes: &[u8],
        k: usize,
        limits: &FrameLimits,
    ) -> Result<(Vec<Scored>, StageTimes), FrameError> {
        let t0 = Instant::now();
        let img = Self::decode(bytes, limits)?;
        let t1 = Instant::now();
        let input = self.preprocess(&img);
        let t2 = Instant::now();
        let scores = self.infer(&input)?;
        let t3 = Instant::now();
        let times = StageTimes { decode: t1 - t0, preprocess: t2 - t1, inference: t3 - t2 };
        Ok((self.top_k(&scores, k), times))
    }
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
