//! ONNX models described by a manifest, run with tract.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use image::{DynamicImage, ImageDecoder as _, ImageReader, RgbImage};
use serde::Deserialize;
use tract_onnx::prelude::*;

/// Errors loading a model. Each names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The manifest could not be read.
    #[error("cannot read model manifest {path}: {source}")]
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
    #[error("cannot read labels file {path}: {source}")]
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
    /// tract could not load or optimise the model.
    #[error("cannot load ONNX model {model}: {message}")]
    Tract {
        /// ONNX path.
        model: PathBuf,
        /// tract's error chain.
        message: String,
    },
}

/// Why a frame could not be labelled.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The image is larger than the configured limit (checked before decoding).
    #[error("image of {width}x{height} exceeds the limit of {max_pixels} pixels")]
    TooLarge {
        /// Width from the header.
        width: u64,
        /// Height from the header.
        height: u64,
        /// The limit.
        max_pixels: u64,
    },
    /// The bytes are not a decodable image.
    #[error("cannot decode image: {0}")]
    Decode(String),
    /// tract failed.
    #[error("inference failed: {0}")]
    Inference(String),
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
    plan: Arc<TypedRunnableModel>,
    // Reused run states: no per-frame allocation of the plan's buffers.
    states: Mutex<Vec<TypedSimpleState>>,
    path: PathBuf,
}

type TypedSimpleState = tract_onnx::tract_core::plan::SimpleState<TypedFact, Box<dyn TypedOp>>;

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("path", &self.path)
            .field("labels", &self.labels.len())
            .finish()
    }
}

impl Model {
    /// Loads the manifest at `manifest_path` (or `model.toml` inside it, if it is a folder),
    /// the labels and the ONNX model, and checks that they agree.
    pub fn load(manifest_path: &Path) -> Result<Self, ModelError> {
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
        let (h, w) = input_hw(&manifest.input).map_err(invalid)?;
        if manifest.preprocess.resize_shorter < h.max(w) as u32 {
            return Err(invalid(format!(
                "resize_shorter = {} is smaller than the input size {h}x{w}",
                manifest.preprocess.resize_shorter
            )));
        }
        if manifest.preprocess.std.contains(&0.0) {
            return Err(invalid("std must not be 0".into()));
        }
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

        let tract = |e: TractError| ModelError::Tract {
            model: model_path.clone(),
            message: format!("{e:#}"),
        };
        let mut inference = tract_onnx::onnx().model_for_path(&model_path).map_err(tract)?;
        let input_names: Vec<String> = inference
            .input_outlets()
            .map_err(tract)?
            .iter()
            .map(|o| inference.node(o.node).name.clone())
            .collect();
        if input_names != [manifest.input.name.clone()] {
            return Err(ModelError::Mismatch {
                model: model_path,
                message: format!(
                    "inputs are {input_names:?}, the manifest says {:?}",
                    manifest.input.name
                ),
            });
        }
        inference =
            inference.with_input_fact(0, f32::fact(manifest.input.shape).into()).map_err(tract)?;
        let output_names: Vec<String> = inference
            .output_outlets()
            .map_err(tract)?
            .iter()
            .map(|o| {
                inference
                    .outlet_label(*o)
                    .map_or_else(|| inference.node(o.node).name.clone(), str::to_owned)
            })
            .collect();
        if output_names.first() != Some(&manifest.output.name) {
            return Err(ModelError::Mismatch {
                model: model_path,
                message: format!(
                    "outputs are {output_names:?}, the manifest says {:?}",
                    manifest.output.name
                ),
            });
        }
        let typed = inference.into_optimized().map_err(tract)?;
        let out_fact = typed.output_fact(0).map_err(tract)?;
        let outputs: usize =
            out_fact.shape.as_concrete().map(|s| s.iter().product()).ok_or_else(|| {
                ModelError::Mismatch {
                    model: model_path.clone(),
                    message: format!("output shape {:?} is not fixed", out_fact.shape),
                }
            })?;
        if outputs != labels.len() {
            return Err(ModelError::LabelCount {
                model: model_path,
                labels_path,
                labels: labels.len(),
                outputs,
            });
        }
        let plan = typed.into_runnable().map_err(tract)?;
        Ok(Self { manifest, labels, plan, states: Mutex::new(Vec::new()), path: model_path })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.labels.len()
    }

