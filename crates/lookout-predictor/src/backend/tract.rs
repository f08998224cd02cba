//! tract: the graph is loaded, typed and optimised once; each worker keeps its own run state
//! so a frame allocates no plan buffers. tract runs one frame per run: a plan optimised with a
//! symbolic batch dimension ran EfficientNet-Lite0 six times slower per frame than the plan for
//! one frame (BENCHMARKS.md), so `--batch` is not offered for tract.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use tract_onnx::{prelude::*, tract_core::internal::DimLike as _, tract_hir::infer::Factoid as _};

use super::{Engine, EngineOptions, Loaded};
use crate::model::{Manifest, ModelError};

type Plan = Arc<TypedRunnableModel>;
type State = tract_onnx::tract_core::plan::SimpleState<TypedFact, Box<dyn TypedOp>>;

/// One plan and a run state per worker.
struct Runner {
    plan: Plan,
    states: Vec<Mutex<Option<State>>>,
}

impl Runner {
    fn new(plan: Plan, workers: usize) -> Self {
        Self { plan, states: (0..workers.max(1)).map(|_| Mutex::new(None)).collect() }
    }

    fn run(&self, worker: usize, input: Tensor) -> Result<TVec<TValue>, String> {
        let slot = &self.states[worker % self.states.len()];
        // A run that panicked left its state behind: start from a fresh one.
        let mut guard = slot.lock().unwrap_or_else(|poisoned| {
            let mut g = poisoned.into_inner();
            *g = None;
            g
        });
        let state = match guard.as_mut() {
            Some(s) => s,
            None => guard.insert(self.plan.spawn().map_err(|e| format!("{e:#}"))?),
        };
        let outputs = state.run(tvec!(input.into())).map_err(|e| format!("{e:#}"))?;
        drop(guard);
        Ok(outputs)
    }
}

struct TractEngine {
    runner: Runner,
    /// `[1, …]`: the input shape of one image.
    shape: [usize; 4],
}

impl std::fmt::Debug for TractEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractEngine").field("workers", &self.runner.states.len()).finish()
    }
}

impl Engine for TractEngine {
    fn run(&self, worker: usize, input: &[f32], batch: usize) -> Result<Vec<Vec<f32>>, String> {
        debug_assert_eq!(batch, 1, "tract runs one frame at a time");
        let tensor = Tensor::from_shape(&self.shape, input).map_err(|e| format!("{e:#}"))?;
        let outputs = self.runner.run(worker, tensor)?;
        outputs
            .iter()
            .map(|output| {
                let view = output.to_plain_array_view::<f32>().map_err(|e| format!("{e:#}"))?;
                Ok(view.iter().copied().collect())
            })
            .collect()
    }

    fn max_batch(&self) -> usize {
        1
    }
}

pub(super) fn load(
    manifest: &Manifest,
    model_path: &Path,
    options: &EngineOptions,
) -> Result<Loaded, ModelError> {
    let tract = |e: TractError| ModelError::Engine {
        model: model_path.to_owned(),
        backend: "tract",
        message: format!("{e:#}"),
    };
    let proto = tract_onnx::onnx().proto_model_for_path(model_path).map_err(tract)?;
    let inference = tract_onnx::onnx().model_for_proto_model(&proto).map_err(tract)?;
    let input_names: Vec<String> = inference
        .input_outlets()
        .map_err(tract)?
        .iter()
        .map(|o| inference.node(o.node).name.clone())
        .collect();
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
    let wanted = super::check_names(manifest, model_path, &input_names, &output_names)?;
    let declared = &inference.input_fact(0).map_err(tract)?.shape;
    if !declared.is_open() {
        let dims: Vec<Option<usize>> =
            declared.dims().map(|d| d.concretize().and_then(|d| d.to_usize().ok())).collect();
        super::check_input_shape(manifest, model_path, &dims)?;
    }
    // Only the outputs the manifest names are computed, in its order.
    let outlets = inference.output_outlets().map_err(tract)?;
    let selected: Vec<OutletId> = wanted.iter().map(|i| outlets[*i]).collect();

    let shape = manifest.input.shape;
    let single = inference
        .clone()
        .with_output_outlets(&selected)
        .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
        .map_err(tract)?;
    let single = single.into_optimized().map_err(tract)?;
    let outputs = (0..selected.len())
        .map(|i| {
            let fact = single.output_fact(i).map_err(tract)?;
            fact.shape.as_concrete().map(<[usize]>::to_vec).ok_or_else(|| ModelError::Mismatch {
                model: model_path.to_owned(),
                message: format!(
                    "output {:?} has no fixed shape: {:?}",
                    output_names[wanted[i]], fact.shape
                ),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let runner = Runner::new(single.into_runnable().map_err(tract)?, options.workers);

    Ok(Loaded { engine: Box::new(TractEngine { runner, shape }), outputs })
}
