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

/// Runs the three sample photos as one batch and one by one: the same scores.
pub fn assert_batch_matches_single(model: &lookout_predictor::model::Model) {
    use lookout_predictor::{FrameLimits, model::Model};
    let limits = FrameLimits { max_pixels: 40_000_000, max_aspect_ratio: 20.0 };
    let inputs: Vec<Vec<f32>> = ["chelsea.png", "coffee.png", "rocket.jpg"]
        .iter()
        .map(|p| model.preprocess(&Model::decode(&sample_jpeg(p).0, &limits).unwrap()))
        .collect();
    let batch = model.infer_batch(1, &inputs.concat(), inputs.len()).unwrap();
    for (input, batched) in inputs.iter().zip(&batch) {
        let single = model.infer(input).unwrap();
        let diff = single.iter().zip(batched).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4, "batched scores differ by {diff}");
    }
}
