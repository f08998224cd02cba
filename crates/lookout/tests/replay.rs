//! `lookout replay`: stored frames labelled again give what the live predictor gave, into a
//! topic of their own, and the replay stops by itself at the end of its range.

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use bytes::Bytes;
use lookout_bus::topics;
use lookout_predictor::PredictorArgs;
use lookout_proto::v1::{Encoding, Frame, Prediction};
use lookout_test_util::TestBus;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio_util::sync::CancellationToken;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

/// The sample photos as JPEG frames of `camera`, `per_photo` frames each.
fn frames(camera: &str, per_photo: u64, first: u64) -> Vec<Frame> {
    let mut out = Vec::new();
    for name in ["chelsea.png", "coffee.png", "rocket.jpg"] {
        let img = image::open(repo("samples").join(name)).unwrap().to_rgb8();
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
            .encode_image(&img)
            .unwrap();
        for _ in 0..per_photo {
            let sequence = first + out.len() as u64;
            out.push(Frame {
                camera_id: camera.into(),
                sequence,
                capture_time: Some(lookout_proto::timestamp(std::time::SystemTime::now())),
                width: img.width(),
                height: img.height(),
                encoding: Encoding::Jpeg.into(),
                data: Bytes::from(jpeg.clone()),
            });
        }
    }
    out
}

/// (sequence → top-1 label) of one camera's predictions.
fn top1(predictions: &[Prediction], camera: &str) -> BTreeMap<u64, (String, f32)> {
    predictions
        .iter()
        .filter(|p| p.camera_id == camera)
        .map(|p| {
            let best = p.top_k.first().expect("a labelled prediction");
            (p.frame_sequence, (best.name.clone(), best.score))
        })
        .collect()
}

#[test]
fn a_replay_with_the_live_model_gives_the_live_labels_and_stops_at_the_end() {
    let t = TestBus::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let from = OffsetDateTime::now_utc() - Duration::from_secs(1);
    let porch = frames("porch", 2, 1_000);
    let other = frames("attic", 1, 5_000);
    let live = rt.block_on(async {
        t.create_registry_topics().await;
        t.create_topic("replay.lookout.predictions", 3).await;
        let bus = t.bus("test-camera");
        let publisher = bus.publisher(&topics::FRAMES);
        for f in porch.iter().chain(&other) {
            publisher.send(f).await.unwrap();
        }

        // The live predictor labels them (every frame: none is too old).
        let collected = t.collect(topics::PREDICTIONS.name());
        let mut args = PredictorArgs::for_model(repo("models/efficientnet-lite0"));
        args.max_frame_age = Duration::ZERO;
        let shutdown = CancellationToken::new();
        let predictor =
            tokio::spawn(lookout_predictor::run(args, t.bus("predictor"), shutdown.clone()));
        collected.wait_for(porch.len() + other.len()).await;
        shutdown.cancel();
        predictor.await.unwrap().unwrap();
        collected.decoded::<Prediction>()
    });
    let live = top1(&live, "porch");
    assert_eq!(live.len(), porch.len());

    // The replay of the porch camera, as a user runs it.
    let out = Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(["replay", "--from", &from.format(&Rfc3339).unwrap(), "--camera", "porch"])
        .args(["--model", repo("models/efficientnet-lite0").to_str().unwrap(), "--min-frames", "1"])
        .args(t.child_args())
        .env_remove("LOOKOUT_BROKERS")
        .output()
        .expect("lookout runs");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "lookout replay failed:\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} frames labelled, 0 skipped, {} of other cameras passed over",
            porch.len(),
            other.len()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{0}/{0} frames 100%", porch.len() + other.len())),
        "{stderr}"
    );

    // Its predictions: on the replay topic only, the live labels frame by frame.
    let replayed = rt.block_on(async {
        let collected = t.collect("replay.lookout.predictions");
        collected.wait_for(porch.len()).await;
        collected.decoded::<Prediction>()
    });
    assert!(replayed.iter().all(|p| p.camera_id == "porch"), "only the camera asked for");
    let replayed = top1(&replayed, "porch");
    assert_eq!(replayed.len(), porch.len(), "each frame once");
    for (sequence, (label, score)) in &live {
        let (again, again_score) = &replayed[sequence];
        assert_eq!(again, label, "frame {sequence}");
        assert!((again_score - score).abs() < 1e-4, "frame {sequence}: {score} then {again_score}");
    }

    // The changes it lists: one per photo, as the live labels change.
    let mut expected = Vec::new();
    for (label, _) in live.values() {
        if expected.last() != Some(label) {
            expected.push(label.clone());
        }
    }
    let listed: Vec<&str> = stdout.lines().filter(|l| l.contains("porch")).collect();
    assert_eq!(listed.len(), expected.len(), "{stdout}");
    for (line, label) in listed.iter().zip(&expected) {
        assert!(line.contains(&format!("-> {label} ")), "{line} should change to {label}");
        assert!(line.contains("efficientnet-lite0@"), "{line}");
    }
}
