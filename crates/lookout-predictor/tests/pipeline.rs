//! The predictor through the embedded broker: in-process, and as two replica processes.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc as std_mpsc,
    thread,
    time::{Duration, SystemTime},
};

use lookout_bus::{HandlerError, Incoming, topics};
use lookout_predictor::PredictorArgs;
use lookout_proto::v1::{Encoding, Frame, Prediction};
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use std::sync::OnceLock;

use lookout_proto::v1::SkipReason;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

fn frame(camera: &str, seq: u64, jpeg: &(Vec<u8>, u32, u32)) -> Frame {
    Frame {
        camera_id: camera.into(),
        sequence: seq,
        capture_time: Some(lookout_proto::timestamp(SystemTime::now())),
        width: jpeg.1,
        height: jpeg.2,
        encoding: Encoding::Jpeg.into(),
        data: jpeg.0.clone().into(),
    }
}

fn args() -> PredictorArgs {
    let mut args = PredictorArgs::for_model(common::manifest());
    args.max_frame_age = Duration::from_secs(60);
    args
}

/// The decoder panics on frames ending with this (see `test_hooks`).
const PANIC_MARKER: &[u8] = b"LOOKOUT-TEST-PANIC";
/// The decoder blocks for an hour on frames ending with this.
const HANG_MARKER: &[u8] = b"LOOKOUT-TEST-HANG";
static HANGING: OnceLock<watch::Sender<bool>> = OnceLock::new();

fn test_hook(bytes: &[u8]) {
    if bytes.ends_with(PANIC_MARKER) {
        panic!("test hook: the decoder panics on this frame");
    }
    if bytes.ends_with(HANG_MARKER) {
        HANGING.get_or_init(|| watch::Sender::new(false)).send_replace(true);
        thread::sleep(Duration::from_secs(3600));
    }
}

fn with_marker(jpeg: &(Vec<u8>, u32, u32), marker: &[u8]) -> (Vec<u8>, u32, u32) {
    // Bytes after the end-of-image marker are ignored by decoders.
    ([jpeg.0.as_slice(), marker].concat(), jpeg.1, jpeg.2)
}

async fn collect_predictions(
    t: &TestBus,
    shutdown: CancellationToken,
) -> mpsc::Receiver<Prediction> {
    let (tx, rx) = mpsc::channel(64);
    let bus = t.bus("lookout-test");
    tokio::spawn(async move {
        bus.subscriber(&topics::PREDICTIONS, "test-reader")
            .run(
                move |p: Incoming<Prediction>| {
                    let tx = tx.clone();
                    async move {
                        tx.send(p.message).await.map_err(|e| HandlerError::Transient(e.to_string()))
                    }
                },
                shutdown,
            )
            .await
    });
    rx
}

async fn next(rx: &mut mpsc::Receiver<Prediction>) -> Prediction {
    // Every frame gets a prediction; tests that want the labelled ones filter.
    tokio::time::timeout(EVENT_TIMEOUT, rx.recv()).await.expect("a prediction arrives").unwrap()
}

