//! The shipped detector (SSDLite-MobileNetV2, COCO) on the sample photos, against the boxes its
//! PROVENANCE.md gives, and the checks that refuse a detector's manifest that does not fit.

mod common;

use std::{fs, path::Path};

use lookout_predictor::{
    BackendKind, EngineOptions, FrameLimits,
    model::{Labels, Model, ModelError},
};

const LIMITS: FrameLimits = FrameLimits { max_pixels: 40_000_000, max_aspect_ratio: 20.0 };

/// How far a box edge may be from the provenance's, in frame pixels: the provenance resized
/// with another library and ran ONNX Runtime on the PNG; here the frame is a JPEG.
const TOLERANCE_PX: f32 = 5.0;

fn detector_dir() -> std::path::PathBuf {
    common::repo("models/ssdlite-mobilenet-v2-coco")
}

fn detector() -> Model {
    Model::load(&detector_dir()).expect("the shipped detector loads")
}

fn detect(model: &Model, photo: &str) -> (Labels, u32, u32) {
    let (jpeg, w, h) = common::sample_jpeg(photo);
    let (labels, _) = model.label(&jpeg, 5, &LIMITS).expect("labelled");
    (labels, w, h)
}

/// The object labelled `name`, its box in frame pixels `[x1, y1, x2, y2]`.
fn find(labels: &Labels, name: &str, (w, h): (u32, u32)) -> (f32, [f32; 4]) {
    let o = labels
        .objects
        .iter()
        .find(|o| o.label.name == name)
        .unwrap_or_else(|| panic!("no {name} among {:?}", labels.objects));
    let (w, h) = (w as f32, h as f32);
    (o.label.score, [o.bbox.xmin * w, o.bbox.ymin * h, o.bbox.xmax * w, o.bbox.ymax * h])
}

fn assert_box_near(got: [f32; 4], want: [f32; 4], what: &str) {
    eprintln!("{what}: box {got:?}, provenance {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= TOLERANCE_PX, "{what}: box {got:?}, expected about {want:?}");
    }
}

fn assert_provenance_detections(model: &Model) {
    let (cat, w, h) = detect(model, "chelsea.png");
    assert_eq!((w, h), (451, 300));
    let (score, bbox) = find(&cat, "cat", (w, h));
    assert!(score > 0.85, "cat scores {score}");
    assert_box_near(bbox, [1.0, 3.0, 403.0, 298.0], "cat");
    assert_eq!(cat.top[0].name, "cat", "the best class is the cat: {:?}", cat.top);

    let (coffee, w, h) = detect(model, "coffee.png");
    let (score, bbox) = find(&coffee, "cup", (w, h));
    assert!(score > 0.85, "cup scores {score}");
    assert_box_near(bbox, [173.0, 23.0, 415.0, 254.0], "cup");
    let (score, bbox) = find(&coffee, "dining table", (w, h));
    assert!(score > 0.5, "dining table scores {score}");
    assert_box_near(bbox, [0.0, 3.0, 600.0, 396.0], "dining table");

    let (rocket, _, _) = detect(model, "rocket.jpg");
    assert!(rocket.objects.is_empty(), "nothing on the rocket photo: {:?}", rocket.objects);
    assert!(rocket.top.is_empty(), "no class found, no top-k: {:?}", rocket.top);
}

#[test]
fn the_cat_and_the_cup_are_boxed_where_the_provenance_says() {
    assert_provenance_detections(&detector());
}

#[test]
fn top_k_is_the_best_score_of_each_class_found() {
    let model = detector();
    let (coffee, _, _) = detect(&model, "coffee.png");
    assert!(!coffee.objects.is_empty());
    let names: Vec<&str> = coffee.top.iter().map(|s| s.name.as_str()).collect();
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "one entry per class: {names:?}");
    assert!(coffee.top.windows(2).all(|w| w[0].score >= w[1].score), "best first");
    for t in &coffee.top {
        let best = coffee
            .objects
            .iter()
            .filter(|o| o.label.class_id == t.class_id)
            .map(|o| o.label.score)
            .fold(f32::MIN, f32::max);
        assert_eq!(t.score, best, "{t:?} is the best {} box", t.name);
    }
    assert_eq!(coffee.top[0].name, "cup");
    // Every object passes the manifest's threshold and is in the frame.
    for o in &coffee.objects {
        assert!(o.label.score >= 0.3, "{o:?}");
        let b = o.bbox;
        assert!(0.0 <= b.xmin && b.xmin <= b.xmax && b.xmax <= 1.0, "{o:?}");
        assert!(0.0 <= b.ymin && b.ymin <= b.ymax && b.ymax <= 1.0, "{o:?}");
    }
}