    /// Decodes an encoded image (JPEG, PNG), refusing images over `max_pixels` before decoding.
    pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, FrameError> {
        let reader = ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| FrameError::Decode(e.to_string()))?;
        let decoder = reader.into_decoder().map_err(|e| FrameError::Decode(e.to_string()))?;
        let (w, h) = decoder.dimensions();
        let (width, height) = (u64::from(w), u64::from(h));
        if width * height > max_pixels {
            return Err(FrameError::TooLarge { width, height, max_pixels });
        }
        let img =
            DynamicImage::from_decoder(decoder).map_err(|e| FrameError::Decode(e.to_string()))?;
        Ok(img.into_rgb8())
    }

    /// Resize, centre-crop and normalise into the input tensor.
    pub fn preprocess(&self, img: &RgbImage) -> Tensor {
        let p = &self.manifest.preprocess;
        let (h, w) = input_hw(&self.manifest.input).expect("validated at load");
        let (iw, ih) = img.dimensions();
        let scale = p.resize_shorter as f32 / iw.min(ih).max(1) as f32;
        let rw = ((iw as f32 * scale).round() as u32).max(w as u32);
        let rh = ((ih as f32 * scale).round() as u32).max(h as u32);
        let resized = resize(img, rw, rh, p.filter);
        let (x0, y0) = (((rw - w as u32) / 2) as usize, ((rh - h as u32) / 2) as usize);
        let stride = rw as usize * 3;
        let mut data = vec![0f32; 3 * h * w];
        let bgr = self.manifest.input.color == Color::BGR;
        let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / p.std[c]);
        let channels: [(usize, f32, f32); 3] =
            std::array::from_fn(|c| (if bgr { 2 - c } else { c }, p.mean[c], scale[c]));
        for y in 0..h {
            let row = &resized[(y0 + y) * stride + x0 * 3..][..w * 3];
            for (x, px) in row.chunks_exact(3).enumerate() {
                for (c, (src, mean, scale)) in channels.iter().enumerate() {
                    let v = (f32::from(px[*src]) - mean) * scale;
                    let i = match self.manifest.input.layout {
                        Layout::NCHW => c * h * w + y * w + x,
                        Layout::NHWC => (y * w + x) * 3 + c,
                    };
                    data[i] = v;
                }
            }
        }
        Tensor::from_shape(&self.manifest.input.shape, &data).expect("shape matches data length")
    }

    /// Runs the model on a prepared tensor and returns the probability of each class.
    pub fn infer(&self, input: Tensor) -> Result<Vec<f32>, FrameError> {
        let state = self.states.lock().expect("not poisoned").pop();
        let mut state = match state {
            Some(s) => s,
            None => self.plan.spawn().map_err(|e| FrameError::Inference(format!("{e:#}")))?,
        };
        let outputs =
            state.run(tvec!(input.into())).map_err(|e| FrameError::Inference(format!("{e:#}")))?;
        self.states.lock().expect("not poisoned").push(state);
        let view = outputs[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| FrameError::Inference(format!("{e:#}")))?;
        let mut scores: Vec<f32> = view.iter().copied().collect();
        if self.manifest.output.softmax {
            softmax(&mut scores);
        }
        Ok(scores)
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

    /// Decode, preprocess and infer one encoded image, timing each stage.
    pub fn classify(
        &self,
        bytes: &[u8],
        k: usize,
        max_pixels: u64,
    ) -> Result<(Vec<Scored>, StageTimes), FrameError> {
        let t0 = Instant::now();
        let img = Self::decode(bytes, max_pixels)?;
        let t1 = Instant::now();
        let input = self.preprocess(&img);
        let t2 = Instant::now();
        let scores = self.infer(input)?;
        let t3 = Instant::now();
        let times = StageTimes { decode: t1 - t0, preprocess: t2 - t1, inference: t3 - t2 };
        Ok((self.top_k(&scores, k), times))
    }
}

/// Resizes RGB pixels with SIMD convolution (fast_image_resize); returns the packed RGB bytes.
fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> Vec<u8> {
    use fast_image_resize::{
        FilterType as F, PixelType, ResizeAlg, ResizeOptions, Resizer, images,
    };
    let alg = match filter {
        Filter::Nearest => ResizeAlg::Nearest,
        Filter::Triangle => ResizeAlg::Convolution(F::Bilinear),
        Filter::CatmullRom => ResizeAlg::Convolution(F::CatmullRom),
        Filter::Gaussian => ResizeAlg::Convolution(F::Gaussian),
        Filter::Lanczos3 => ResizeAlg::Convolution(F::Lanczos3),
    };
    let (iw, ih) = img.dimensions();
    let src = images::ImageRef::new(iw, ih, img.as_raw(), PixelType::U8x3)
        .expect("an RgbImage's buffer matches its size");
    let mut dst = images::Image::new(width, height, PixelType::U8x3);
    Resizer::new()
        .resize(&src, &mut dst, &ResizeOptions::new().resize_alg(alg))
        .expect("same pixel type on both sides");
    dst.into_vec()
}

fn input_hw(input: &Input) -> Result<(usize, usize), String> {
    let s = input.shape;
    match input.layout {
        Layout::NCHW if s[0] == 1 && s[1] == 3 => Ok((s[2], s[3])),
        Layout::NHWC if s[0] == 1 && s[3] == 3 => Ok((s[1], s[2])),
        _ => {
            Err(format!("input shape {s:?} is not a single 3-channel image in {:?}", input.layout))
        }
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
