//! The real model on the sample photos, and manifest validation.

mod common;

use std::fs;

use lookout_predictor::{
    BackendKind, EngineOptions, FrameLimits,
    model::{Model, ModelError},
};

const LIMITS: FrameLimits = FrameLimits { max_pixels: 40_000_000, max_aspect_ratio: 20.0 };

fn model() -> Model {
    Model::load(&common::manifest()).expect("the shipped model loads")
}

#[test]
fn the_cat_is_a_cat_and_the_coffee_is_espresso() {
    let model = model();
    let (cat, _, _) = common::sample_jpeg("chelsea.png");
    let (labels, _) = model.label(&cat, 3, &LIMITS).unwrap();
    assert!(labels.objects.is_empty(), "a classifier finds no objects");
    let top = labels.top;
    let names: Vec<&str> = top.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.iter().any(|n| ["tiger cat", "Egyptian cat", "tabby", "tabby cat"].contains(n)),
        "a cat class in the top 3: {top:?}"
    );
    let (coffee, _, _) = common::sample_jpeg("coffee.png");
    let (labels, times) = model.label(&coffee, 5, &LIMITS).unwrap();
    let top = labels.top;
    assert_eq!(top[0].name, "espresso", "{top:?}");
    assert!(top[0].score > 0.8, "{top:?}");
    assert!(top.windows(2).all(|w| w[0].score >= w[1].score), "sorted best first");
    assert!(!times.inference.is_zero());
}

#[test]
fn corrupt_and_oversized_images_are_refused() {
    let model = model();
    let err = model.label(b"\xff\xd8\xff\xe0 definitely not a jpeg", 5, &LIMITS).unwrap_err();
    assert!(err.to_string().contains("decode"), "{err}");
    let (cat, w, h) = common::sample_jpeg("chelsea.png");
    let limits = FrameLimits { max_pixels: u64::from(w * h) - 1, ..LIMITS };
    let err = model.label(&cat, 5, &limits).unwrap_err();
    assert!(err.to_string().contains(&format!("{w}x{h}")), "{err}");
}

#[test]
fn a_missing_model_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = fs::read_to_string(common::manifest()).unwrap();
    fs::write(dir.path().join("model.toml"), &manifest).unwrap();
    let err = Model::load(dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::ModelFileMissing { .. }), "{err}");
    assert!(
        err.to_string().contains(&dir.path().join("model.onnx").display().to_string()),
        "{err}"
    );
}

#[test]
fn labels_that_do_not_match_the_outputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = common::repo("models/efficientnet-lite0");
    let manifest = fs::read_to_string(common::manifest())
        .unwrap()
        .replace("file = \"model.onnx\"", &format!("file = {:?}", real.join("model.onnx")))
        .replace("labels = \"labels.txt\"", "labels = \"short.txt\"");
    fs::write(dir.path().join("model.toml"), manifest).unwrap();
    let labels: String = (0..999).map(|i| format!("class {i}\n")).collect();
    fs::write(dir.path().join("short.txt"), labels).unwrap();
    let err = Model::load(&dir.path().join("model.toml")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ModelError::LabelCount { labels: 999, outputs: 1000, .. }), "{text}");
    assert!(text.contains("short.txt") && text.contains("1000") && text.contains("999"), "{text}");
}

#[test]
fn a_broken_manifest_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("model.toml"), "name = \"x\"\nversoin = \"1\"\n").unwrap();
    let err = Model::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("versoin"), "{err}");
    let err = Model::load(&dir.path().join("nope.toml")).unwrap_err();
    assert!(err.to_string().contains("nope.toml"), "{err}");
}

#[test]
fn tract_refuses_options_it_cannot_honour() {
    let options = EngineOptions { threads: 2, ..EngineOptions::new(BackendKind::Tract) };
    let err = Model::load_with(&common::manifest(), &options).unwrap_err();
    assert!(err.to_string().contains("--workers"), "{err}");
}

#[test]
fn tract_labels_one_frame_per_run() {
    let options = EngineOptions { batch: 4, ..EngineOptions::new(BackendKind::Tract) };
    let err = Model::load_with(&common::manifest(), &options).unwrap_err();
    assert!(err.to_string().contains("--batch"), "{err}");
}

