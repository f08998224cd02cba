//! ONNX Runtime through the `ort` crate, with the shared library loaded at run time (`ort`'s
//! `load-dynamic`): from `--onnxruntime-library` / `ORT_DYLIB_PATH`, else `libonnxruntime.so`
//! wherever the dynamic loader finds it. The `onnxruntime` wheel on PyPI ships the library as
//! `onnxruntime/capi/libonnxruntime.so.<version>` (README, "The predictor").
//!
//! Each worker has its own session (`ort` runs a session from one thread at a time), with
//! `threads` intra-op threads. With `batch > 1` the graph's declared batch dimension is made
//! symbolic in memory (`N`, on the first input and every output) and a batch of two is tried
//! at load; a graph that refuses it is loaded as it is, one frame per run.

use std::{
    path::Path,
    sync::{Mutex, OnceLock},
};

use ort::{
    ep,
    session::{Session, builder::GraphOptimizationLevel},
    value::TensorRef,
};
use prost::Message as _;
use tracing::{info, warn};
use tract_onnx::pb::{ModelProto, tensor_shape_proto::dimension::Value as Dim};

use super::{Engine, EngineOptions, ExecutionProvider, Loaded};
use crate::model::{Manifest, ModelError};

struct OrtEngine {
    sessions: Vec<Mutex<Session>>,
    input: String,
    /// The outputs the manifest names, in its order.
    outputs: Vec<String>,
    /// `[1, …]`: the input shape of one image.
    shape: [usize; 4],
    max_batch: usize,
}

impl std::fmt::Debug for OrtEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtEngine")
            .field("sessions", &self.sessions.len())
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

impl Engine for OrtEngine {
    fn run(&self, worker: usize, input: &[f32], batch: usize) -> Result<Vec<Vec<f32>>, String> {
        // A session is not left inconsistent by a panic in a run: keep using it.
        let mut session = self.sessions[worker % self.sessions.len()]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let outputs = run(&mut session, &self.input, &self.outputs, self.shape, input, batch)?;
        Ok(outputs.into_iter().map(|(_, values)| values).collect())
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }
}

/// One output of a run: its shape and values.
type OutputValues = (Vec<usize>, Vec<f32>);

/// Runs `batch` images; returns the shape and values of each output in `outputs`.
fn run(
    session: &mut Session,
    name: &str,
    outputs: &[String],
    shape: [usize; 4],
    input: &[f32],
    batch: usize,
) -> Result<Vec<OutputValues>, String> {
    let mut shape = shape;
    shape[0] = batch;
    let tensor = TensorRef::from_array_view((shape, input)).map_err(|e| e.to_string())?;
    let results = session.run(ort::inputs![name => tensor]).map_err(|e| e.to_string())?;
    outputs
        .iter()
        .map(|output| {
            let value =
                results.get(output.as_str()).ok_or_else(|| format!("no output {output:?}"))?;
            let (shape, values) = value.try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
            let shape = shape.iter().map(|d| usize::try_from(*d).unwrap_or(0)).collect();
            Ok((shape, values.to_vec()))
        })
        .collect()
}

/// Loads the library once per process.
fn init(library: &Path) -> Result<(), ModelError> {
    static LOADED: OnceLock<Result<String, String>> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| {
        let builder = ort::init_from(library).map_err(|e| e.to_string())?;
        builder.with_name("lookout-predictor").commit();
        Ok(library.display().to_string())
    });
    match loaded {
        Ok(_) => Ok(()),
        Err(message) => Err(ModelError::OnnxruntimeLibrary {
            library: library.to_owned(),
            message: message.clone(),
        }),
    }
}