/// The detector as a service: `--model models/ssdlite-mobilenet-v2-coco` is all it takes; its
/// predictions carry the boxes in fractions of the frame, and say they come from a detector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detector_publishes_boxes_in_frame_fractions() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let shutdown = CancellationToken::new();
    let mut args = PredictorArgs::for_model(common::repo("models/ssdlite-mobilenet-v2-coco"));
    args.max_frame_age = Duration::from_secs(60);
    args.group = "detector".into();
    let detector =
        tokio::spawn(lookout_predictor::run(args, t.bus("lookout-detector"), shutdown.clone()));
    let mut predictions = collect_predictions(&t, shutdown.clone()).await;

    let frames = t.bus("lookout-camera").publisher(&topics::FRAMES);
    frames.send(&frame("cam", 1, &common::sample_jpeg("chelsea.png"))).await.unwrap();
    frames.send(&frame("cam", 2, &common::sample_jpeg("rocket.jpg"))).await.unwrap();
    let mut by_sequence = BTreeMap::new();
    while by_sequence.len() < 2 {
        let p = next(&mut predictions).await;
        by_sequence.insert(p.frame_sequence, p);
    }
    let cat = &by_sequence[&1];
    let model = cat.model.clone().unwrap();
    assert_eq!(model.name, "ssdlite-mobilenet-v2-coco");
    assert_eq!(model.kind(), lookout_proto::v1::ModelKind::Detection);
    assert_eq!(cat.skipped(), SkipReason::Unspecified);
    let found = &cat.detections[0];
    assert_eq!(found.label.as_ref().unwrap().name, "cat", "{cat:?}");
    assert_eq!(cat.top_k[0].name, "cat", "the best class found is the top label");
    // The provenance's box, [1, 3, 403, 298] of 451x300, as fractions of the frame.
    let b = found.r#box.unwrap();
    let want = [1.0 / 451.0, 3.0 / 300.0, 402.0 / 451.0, 295.0 / 300.0];
    for (got, want) in [b.x, b.y, b.width, b.height].into_iter().zip(want) {
        assert!((got - want).abs() < 0.015, "box {b:?}, expected about {want:?}");
    }
    let rocket = &by_sequence[&2];
    assert_eq!(rocket.skipped(), SkipReason::Unspecified, "labelled, nothing found");
    assert!(rocket.detections.is_empty() && rocket.top_k.is_empty(), "{rocket:?}");

    shutdown.cancel();
    detector.await.unwrap().expect("the detector stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_photos_are_labelled_and_every_other_frame_gets_a_skipped_prediction() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let shutdown = CancellationToken::new();
    let predictor =
        tokio::spawn(lookout_predictor::run(args(), t.bus("lookout-predictor"), shutdown.clone()));
    let mut predictions = collect_predictions(&t, shutdown.clone()).await;

    let frames = t.bus("lookout-camera").publisher(&topics::FRAMES);
    let cat = common::sample_jpeg("chelsea.png");
    let coffee = common::sample_jpeg("coffee.png");
    let corrupt = (b"\xff\xd8\xff\xe0 not a jpeg".to_vec(), 640, 480);
    frames.send(&frame("cam", 1, &cat)).await.unwrap();
    frames.send(&frame("cam", 2, &corrupt)).await.unwrap();
    let mut absurd = frame("cam", 3, &cat);
    (absurd.width, absurd.height) = (100_000, 100_000);
    frames.send(&absurd).await.unwrap();
    let mut png = frame("cam", 4, &cat);
    png.encoding = Encoding::Unspecified.into();
    frames.send(&png).await.unwrap();
    let mut old = frame("cam", 5, &cat);
    old.capture_time =
        Some(lookout_proto::timestamp(SystemTime::now() - Duration::from_secs(3600)));
    frames.send(&old).await.unwrap();
    frames.send(&frame("cam", 6, &coffee)).await.unwrap();

    let mut got = BTreeMap::new();
    while got.len() < 6 {
        let p = next(&mut predictions).await;
        got.insert(p.frame_sequence, p);
    }
    let reasons: Vec<(u64, SkipReason)> =
        got.values().map(|p| (p.frame_sequence, p.skipped())).collect();
    assert_eq!(
        reasons,
        vec![
            (1, SkipReason::Unspecified),
            (2, SkipReason::Undecodable),
            (3, SkipReason::TooLarge),
            (4, SkipReason::Unsupported),
            (5, SkipReason::TooOld),
            (6, SkipReason::Unspecified),
        ],
        "every frame gets a prediction; the ones not labelled say why"
    );
    for seq in 2..=5 {
        assert!(got[&seq].top_k.is_empty(), "a skipped prediction has no labels");
        assert_eq!(got[&seq].model.as_ref().unwrap().name, "efficientnet-lite0");
    }
    let top3: Vec<&str> = got[&1].top_k.iter().take(3).map(|l| l.name.as_str()).collect();
    assert!(top3.iter().any(|n| n.contains("cat") || *n == "tabby"), "cat in top 3: {top3:?}");
    assert_eq!(got[&6].top_k[0].name, "espresso");
    let p = &got[&6];
    assert_eq!(p.top_k.len(), 5);
    assert_eq!(p.camera_id, "cam");
    assert_eq!(p.model.as_ref().unwrap().name, "efficientnet-lite0");
    assert!(p.timings.as_ref().unwrap().inference.is_some());
    assert!(p.capture_time.is_some());

    shutdown.cancel();
    predictor.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_panics_the_decoder_is_dead_lettered_once_and_the_next_is_labelled() {
    lookout_predictor::test_hooks::install_decode_hook_for_tests(test_hook);
    let t = TestBus::start();
    t.create_registry_topics().await;
    let dlq = t.collect(lookout_proto::topics::DLQ);
    let shutdown = CancellationToken::new();
    let predictor =
        tokio::spawn(lookout_predictor::run(args(), t.bus("lookout-predictor"), shutdown.clone()));
    let mut predictions = collect_predictions(&t, shutdown.clone()).await;

    let frames = t.bus("lookout-camera").publisher(&topics::FRAMES);
    let cat = common::sample_jpeg("chelsea.png");
    frames.send(&frame("cam", 10, &with_marker(&cat, PANIC_MARKER))).await.unwrap();
    // The same partition as frame 10 (frames are spread by sequence over the 6 partitions):
    // once it is labelled, frame 10 is behind its partition's position for good.
    frames.send(&frame("cam", 16, &cat)).await.unwrap();

    let mut got = BTreeMap::new();
    while got.len() < 2 {
        let p = next(&mut predictions).await;
        got.insert(p.frame_sequence, p);
    }
    assert_eq!(got[&10].skipped(), SkipReason::Undecodable);
    assert_eq!(got[&16].skipped(), SkipReason::Unspecified, "the next frame is labelled");
    assert!(!got[&16].top_k.is_empty());
    let dead = dlq.wait_for(1).await;
    assert_eq!(dead.len(), 1, "dead-lettered once: {dead:?}");
    let error = dead[0].headers.get_str("dlq-error").unwrap_or_default();
    assert!(error.contains("decode panicked"), "{error}");

    shutdown.cancel();
    predictor.await.unwrap().unwrap();
    assert_eq!(dlq.messages().len(), 1, "still once after the predictor stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_frame_in_progress() {
    lookout_predictor::test_hooks::install_decode_hook_for_tests(test_hook);
    let mut hanging = HANGING.get_or_init(|| watch::Sender::new(false)).subscribe();
    let t = TestBus::start();
    t.create_registry_topics().await;
    let shutdown = CancellationToken::new();
    let predictor =
        tokio::spawn(lookout_predictor::run(args(), t.bus("lookout-predictor"), shutdown.clone()));
    let frames = t.bus("lookout-camera").publisher(&topics::FRAMES);
    let cat = common::sample_jpeg("chelsea.png");
    frames.send(&frame("cam", 1, &with_marker(&cat, HANG_MARKER))).await.unwrap();
    tokio::time::timeout(EVENT_TIMEOUT, hanging.wait_for(|h| *h))
        .await
        .expect("the frame reaches the decoder")
        .unwrap();

    // The decoder is stuck for an hour on that frame; the predictor stops all the same.
    shutdown.cancel();
    tokio::time::timeout(EVENT_TIMEOUT, predictor)
        .await
        .expect("the predictor stops while a frame is in progress")
        .unwrap()
        .unwrap();
}

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a predictor process; its JSON log lines about assignments go to `events`.
fn replica(t: &TestBus, name: &str, events: std_mpsc::Sender<(String, String, String)>) -> Guard {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lookout-predictor"))
        .args(t.child_args())
        .args(["--model", common::manifest().to_str().unwrap(), "--max-frame-age", "0"])
        .args(["--instance", name, "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("lookout-predictor runs");
    let stderr = child.stderr.take().unwrap();
    let name = name.to_owned();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            let msg = v["message"].as_str().unwrap_or_default().to_owned();
            let parts = v["partitions"].as_str().unwrap_or_default().to_owned();
            if events.send((name.clone(), msg, parts)).is_err() {
                break;
            }
        }
    });
    Guard(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_camera_and_label_each_frame_once() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let (tx, rx) = std_mpsc::channel();
    let _a = replica(&t, "replica-a", tx.clone());
    let _b = replica(&t, "replica-b", tx);

    // Wait until the group is settled: both replicas own partitions and together all six.
    let mut owned: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    loop {
        let (who, msg, parts) =
            rx.recv_timeout(EVENT_TIMEOUT).expect("replicas log their assignments");
        let set = owned.entry(who).or_default();
        let listed = parts.split(',').filter(|p| !p.is_empty()).map(str::to_owned);
        // Cooperative rebalancing: assignments and revocations are increments.
        match msg.as_str() {
            "partitions assigned" => set.extend(listed),
            "partitions revoked" => {
                for p in listed {
                    set.remove(&p);
                }
            }
            _ => {}
        }
        let all: BTreeSet<&String> = owned.values().flatten().collect();
        if owned.len() == 2 && owned.values().all(|s| !s.is_empty()) && all.len() == 6 {
            break;
        }
    }

    const FRAMES: u64 = 24;
    let shutdown = CancellationToken::new();
    let mut predictions = collect_predictions(&t, shutdown.clone()).await;
    let frames = t.bus("lookout-camera").publisher(&topics::FRAMES);
    let photos = [common::sample_jpeg("chelsea.png"), common::sample_jpeg("coffee.png")];
    for seq in 0..FRAMES {
        frames.send(&frame("one", seq, &photos[(seq / 4 % 2) as usize])).await.unwrap();
    }

    let mut by_seq: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    while by_seq.len() < FRAMES as usize {
        let p = next(&mut predictions).await;
        assert_eq!(p.skipped(), SkipReason::Unspecified, "frame {} labelled", p.frame_sequence);
        by_seq.entry(p.frame_sequence).or_default().push(p.predictor_instance);
    }
    // Every frame is done once the group has committed all of them; then count what was
    // published: one prediction per frame, no more.
    let bus = t.bus("lookout-test");
    let frames_topic = bus.topic_name(topics::FRAMES.name());
    loop {
        let described = lookout_bus::admin::describe(&bus).await.unwrap();
        let info = described.iter().find(|d| d.name == frames_topic).unwrap();
        let lag = lookout_bus::admin::group_lag(&bus, "predictor", info).await.unwrap();
        if lag.iter().all(|l| l.committed == Some(l.high)) {
            let preds = described
                .iter()
                .find(|d| d.name == bus.topic_name(topics::PREDICTIONS.name()))
                .unwrap();
            let published: i64 = preds.partitions.iter().map(|p| p.high - p.low).sum();
            assert_eq!(published, FRAMES as i64, "exactly one prediction per frame");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await; // polling the committed offsets
    }
    assert_eq!(by_seq.keys().copied().collect::<Vec<_>>(), (0..FRAMES).collect::<Vec<_>>());
    let instances: BTreeSet<&String> = by_seq.values().flatten().collect();
    assert_eq!(
        instances.len(),
        2,
        "both replicas labelled frames of the one camera: {instances:?}"
    );
    for (seq, p) in &by_seq {
        assert_eq!(p.len(), 1, "frame {seq} labelled once");
    }
    shutdown.cancel();
}
