//! The engines that run the ONNX graph: tract (pure Rust, always built) and ONNX Runtime
//! (the `onnxruntime` cargo feature; the shared library is loaded at run time).
//!
//! An engine runs a batch of preprocessed images laid out one after another and returns the
//! model's raw outputs named by the manifest (a classifier's scores; a detector's scores and
//! boxes), in the manifest's order, each with the values of every image one after another. Each predictor worker has its own run state
//! (tract) or session (ONNX Runtime), chosen by the worker's index, so workers never wait for
//! each other.

mod tract;

#[cfg(feature = "onnxruntime")]
mod onnxruntime;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::{Manifest, ModelError};

/// Which engine runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Pure Rust, in every build.
    Tract,
    /// ONNX Runtime, loaded from its shared library (builds with the `onnxruntime` feature).
    Onnxruntime,
}

impl BackendKind {
    /// The name used on the command line and in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tract => "tract",
            Self::Onnxruntime => "onnxruntime",
        }
    }
}

/// Where ONNX Runtime runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ExecutionProvider {
    /// The CPU (every build of the library).
    #[default]
    Cpu,
    /// NVIDIA GPUs: needs a library built with CUDA (the `onnxruntime-gpu` wheel) and a GPU.
    Cuda,
    /// Intel CPUs, GPUs and NPUs: needs a library built with OpenVINO (`onnxruntime-openvino`).
    Openvino,
}

impl ExecutionProvider {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Openvino => "openvino",
        }
    }
}

/// How to run the model.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineOptions {
    /// The engine; `None`: the manifest's `backend`, else tract.
    pub backend: Option<BackendKind>,
    /// Runs that may happen at once (one per predictor worker).
    pub workers: usize,
    /// Threads one run may use (ONNX Runtime's intra-op threads; tract uses one).
    pub threads: usize,
    /// Most images per run (ONNX Runtime, when the model takes a batch dimension).
    pub batch: usize,
    /// ONNX Runtime's execution provider.
    pub execution_provider: ExecutionProvider,
    /// The ONNX Runtime shared library: a path, or a file name the dynamic loader looks up.
    pub onnxruntime_library: PathBuf,
}

impl Default for EngineOptions {
    /// The manifest's backend, one worker, one thread, one image per run, on the CPU.
    fn default() -> Self {
        Self {
            backend: None,
            workers: 1,
            threads: 1,
            batch: 1,
            execution_provider: ExecutionProvider::Cpu,
            onnxruntime_library: PathBuf::from(DEFAULT_ONNXRUNTIME_LIBRARY),
        }
    }
}

impl EngineOptions {
    /// The defaults, on `backend`.
    pub fn new(backend: BackendKind) -> Self {
        Self { backend: Some(backend), ..Self::default() }
    }
}

/// The library name looked up by the dynamic loader when `ORT_DYLIB_PATH` is not set.
pub const DEFAULT_ONNXRUNTIME_LIBRARY: &str = "libonnxruntime.so";

/// A loaded model, ready to run on any worker.
pub(crate) trait Engine: Send + Sync + std::fmt::Debug {
    /// Runs `batch` images (`input` holds them one after another) on worker `worker`'s state;
    /// returns each output the manifest names (in its order) with the values of each image
    /// one after another.
    fn run(&self, worker: usize, input: &[f32], batch: usize) -> Result<Vec<Vec<f32>>, String>;

    /// The most images one run takes.
    fn max_batch(&self) -> usize;
}

/// What the engine found in the graph, for checks against the manifest.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) engine: Box<dyn Engine>,
    /// The shape of each output the manifest names, for a batch of one.
    pub(crate) outputs: Vec<Vec<usize>>,
}

/// Loads `model` (the ONNX file named by `manifest`) into `backend`.
pub(crate) fn load(
    manifest: &Manifest,
    model: &Path,
    backend: BackendKind,
    options: &EngineOptions,
) -> Result<Loaded, ModelError> {
    if backend == BackendKind::Tract {
        if options.threads > 1 || options.batch > 1 {
            return Err(ModelError::Options(
                "--threads and --batch apply to the onnxruntime backend; tract runs each frame \
                 on one thread, one frame per run (use --workers to label several frames at \
                 once)"
                    .into(),
            ));
        }
        if options.execution_provider != ExecutionProvider::Cpu {
            return Err(ModelError::Options(format!(
                "--execution-provider {} needs --backend onnxruntime",
                options.execution_provider.as_str()
            )));
        }
    }
    match backend {
        BackendKind::Tract => tract::load(manifest, model, options),
        #[cfg(feature = "onnxruntime")]
        BackendKind::Onnxruntime => onnxruntime::load(manifest, model, options),
        #[cfg(not(feature = "onnxruntime"))]
        BackendKind::Onnxruntime => Err(ModelError::Options(
            "this build has no ONNX Runtime backend: build with `--features onnxruntime` \
             (see README, \"The predictor\")"
                .into(),
        )),
    }
}

/// The graph's input must be the manifest's, and each output the manifest names must be one of
/// the graph's; returns their positions among the graph's outputs, in the manifest's order.
fn check_names(
    manifest: &Manifest,
    model: &Path,
    inputs: &[String],
    outputs: &[String],
) -> Result<Vec<usize>, ModelError> {
    if inputs != [manifest.input.name.clone()] {
        return Err(ModelError::Mismatch {
            model: model.to_owned(),
            message: format!("inputs are {inputs:?}, the manifest says {:?}", manifest.input.name),
        });
    }
    manifest
        .output_names()
        .into_iter()
        .map(|name| {
            outputs.iter().position(|o| o == name).ok_or_else(|| ModelError::Mismatch {
                model: model.to_owned(),
                message: format!(
                    "the manifest names output {name:?}, the graph's outputs are {outputs:?}"
                ),
            })
        })
        .collect()
}

/// The graph's declared input shape (`None`: a dimension it leaves open) must fit the
/// manifest's; the batch dimension is not compared.
fn check_input_shape(
    manifest: &Manifest,
    model: &Path,
    declared: &[Option<usize>],
) -> Result<(), ModelError> {
    let want = manifest.input.shape;
    let fits = declared.len() == want.len()
        && declared.iter().zip(want).skip(1).all(|(d, w)| d.is_none_or(|d| d == w));
    if fits {
        return Ok(());
    }
    let dims: Vec<String> =
        declared.iter().map(|d| d.map_or_else(|| "?".to_owned(), |d| d.to_string())).collect();
    Err(ModelError::Mismatch {
        model: model.to_owned(),
        message: format!(
            "input {:?} has shape [{}], the manifest says {want:?}",
            manifest.input.name,
            dims.join(", ")
        ),
    })
}
