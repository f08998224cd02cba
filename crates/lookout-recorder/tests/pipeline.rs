//! The recorder in this process, on an embedded broker, against SQLite and a real Postgres:
//! a scripted slideshow gives one change per photo switch with the right snapshots and events;
//! 1 or 3 interleaving predictor-like publishers give the same rows; duplicate deliveries and a
//! full replay add nothing.

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use common::{Shot, TestDb};
use lookout_bus::topics;
use lookout_proto::v1::{Prediction, PredictionChange};
use lookout_recorder::{
    Recorder, RecorderConfig, RecorderError, StatsSnapshot, detector::DetectorConfig,
};
use lookout_service::Readiness;
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn config(group: &str) -> RecorderConfig {
    RecorderConfig {
        detector: DetectorConfig {
            min_frames: 3,
            min_score: 0.3,
            window_frames: 64,
            window_timeout: Duration::from_secs(1),
        },
        snapshot_buffer: 300,
        snapshot_wait: Duration::from_millis(500),
        retain: None,
        group: group.into(),
        ..RecorderConfig::default()
    }
}

struct Running {
    recorder: Recorder,
    readiness: Readiness,
    stop: CancellationToken,
    task: JoinHandle<Result<(), RecorderError>>,
}

impl Running {
    async fn start(t: &TestBus, db: &TestDb, group: &str) -> Self {
        let readiness = Readiness::default();
        let recorder = Recorder::new(
            config(group),
            t.bus("lookout-recorder"),
            db.store().await,
            readiness.clone(),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (r, s) = (recorder.clone(), stop.clone());
            async move { r.run(s).await }
        });
        Self { recorder, readiness, stop, task }
    }

    /// Waits until `done` holds for the recorder's counters.
    async fn wait(&self, what: &str, done: impl Fn(StatsSnapshot) -> bool) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while !done(self.recorder.stats()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.recorder.stats()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(EVENT_TIMEOUT, self.task)
            .await
            .expect("the recorder stops in time")
            .expect("recorder task")
            .expect("recorder stops cleanly");
    }
}

