//! The real model on the sample photos, and manifest validation.

mod common;

use std::fs;

use lookout_predictor::model::{Model, ModelError};

fn model() -> Model {
    Model::load(&common::manifest()).expect("the shipped model loads")
}

#[test]
fn the_cat_is_a_cat_and_the_coffee_is_espresso() {
    let model = model();
    let (cat, _, _) = common::sample_jpeg("chelsea.png");
    let (top, _) = model.classify(&cat, 3, 40_000_000).unwrap();
    let names: Vec<&str> = top.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.iter().any(|n| ["tiger cat", "Egyptian cat", "tabby", "tabby cat"].contains(n)),
        "a cat class in the top 3: {top:?}"
    );
    let (coffee, _, _) = common::sample_jpeg("coffee.png");
    let (top, times) = model.classify(&coffee, 5, 40_000_000).unwrap();
    assert_eq!(top[0].name, "espresso", "{top:?}");
    assert!(top[0].score > 0.8, "{top:?}");
    assert!(top.windows(2).all(|w| w[0].score >= w[1].score), "sorted best first");
    assert!(!times.inference.is_zero());
}

#[test]
fn corrupt_and_oversized_images_are_refused() {
    let model = model();
    let err = model.classify(b"\xff\xd8\xff\xe0 definitely not a jpeg", 5, 40_000_000).unwrap_err();
    assert!(err.to_string().contains("decode"), "{err}");
    let (cat, w, h) = common::sample_jpeg("chelsea.png");
    let err = model.classify(&cat, 5, u64::from(w * h) - 1).unwrap_err();
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
