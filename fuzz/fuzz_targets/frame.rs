//! The predictor's decode and preprocessing of arbitrary frame bytes with the shipped model:
//! a `FrameError`, or an input tensor of the model's size with finite values; never a panic
//! and never an allocation beyond the frame limits.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use lookout_predictor::{FrameLimits, model::Model};

static MODEL: LazyLock<Model> = LazyLock::new(|| {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/efficientnet-lite0/model.toml");
    Model::load(std::path::Path::new(manifest)).expect("the shipped model loads")
});

const LIMITS: FrameLimits = FrameLimits { max_pixels: 4_000_000, max_aspect_ratio: 20.0 };

fuzz_target!(|data: &[u8]| {
    let Ok(image) = Model::decode(data, &LIMITS) else { return };
    assert!(u64::from(image.width()) * u64::from(image.height()) <= LIMITS.max_pixels);
    let input = MODEL.preprocess(&image);
    assert_eq!(input.len(), MODEL.input_len());
    assert!(input.iter().all(|v| v.is_finite()));
});