#[test]
fn the_manifest_chooses_the_backend_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let real = common::repo("models/efficientnet-lite0");
    let manifest = fs::read_to_string(common::manifest())
        .unwrap()
        .replace("file = \"model.onnx\"", &format!("file = {:?}", real.join("model.onnx")))
        .replace("labels = \"labels.txt\"", &format!("labels = {:?}", real.join("labels.txt")))
        .replace("# backend = \"tract\"", "backend = \"onnxruntime\"");
    fs::write(dir.path().join("model.toml"), manifest).unwrap();
    let told = Model::load_with(dir.path(), &EngineOptions::new(BackendKind::Tract)).unwrap();
    assert_eq!(told.backend(), BackendKind::Tract, "--backend wins over the manifest");
    let mut options = EngineOptions::default();
    if let Some(library) = std::env::var_os("ORT_DYLIB_PATH") {
        options.onnxruntime_library = library.into();
    }
    let from_manifest = Model::load_with(dir.path(), &options);
    #[cfg(feature = "onnxruntime")]
    assert_eq!(from_manifest.unwrap().backend(), BackendKind::Onnxruntime);
    #[cfg(not(feature = "onnxruntime"))]
    assert!(from_manifest.unwrap_err().to_string().contains("--features onnxruntime"));
}

#[cfg(not(feature = "onnxruntime"))]
#[test]
fn onnxruntime_needs_the_feature() {
    let err = Model::load_with(&common::manifest(), &EngineOptions::new(BackendKind::Onnxruntime))
        .unwrap_err();
    assert!(err.to_string().contains("--features onnxruntime"), "{err}");
}

/// The ONNX Runtime backend: these need the library (`ORT_DYLIB_PATH`, see README); without
/// it they fail, saying so.
#[cfg(feature = "onnxruntime")]
mod onnxruntime {
    use lookout_predictor::ExecutionProvider;

    use super::*;

    fn options() -> EngineOptions {
        common::onnxruntime_options()
    }

    #[test]
    fn both_backends_give_the_same_top5_on_the_sample_photos() {
        let tract = model();
        let ort = Model::load_with(&common::manifest(), &options())
            .expect("ONNX Runtime loads the shipped model");
        assert_eq!(ort.backend(), BackendKind::Onnxruntime);
        for photo in ["chelsea.png", "coffee.png", "rocket.jpg"] {
            let (jpeg, _, _) = common::sample_jpeg(photo);
            let (a, _) = tract.label(&jpeg, 5, &LIMITS).unwrap();
            let (b, _) = ort.label(&jpeg, 5, &LIMITS).unwrap();
            let (a, b) = (a.top, b.top);
            let names = |t: &[lookout_predictor::model::Scored]| {
                t.iter().map(|s| s.name.clone()).collect::<Vec<_>>()
            };
            assert_eq!(names(&a), names(&b), "{photo}: tract {a:?}, onnxruntime {b:?}");
            for (x, y) in a.iter().zip(&b) {
                assert!((x.score - y.score).abs() < 1e-3, "{photo}: {x:?} vs {y:?}");
            }
        }
    }

    #[test]
    fn onnxruntime_batches_like_single_frames() {
        let options = EngineOptions { batch: 4, threads: 2, workers: 2, ..options() };
        let model = Model::load_with(&common::manifest(), &options).unwrap();
        assert_eq!(model.max_batch(), 4, "the batch dimension is made symbolic");
        common::assert_batch_matches_single(&model);
    }

    #[test]
    fn an_execution_provider_the_library_lacks_is_an_error() {
        // The CPU wheel has no CUDA provider.
        let options = EngineOptions { execution_provider: ExecutionProvider::Cuda, ..options() };
        let err = Model::load_with(&common::manifest(), &options).unwrap_err();
        assert!(err.to_string().contains("cuda is not available"), "{err}");
    }

    #[test]
    fn a_missing_library_is_named() {
        // A separate process: the library is loaded once per process.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lookout-predictor"))
            .args([
                "--backend",
                "onnxruntime",
                "--onnxruntime-library",
                "/nonexistent/libonnxruntime.so",
            ])
            .args(["--model", common::manifest().to_str().unwrap(), "--no-ship-logs"])
            .args(["--brokers", "127.0.0.1:1"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("/nonexistent/libonnxruntime.so"), "{stderr}");
        assert!(stderr.contains("ORT_DYLIB_PATH"), "{stderr}");
    }
}