/// The detector's manifest, edited, in a temporary folder beside links to the real files.
fn edited(edit: impl FnOnce(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let real = detector_dir();
    let manifest = fs::read_to_string(real.join("model.toml"))
        .unwrap()
        .replace("file = \"model.onnx\"", &format!("file = {:?}", real.join("model.onnx")))
        .replace("labels = \"labels.txt\"", &format!("labels = {:?}", real.join("labels.txt")));
    fs::write(dir.path().join("model.toml"), edit(manifest)).unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    let err = Model::load(dir).expect_err("the manifest is refused");
    assert!(
        err.to_string().contains("model.toml") || err.to_string().contains("model.onnx"),
        "the error names the file: {err}"
    );
    err.to_string()
}

#[test]
fn an_unknown_kind_is_refused_at_start() {
    let dir = edited(|m| m.replace("kind = \"detection\"", "kind = \"segmentation\""));
    let err = load_error(dir.path());
    assert!(err.contains("segmentation") && err.contains("detection"), "{err}");
}

#[test]
fn a_detector_without_its_outputs_is_refused() {
    let start = |m: &str| m.find("[detection]").unwrap();
    let dir = edited(|m| m[..start(&m)].to_owned());
    let err = load_error(dir.path());
    assert!(err.contains("needs a [detection] section"), "{err}");

    let dir = edited(|m| m.replace("\"Postprocessor/ExpandDims_1:0\"", "\"boxes\""));
    let err = load_error(dir.path());
    assert!(err.contains("\"boxes\"") && err.contains("Postprocessor/convert_scores:0"), "{err}");

    let dir = edited(|m| m.replace("score_threshold = 0.3", ""));
    let err = load_error(dir.path());
    assert!(err.contains("score_threshold"), "{err}");
}

#[test]
fn outputs_whose_shapes_do_not_fit_are_refused() {
    // Scores and boxes swapped: [1, 1917, 1, 4] is no scores output for 91 classes of labels.
    let dir = edited(|m| {
        m.replace("\"Postprocessor/convert_scores:0\"", "\"SCORES\"")
            .replace("\"Postprocessor/ExpandDims_1:0\"", "\"Postprocessor/convert_scores:0\"")
            .replace("\"SCORES\"", "\"Postprocessor/ExpandDims_1:0\"")
    });
    let err = Model::load(dir.path()).expect_err("refused");
    assert!(matches!(err, ModelError::Mismatch { .. }), "{err}");
    let err = err.to_string();
    assert!(err.contains("model.onnx") && err.contains("[1, 1917, 91]"), "{err}");
}

#[test]
fn an_input_shape_the_graph_does_not_take_is_refused() {
    let dir = edited(|m| {
        m.replace("shape = [1, 300, 300, 3]", "shape = [1, 3, 300, 300]")
            .replace("layout = \"NHWC\"", "layout = \"NCHW\"")
    });
    let err = Model::load(dir.path()).expect_err("refused");
    assert!(matches!(err, ModelError::Mismatch { .. }), "{err}");
    let err = err.to_string();
    assert!(err.contains("[1, 3, 300, 300]") && err.contains("300, 300, 3"), "{err}");
}

#[test]
fn a_detector_must_see_the_whole_frame() {
    let dir =
        edited(|m| m.replace("resize = \"stretch\"", "resize = \"crop\"\nresize_shorter = 320"));
    let err = load_error(dir.path());
    assert!(err.contains("resize = \"stretch\""), "{err}");
}

#[test]
fn labels_beyond_the_scores_are_refused() {
    let dir = edited(|m| m);
    let labels = fs::read_to_string(detector_dir().join("labels.txt")).unwrap() + "95\tunicorn\n";
    fs::write(dir.path().join("labels.txt"), labels).unwrap();
    let manifest = fs::read_to_string(dir.path().join("model.toml")).unwrap();
    let real_labels = format!("labels = {:?}", detector_dir().join("labels.txt"));
    fs::write(
        dir.path().join("model.toml"),
        manifest.replace(&real_labels, "labels = \"labels.txt\""),
    )
    .unwrap();
    let err = Model::load(dir.path()).expect_err("refused").to_string();
    assert!(err.contains("class id 95") && err.contains("91 classes"), "{err}");
}

#[test]
fn tract_refuses_batches_for_the_detector_too() {
    let options = EngineOptions { batch: 2, ..EngineOptions::new(BackendKind::Tract) };
    let err = Model::load_with(&detector_dir(), &options).unwrap_err();
    assert!(err.to_string().contains("--batch"), "{err}");
}

/// The same detections from ONNX Runtime (needs `ORT_DYLIB_PATH`; see README).
#[cfg(feature = "onnxruntime")]
mod onnxruntime {
    use super::*;

    fn options() -> EngineOptions {
        common::onnxruntime_options()
    }

    #[test]
    fn onnxruntime_boxes_the_cat_and_the_cup_too() {
        let model = Model::load_with(&detector_dir(), &options()).expect("loads");
        assert_eq!(model.backend(), BackendKind::Onnxruntime);
        assert_provenance_detections(&model);
    }

    #[test]
    fn a_detector_graph_that_takes_no_batch_runs_frame_by_frame() {
        // The graph's reshapes are written for one image: --batch falls back to one per run.
        let options = EngineOptions { batch: 3, ..options() };
        let model = Model::load_with(&detector_dir(), &options).unwrap();
        assert_eq!(model.max_batch(), 1);
        assert_provenance_detections(&model);
    }
}