pub(super) fn load(
    manifest: &Manifest,
    model_path: &Path,
    options: &EngineOptions,
) -> Result<Loaded, ModelError> {
    init(&options.onnxruntime_library)?;
    let fail = |message: String| ModelError::Engine {
        model: model_path.to_owned(),
        backend: "onnxruntime",
        message,
    };
    let bytes = std::fs::read(model_path).map_err(|e| fail(e.to_string()))?;
    let session = |bytes: &[u8]| open(bytes, options).map_err(&fail);

    let mut first = session(&bytes)?;
    let inputs: Vec<String> = first.inputs().iter().map(|o| o.name().to_owned()).collect();
    let outputs: Vec<String> = first.outputs().iter().map(|o| o.name().to_owned()).collect();
    let wanted = super::check_names(manifest, model_path, &inputs, &outputs)?;
    let outputs: Vec<String> = wanted.into_iter().map(|i| outputs[i].clone()).collect();
    let shape = manifest.input.shape;
    let probe = vec![0f32; shape[1..].iter().product()];
    let probed = run(&mut first, &inputs[0], &outputs, shape, &probe, 1).map_err(&fail)?;
    let lens: Vec<usize> = probed.iter().map(|(_, values)| values.len()).collect();

    let mut model = bytes;
    let mut max_batch = 1;
    if options.batch > 1 {
        match batched(&model, options, (&inputs[0], &outputs), shape, &lens) {
            Ok((patched, session)) => {
                info!(
                    backend = "onnxruntime",
                    max_batch = options.batch,
                    "the model takes batches"
                );
                model = patched;
                first = session;
                max_batch = options.batch;
            }
            Err(e) => {
                warn!(backend = "onnxruntime", error = %e, "the model does not take a batch dimension; one frame per run");
            }
        }
    }
    let mut sessions = vec![Mutex::new(first)];
    for _ in 1..options.workers.max(1) {
        sessions.push(Mutex::new(session(&model)?));
    }
    info!(
        backend = "onnxruntime",
        library = %options.onnxruntime_library.display(),
        execution_provider = options.execution_provider.as_str(),
        threads = options.threads,
        "ONNX Runtime loaded"
    );
    let engine = OrtEngine { sessions, input: inputs[0].clone(), outputs, shape, max_batch };
    let outputs = probed.into_iter().map(|(shape, _)| shape).collect();
    Ok(Loaded { engine: Box::new(engine), outputs })
}

/// A session on the model `bytes`, with the options' threads and execution provider. An
/// execution provider the library does not have is an error, not a silent fall-back to the CPU.
fn open(bytes: &[u8], options: &EngineOptions) -> Result<Session, String> {
    let threads = options.threads.max(1);
    let mut builder = Session::builder()
        .map_err(|e| e.to_string())?
        // Every graph optimisation, as Python's onnxruntime does by default.
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| e.to_string())?
        .with_intra_threads(threads)
        .map_err(|e| e.to_string())?
        .with_inter_threads(1)
        .map_err(|e| e.to_string())?
        // Spinning threads would burn the cores other workers and replicas label with.
        .with_intra_op_spinning(false)
        .map_err(|e| e.to_string())?;
    let provider = match options.execution_provider {
        ExecutionProvider::Cpu => None,
        ExecutionProvider::Cuda => Some(ep::CUDA::default().build().error_on_failure()),
        ExecutionProvider::Openvino => Some(ep::OpenVINO::default().build().error_on_failure()),
    };
    if let Some(provider) = provider {
        builder = builder.with_execution_providers([provider]).map_err(|e| {
            format!(
                "execution provider {} is not available in this ONNX Runtime library: {e}",
                options.execution_provider.as_str()
            )
        })?;
    }
    builder.commit_from_memory(bytes).map_err(|e| e.to_string())
}

/// The model with a symbolic batch dimension, and a session on it that ran a batch of two
/// (giving twice the values `lens` says one image gives, per output).
fn batched(
    bytes: &[u8],
    options: &EngineOptions,
    (input, outputs): (&str, &[String]),
    shape: [usize; 4],
    lens: &[usize],
) -> Result<(Vec<u8>, Session), String> {
    let mut proto = ModelProto::decode(bytes).map_err(|e| e.to_string())?;
    let graph = proto.graph.as_mut().ok_or("the file has no graph")?;
    let first_input = graph.input.iter_mut().find(|i| i.name == input).ok_or("no input")?;
    for value in std::iter::once(first_input).chain(graph.output.iter_mut()) {
        let dim = value
            .r#type
            .as_mut()
            .and_then(|t| match t.value.as_mut()? {
                tract_onnx::pb::type_proto::Value::TensorType(t) => t.shape.as_mut(),
            })
            .and_then(|s| s.dim.first_mut())
            .ok_or_else(|| format!("{} has no batch dimension", value.name))?;
        dim.value = Some(Dim::DimParam("N".into()));
    }
    let patched = proto.encode_to_vec();
    let mut session = open(&patched, options)?;
    let per_image: usize = shape[1..].iter().product();
    let out = run(&mut session, input, outputs, shape, &vec![0f32; 2 * per_image], 2)?;
    for ((name, (_, values)), len) in outputs.iter().zip(&out).zip(lens) {
        if values.len() != 2 * len {
            return Err(format!(
                "a batch of 2 gave {} values of {name}, not {}",
                values.len(),
                2 * len
            ));
        }
    }
    Ok((patched, session))
}