/// Publishes each shot's frame, then its prediction through one of `publishers` concurrent
/// predictor-like publishers that take turns and pause at random, so their predictions
/// interleave out of order. `copies` publishes each prediction that many times.
async fn publish(
    t: &TestBus,
    shots: &[Shot],
    publishers: usize,
    copies: usize,
    with_frames: &dyn Fn(&Shot) -> bool,
    seed: u64,
) {
    let bus = t.bus("lookout-test");
    let frames = bus.publisher(&topics::FRAMES);
    for s in shots.iter().filter(|s| with_frames(s)) {
        frames.send(&s.frame()).await.expect("frame delivered");
    }
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let mine: Vec<Shot> = shots
            .iter()
            .enumerate()
            .filter(|(i, _)| i % publishers == p)
            .map(|(_, s)| s.clone())
            .collect();
        let predictions = bus.publisher(&topics::PREDICTIONS);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed + p as u64);
            for s in mine {
                for _ in 0..copies {
                    predictions.send(&s.prediction()).await.expect("prediction delivered");
                }
                if rng.random_bool(0.3) {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..4))).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn scripted_slideshow(db: TestDb) {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let events = t.collect(topics::CHANGES.name());
    let running = Running::start(&t, &db, "recorder").await;

    const PHOTOS: usize = 6;
    let mut shots = common::slideshow("porch", 1_700_000_000_000_000, 8, PHOTOS, 0);
    shots.extend(common::slideshow("lobby", 1_700_000_500_000_000, 8, PHOTOS, 1));
    // The attic's frames never reach the recorder: its changes are stored without snapshots.
    shots.extend(common::slideshow("attic", 1_700_000_900_000_000, 8, 2, 2));
    tokio::time::timeout(EVENT_TIMEOUT, publish(&t, &shots, 3, 1, &|s| s.camera != "attic", 7))
        .await
        .expect("published in time");
    eprintln!("published");

    let expected = common::expected_changes(config("").detector, &shots);
    running
        .wait("every frame decided and every change published", |s| {
            s.decided == shots.len() as u64 && s.published == expected.len() as u64
        })
        .await;
    assert!(running.readiness.status().0, "ready: {:?}", running.readiness.status());

    let store = db.store().await;
    let rows = common::stored_rows(&store).await;
    let mut want = common::expected_rows(&expected, &shots);
    for w in want.iter_mut().filter(|w| w.camera == "attic") {
        w.snapshot = None;
        w.snapshot_missing = true;
    }
    assert_eq!(rows, want, "stored {:#?}", common::describe(&rows));

    // One change per photo switch, with the photo's label; the first starts the history.
    for camera in ["porch", "lobby"] {
        let labels: Vec<(Option<String>, String)> = rows
            .iter()
            .filter(|r| r.camera == camera)
            .map(|r| (r.previous.as_ref().map(|p| p.0.clone()), r.current.0.clone()))
            .collect();
        assert_eq!(labels.len(), PHOTOS, "{camera}: {labels:?}");
        assert_eq!(labels[0].0, None);
        for pair in labels.windows(2) {
            assert_eq!(
                pair[1].0.as_ref(),
                Some(&pair[0].1),
                "each change's previous is the last label"
            );
        }
        let photo_labels: BTreeSet<&str> = common::PHOTOS.iter().map(|p| p.1).collect();
        assert!(labels.iter().all(|l| photo_labels.contains(l.1.as_str())), "{labels:?}");
    }

    // Each stored change was published once, with its database id.
    events.wait_for(rows.len()).await;
    let stored = store.changes(&Default::default()).await.unwrap();
    let events: Vec<PredictionChange> = events.decoded();
    let published: BTreeSet<(i64, String, u64, bool)> = events
        .iter()
        .map(|e| (e.change_id, e.camera_id.clone(), e.frame_sequence, e.snapshot_missing))
        .collect();
    let wanted: BTreeSet<(i64, String, u64, bool)> = stored
        .iter()
        .map(|c| (c.change_id, c.key.camera_id.clone(), c.frame_sequence, c.snapshot_missing))
        .collect();
    assert_eq!(published, wanted);
    assert!(
        events
            .iter()
            .all(|e| e.current.is_some()
                && e.model.as_ref().is_some_and(|m| m.name == common::MODEL))
    );
    // Each carries a thumbnail of its snapshot (a small JPEG of the same photo), none when the
    // snapshot is missing.
    for e in &events {
        if e.snapshot_missing {
            assert!(e.thumbnail.is_empty(), "no snapshot, no thumbnail: {}", e.change_id);
            continue;
        }
        let thumb = image::load_from_memory_with_format(&e.thumbnail, image::ImageFormat::Jpeg)
            .expect("the thumbnail is a JPEG");
        assert_eq!(thumb.width(), lookout_recorder::THUMBNAIL_WIDTH, "{}", e.change_id);
        assert!(e.thumbnail.len() < 16 * 1024, "a few KB: {} B", e.thumbnail.len());
        let snapshot = rows
            .iter()
            .find(|r| r.camera == e.camera_id && r.sequence == e.frame_sequence)
            .and_then(|r| r.snapshot.clone())
            .expect("its snapshot");
        let full = image::load_from_memory(&snapshot).unwrap();
        let (fw, fh) = (full.width() as f32, full.height() as f32);
        let aspect = thumb.width() as f32 / thumb.height() as f32;
        assert!((aspect - fw / fh).abs() < 0.05, "the frame's shape: {aspect} vs {}", fw / fh);
    }

    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_slideshow_stores_one_change_per_photo_switch() {
    scripted_slideshow(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_slideshow_stores_one_change_per_photo_switch() {
    let db = TestDb::postgres().await;
    scripted_slideshow(db).await;
}

/// The rows of one run with `publishers` publishers.
async fn run_with_publishers(
    db: TestDb,
    shots: &[Shot],
    publishers: usize,
) -> (Vec<common::Row>, u64) {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let running = Running::start(&t, &db, "recorder").await;
    publish(&t, shots, publishers, 1, &|_| true, publishers as u64).await;
    running.wait("every frame decided", |s| s.decided == shots.len() as u64).await;
    let expected = common::expected_changes(config("").detector, shots).len() as u64;
    running.wait("every change published", |s| s.published == expected).await;
    let reordered = running.recorder.stats().reordered;
    running.stop().await;
    (common::stored_rows(&db.store().await).await, reordered)
}

async fn one_or_three_publishers(one: TestDb, three: TestDb) {
    let mut shots = common::slideshow("porch", 1_700_000_000_000_000, 7, 30, 3);
    shots.extend(common::slideshow("lobby", 1_700_000_100_000_000, 5, 30, 4));
    let (with_one, _) = run_with_publishers(one, &shots, 1).await;
    let (with_three, reordered) = run_with_publishers(three, &shots, 3).await;
    assert!(reordered > 0, "the three publishers' predictions did arrive out of order");
    eprintln!("3 publishers: {reordered} of {} predictions arrived out of order", shots.len());
    assert!(!with_one.is_empty());
    assert_eq!(with_one, with_three, "1 publisher: {:#?}", common::describe(&with_one));
    let expected =
        common::expected_rows(&common::expected_changes(config("").detector, &shots), &shots);
    assert_eq!(with_one, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_one_or_three_publishers_give_the_same_changes() {
    one_or_three_publishers(TestDb::sqlite(), TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_or_three_publishers_give_the_same_changes() {
    let one = TestDb::postgres().await;
    let three = TestDb::postgres().await;
    one_or_three_publishers(one, three).await;
}

async fn duplicates(db: TestDb) {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let shots = common::slideshow("porch", 1_700_000_000_000_000, 6, 6, 5);
    let expected = common::expected_changes(config("").detector, &shots);

    // Every prediction delivered twice.
    let first = Running::start(&t, &db, "recorder").await;
    publish(&t, &shots, 2, 2, &|_| true, 11).await;
    first.wait("every frame decided", |s| s.decided == shots.len() as u64).await;
    first.wait("every change published", |s| s.published == expected.len() as u64).await;
    let stats = first.recorder.stats();
    assert_eq!(stats.changes, expected.len() as u64);
    assert_eq!(stats.predictions + stats.duplicates, 2 * shots.len() as u64);
    first.stop().await;
    let rows = common::stored_rows(&db.store().await).await;
    assert_eq!(rows, common::expected_rows(&expected, &shots));

    // A recorder in a new consumer group re-reads every prediction from the beginning: the
    // stored detector state recognises them all, nothing is added or published again.
    let again = Running::start(&t, &db, "recorder-replay").await;
    again.wait("every prediction re-read", |s| s.duplicates == 2 * shots.len() as u64).await;
    let stats = again.recorder.stats();
    assert_eq!((stats.predictions, stats.changes, stats.published), (0, 0, 0));
    again.stop().await;
    assert_eq!(common::stored_rows(&db.store().await).await, rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_duplicate_deliveries_add_nothing() {
    duplicates(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_duplicate_deliveries_add_nothing() {
    let db = TestDb::postgres().await;
    duplicates(db).await;
}

/// A camera id with a NUL byte and a 10 kB label can never be stored: they are dead-lettered
/// where they enter, and the rest of the stream, in the same batches, is recorded as usual.
async fn bad_data(db: TestDb) {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let shots = common::slideshow("porch", 1_700_000_000_000_000, 6, 6, 5);
    let expected = common::expected_changes(config("").detector, &shots);
    let dead = t.collect(topics::DLQ);
    let bus = t.bus("lookout-test");
    let predictions = bus.publisher(&topics::PREDICTIONS);
    let nul = Prediction { camera_id: "por\0ch".into(), ..shots[2].prediction() };
    let mut long = shots[3].prediction();
    long.top_k[0].name = "x".repeat(10_000);
    // The bad ones come first: the stream's own predictions follow in the same batches.
    predictions.send(&long).await.unwrap();
    predictions.send(&nul).await.unwrap();
    let running = Running::start(&t, &db, "recorder").await;
    publish(&t, &shots, 1, 1, &|_| true, 3).await;
    running.wait("every frame decided", |s| s.decided == shots.len() as u64).await;
    running.wait("every change published", |s| s.published == expected.len() as u64).await;
    running.stop().await;
    assert_eq!(
        common::stored_rows(&db.store().await).await,
        common::expected_rows(&expected, &shots)
    );
    let letters = dead.wait_for(2).await;
    let reasons: Vec<&str> =
        letters.iter().filter_map(|m| m.headers.get_str(lookout_bus::headers::DLQ_ERROR)).collect();
    assert_eq!(letters.len(), 2, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("label is 10000 bytes")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("camera id") && r.contains("control")),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bad_data_is_dead_lettered_and_the_rest_recorded() {
    bad_data(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bad_data_is_dead_lettered_and_the_rest_recorded() {
    bad_data(TestDb::postgres().await).await;
}

/// A thousand cameras that each send a few frames and predictions and go quiet: once idle,
/// the recorder holds none of their frames and none of their detectors in memory (their state
/// is in the database), and a camera that comes back goes on where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cameras_that_go_quiet_leave_memory_bounded() {
    const CAMERAS: usize = 1000;
    let t = TestBus::start();
    t.create_registry_topics().await;
    let db = TestDb::sqlite();
    let idle = Duration::from_secs(2);
    let readiness = Readiness::default();
    let recorder = Recorder::new(
        RecorderConfig { idle, ..config("recorder") },
        t.bus("lookout-recorder"),
        db.store().await,
        readiness,
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (r, s) = (recorder.clone(), stop.clone());
        async move { r.run(s).await }
    });
    let mut shots = Vec::new();
    for c in 0..CAMERAS {
        shots.extend(common::slideshow(&format!("cam-{c:04}"), 1_700_000_000_000_000, 4, 1, 0));
    }
    let bus = t.bus("lookout-test");
    let (frames, predictions) =
        (bus.publisher(&topics::FRAMES), bus.publisher(&topics::PREDICTIONS));
    let mut pending = Vec::new();
    for s in &shots {
        pending.push(frames.enqueue(&s.frame(), None).await.unwrap());
        pending.push(predictions.enqueue(&s.prediction(), None).await.unwrap());
    }
    for p in pending {
        p.wait().await.unwrap();
    }
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while recorder.stats().predictions < shots.len() as u64 {
        assert!(Instant::now() < deadline, "not all handled: {:?}", recorder.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The condition is time: idle for longer than `idle`.
    let deadline = Instant::now() + idle * 10;
    loop {
        let m = recorder.memory();
        if m.streams == 0 && m.snapshots.cameras == 0 {
            assert_eq!((m.snapshots.frames, m.snapshots.bytes, m.snapshots.positions), (0, 0, 0));
            break;
        }
        assert!(Instant::now() < deadline, "idle cameras are still held: {m:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A camera that comes back is loaded from the database and goes on where it was: its
    // re-delivered predictions are recognised as such.
    let before = recorder.stats();
    predictions.send(&shots[0].prediction()).await.unwrap();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while recorder.stats().duplicates == before.duplicates {
        assert!(Instant::now() < deadline, "the returning camera's prediction was not handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(recorder.stats().predictions, before.predictions, "not decided twice");
    assert_eq!(recorder.memory().streams, 1);
    stop.cancel();
    task.await.unwrap().unwrap();
}
