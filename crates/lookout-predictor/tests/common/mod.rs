#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use image::codecs::jpeg::JpegEncoder;

pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

pub fn manifest() -> PathBuf {
    repo("models/efficientnet-lite0/model.toml")
}

/// A sample photo as JPEG bytes, with its size.
pub fn sample_jpeg(name: &str) -> (Vec<u8>, u32, u32) {
    let img = image::open(repo(&format!("samples/{name}"))).expect("sample opens").into_rgb8();
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(&mut buf, 90).encode_image(&img).expect("encodes");
    (buf, img.width(), img.height())
}

/// Runs the three sample photos as one batch and one by one: the same labels, scores and
/// boxes.
pub fn assert_batch_matches_single(model: &lookout_predictor::model::Model) {
    use lookout_predictor::{FrameLimits, model::Model};
    let limits = FrameLimits { max_pixels: 40_000_000, max_aspect_ratio: 20.0 };
    let inputs: Vec<Vec<f32>> = ["chelsea.png", "coffee.png", "rocket.jpg"]
        .iter()
        .map(|p| model.preprocess(&Model::decode(&sample_jpeg(p).0, &limits).unwrap()))
        .collect();
    let batch = model.infer_batch(1, &inputs.concat(), inputs.len(), 5).unwrap();
    for (input, batched) in inputs.iter().zip(&batch) {
        let single = model.infer(input, 5).unwrap();
        let names = |l: &lookout_predictor::model::Labels| {
            let top = l.top.iter().map(|s| s.class_id);
            top.chain(l.objects.iter().map(|o| o.label.class_id)).collect::<Vec<_>>()
        };
        assert_eq!(names(&single), names(batched), "{single:?} vs {batched:?}");
        let values = |l: &lookout_predictor::model::Labels| {
            let top = l.top.iter().map(|s| s.score);
            let objects = l
                .objects
                .iter()
                .flat_map(|o| [o.label.score, o.bbox.xmin, o.bbox.ymin, o.bbox.xmax, o.bbox.ymax]);
            top.chain(objects).collect::<Vec<_>>()
        };
        let diff = values(&single)
            .iter()
            .zip(&values(batched))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "batched scores differ by {diff}");
    }
}

/// ONNX Runtime's engine options, with the library `ORT_DYLIB_PATH` names: the tests of that
/// backend need it (see README), and fail saying so without it.
pub fn onnxruntime_options() -> lookout_predictor::EngineOptions {
    use lookout_predictor::{BackendKind, EngineOptions};
    let library = std::env::var_os("ORT_DYLIB_PATH")
        .expect("ORT_DYLIB_PATH must name libonnxruntime.so.* of the onnxruntime wheel (README)");
    EngineOptions {
        onnxruntime_library: library.into(),
        ..EngineOptions::new(BackendKind::Onnxruntime)
    }
}
