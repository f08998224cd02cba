//! End to end: every service as its own OS process (`lookout <service>`), talking only through
//! the embedded broker: camera slideshow → predictor(s) → viewer and recorder (SQLite), logs
//! through the log shipper.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
};

mod common;

use common::{
    Service, alive, camera_with, changes, eventually, free_port, interrupt, joined, log_records,
    predictor, recorder, recorder_with, repo, s, sse_until, start,
};
use lookout_bus::{HandlerError, Incoming, topics};
use lookout_proto::v1::{Frame, Prediction};
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Slideshow: 3 photos, 5 frames each at 5 fps, two rounds.
const FRAMES: u64 = 30;
/// Label changes that makes: the first label, then one per photo switch.
const CHANGES: usize = 6;

fn camera(t: &TestBus, dir: &Path) -> Service {
    camera_with(t, dir, "1s", FRAMES)
}

/// The object detector, in consumer group `detector` (beside the classifier's `predictor`).
fn detector(t: &TestBus, dir: &Path, name: &str) -> Service {
    let model = repo("models/ssdlite-mobilenet-v2-coco");
    start(
        t,
        dir,
        name,
        &s(&["predictor", "--model", model.to_str().unwrap(), "--group", "detector"]),
    )
}

fn labels(changes: &[Value]) -> Vec<String> {
    changes.iter().map(|c| c["current"]["name"].as_str().unwrap().to_owned()).collect()
}

/// The slideshow's changes: a cat, espresso, the rocket's label, then the same again, each
/// with its snapshot.
fn assert_slideshow_changes(changes: &[Value]) {
    let l = labels(changes);
    assert_eq!(l.len(), CHANGES, "one change per photo switch, plus the first label: {l:?}");
    assert!(["tiger cat", "Egyptian cat", "tabby"].contains(&l[0].as_str()), "{l:?}");
    assert_eq!(l[1], "espresso");
    assert_eq!(l[..3], l[3..], "the second round repeats the first: {l:?}");
    assert!(changes[0]["previous"].is_null(), "the first change starts the history");
    for c in changes {
        assert_eq!(c["camera_id"], "samples");
        assert_eq!(c["snapshot_missing"], false, "{c}");
        assert!(c["snapshot_bytes"].as_u64().unwrap() > 1000, "{c}");
    }
}

/// `GET path` on the local `port`: status and body.
fn http_get(port: u16, path: &str) -> Option<(u16, Vec<u8>)> {
    common::http_bytes(&format!("127.0.0.1:{port}"), path)
}

/// A GET whose body is text.
fn http_text(port: u16, path: &str) -> Option<(u16, String)> {
    common::http_get(&format!("127.0.0.1:{port}"), path)
}

/// The camera ids the viewer lists.
fn viewer_cameras(port: u16) -> BTreeSet<String> {
    let Some((200, body)) = http_get(port, "/api/cameras") else { return BTreeSet::new() };
    let cameras: Vec<Value> = serde_json::from_slice(&body).unwrap_or_default();
    cameras.iter().filter_map(|c| c["id"].as_str().map(str::to_owned)).collect()
}

/// A site file's cameras captured by one `lookout camera --config` process, and a viewer, on
/// a broker of their own; the services stop when it is dropped.
struct SiteRun {
    camera: Service,
    _viewer: Service,
    viewer: u16,
    admin: u16,
    _bus: TestBus,
    _dir: tempfile::TempDir,
}

/// Writes `files` (paths relative to the site file) and the site file `site` into a fresh
/// folder, then starts the viewer and the camera process on it.
fn run_site(site: &str, files: &[(&str, Vec<u8>)]) -> SiteRun {
    let t = TestBus::start();
    tokio::runtime::Runtime::new().unwrap().block_on(t.create_registry_topics());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let file = dir.join("lookout.toml");
    std::fs::write(&file, site).unwrap();
    let (viewer, admin) = (free_port(), free_port());
    let viewer_service =
        start(&t, dir, "viewer", &s(&["viewer", "--listen", &format!("127.0.0.1:{viewer}")]));
    let config = file.display().to_string();
    let admin_addr = format!("127.0.0.1:{admin}");
    let camera =
        start(&t, dir, "camera", &s(&["camera", "--config", &config, "--admin-addr", &admin_addr]));
    SiteRun { camera, _viewer: viewer_service, viewer, admin, _bus: t, _dir: tmp }
}

#[test]
fn a_site_file_s_three_cameras_run_in_one_process_and_all_reach_the_viewer() {
    let site = format!(
        r#"
[[camera]]
id = "porch"
source = "images:{samples}"
hold = "1s"
fps = 4

[[camera]]
id = "kitchen"
source = "images:media/coffee.png"   # relative to the site file
fps = 2

[[camera]]
id = "gate"
source = "synthetic"
size = "160x120"
fps = 4
quality = 60
"#,
        samples = repo("samples").display()
    );
    let coffee = std::fs::read(repo("samples/coffee.png")).unwrap();
    let run = run_site(&site, &[("media/coffee.png", coffee)]);
    let (viewer, admin) = (run.viewer, run.admin);

    let want: BTreeSet<String> = ["gate", "kitchen", "porch"].map(String::from).into();
    eventually("the viewer to list the three cameras", || {
        (viewer_cameras(viewer) == want).then_some(())
    });
    // Ready once every camera's frames flow; each camera's frames counted under its id.
    eventually("the camera process to be ready", || {
        matches!(http_get(admin, "/readyz"), Some((200, _))).then_some(())
    });
    let (_, metrics) = http_text(admin, "/metrics").unwrap();
    for id in &want {
        let published = format!("lookout_camera_frames_published_total{{camera=\"{id}\"}}");
        assert!(metrics.contains(&published), "{published} in {metrics}");
    }
    for id in &want {
        let (status, jpeg) = http_get(viewer, &format!("/cameras/{id}/snapshot.jpg")).unwrap();
        assert_eq!(status, 200, "{id}");
        assert_eq!(jpeg[..2], [0xff, 0xd8], "{id}: a JPEG");
    }
}

/// A camera of a site that fails is opened again and again on its own, while the others go on,
/// and readiness names it.
#[test]
fn a_failing_camera_of_a_site_is_reopened_on_its_own_and_the_others_go_on() {
    // A file that exists (so the site file is accepted) but is no video: ffmpeg fails on it.
    let site = "[[camera]]\nid = \"broken\"\nsource = \"file:broken.mp4\"\n\n\
                [[camera]]\nid = \"gate\"\nsource = \"synthetic\"\nsize = \"160x120\"\nfps = 4\n";
    let run = run_site(site, &[("broken.mp4", b"not a video".to_vec())]);

    let log = run.camera.log.clone().unwrap();
    eventually("the broken camera to be opened again twice", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        (text.matches("opening it again").count() >= 2).then_some(())
    });
    eventually("the viewer to list the working camera", || {
        viewer_cameras(run.viewer).contains("gate").then_some(())
    });
    assert!(!viewer_cameras(run.viewer).contains("broken"));
    let (status, body) = http_text(run.admin, "/readyz").unwrap();
    assert_eq!((status, body.trim()), (503, "not ready: source:broken"));
}

/// Runs `lookout ARGS`, which must refuse them as a usage error (exit code 64); its stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(args)
        .env_remove("LOOKOUT_CAMERA_SOURCE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
    stderr
}

#[test]
fn an_invalid_site_file_is_refused_at_start_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("lookout.toml");
    let config = file.to_str().unwrap();
    std::fs::write(&file, "[[camera]]\nid = \"a\"\nsource = \"synthetic\"\nframerate = 5\n")
        .unwrap();
    let stderr = refused(&["camera", "--config", config]);
    let want = format!("{config}:4:1: unknown field `framerate`");
    assert!(stderr.contains(&want), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    let stderr = refused(&["camera", "--config", config, "--source", "synthetic"]);
    assert!(stderr.contains("'--config <FILE>' cannot be used with"), "{stderr}");

    // The demo checks the file before it starts anything.
    std::fs::write(&file, "[[camera]]\nid = \"a\"\nsource = \"tape:1\"\n").unwrap();
    let demo_dir = tmp.path().join("demo");
    let dir = demo_dir.to_str().unwrap();
    let stderr =
        refused(&["demo", "--config", config, "--dir", dir, "--broker-listen", "127.0.0.1:0"]);
    let want = format!("{config}:3:10: camera a: invalid source \"tape:1\"");
    assert!(stderr.contains(&want), "{stderr}");
    assert!(!demo_dir.exists(), "nothing started");
}

#[test]
fn slideshow_through_every_service() {
    let t = TestBus::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(t.create_registry_topics());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = dir.join("logs");
    let port = free_port();

    let _logship =
        start(&t, dir, "logship", &s(&["logship", "--sink", &format!("file:{}", logs.display())]));
    let _recorder = recorder(&t, dir, "recorder", "lookout.db", "recorder");
    let _viewer =
        start(&t, dir, "viewer", &s(&["viewer", "--listen", &format!("127.0.0.1:{port}")]));
    let predictor = predictor(&t, dir, "predictor");
    joined(&predictor);
    let _camera = camera(&t, dir);

    // The viewer shows the coffee photo's label live.
    let event = sse_until(port, |v| v.to_string().contains("espresso"));
    assert!(event.to_string().contains("samples"), "{event}");

    // The recorder stores one change per photo switch, with snapshots.
    let stored = eventually("the recorder's changes", || {
        let c = changes(dir, "lookout.db");
        (c.len() >= CHANGES).then_some(c)
    });
    assert_slideshow_changes(&stored);

    // The logs arrive in the log sink with camera and frame fields.
    let record = eventually("a shipped log record about a change", || {
        log_records(&logs).into_iter().find(|r| {
            r["service"] == "lookout-recorder"
                && r["message"] == "change recorded"
                && r["camera_id"] == "samples"
        })
    });
    assert!(record["frame_sequence"].as_u64().is_some(), "{record}");
    let services: BTreeSet<String> = log_records(&logs)
        .iter()
        .filter_map(|r| r["service"].as_str().map(str::to_owned))
        .collect();
    assert!(services.len() >= 4, "records from every service: {services:?}");
}

/// A classifier and a detector label the same frames side by side, each in its own consumer
/// group: the viewer shows both (the classifier's label, the detector's boxes) and the recorder
/// stores each model's changes apart.
#[test]
fn a_classifier_and_a_detector_label_the_same_frames_side_by_side() {
    let t = TestBus::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(t.create_registry_topics());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();

    let _recorder = recorder(&t, dir, "recorder", "lookout.db", "recorder");
    let _viewer =
        start(&t, dir, "viewer", &s(&["viewer", "--listen", &format!("127.0.0.1:{port}")]));
    let predictor = predictor(&t, dir, "predictor");
    let detector = detector(&t, dir, "detector");
    joined(&predictor);
    joined(&detector);
    // Each photo for 2 s (10 frames): the slower detector still labels each for --min-frames.
    let _camera = camera_with(&t, dir, "2s", 60);

    // The viewer: the detector's boxes and the classifier's label, each with its model.
    let cat =
        |v: &Value| v["objects"].as_array().is_some_and(|o| o.iter().any(|o| o["name"] == "cat"));
    let objects = sse_until(port, cat);
    assert_eq!(objects["model"], "ssdlite-mobilenet-v2-coco", "{objects}");
    assert_eq!(objects["camera"], "samples", "{objects}");
    let cat_box =
        objects["objects"].as_array().unwrap().iter().find(|o| o["name"] == "cat").unwrap();
    assert!(cat_box["width"].as_f64().unwrap() > 0.7, "the cat fills the photo: {cat_box}");
    let label = sse_until(port, |v| v["label"] == "espresso");
    assert_eq!(label["model"], "efficientnet-lite0", "{label}");

    // The recorder: each model's changes, kept apart.
    let of = |changes: &[Value], model: &str| -> Vec<Value> {
        changes.iter().filter(|c| c["model"]["name"] == model).cloned().collect()
    };
    let stored = eventually("both models' changes", || {
        let c = changes(dir, "lookout.db");
        (of(&c, "efficientnet-lite0").len() >= CHANGES
            && of(&c, "ssdlite-mobilenet-v2-coco").len() >= CHANGES)
            .then_some(c)
    });
    assert_slideshow_changes(&of(&stored, "efficientnet-lite0"));
    // The detector's object events: the classes present, per photo switch (the rocket photo
    // has none: everything left).
    let detected = of(&stored, "ssdlite-mobilenet-v2-coco");
    let sets = ["cat", "cup, dining table", ""];
    assert_eq!(labels(&detected), [sets, sets].concat(), "{detected:?}");
    assert!(detected[0]["previous"].is_null(), "each model has its own history: {detected:?}");
    assert!(detected.iter().all(|c| c["snapshot_bytes"].as_u64().unwrap() > 1000), "{detected:?}");
}

/// Frame sequences published on the frames topic, and the predictions per sequence.
async fn frames_and_predictions(
    t: &TestBus,
    shutdown: CancellationToken,
) -> (mpsc::Receiver<u64>, mpsc::Receiver<u64>) {
    let bus = t.bus("lookout-test");
    let (ftx, frx) = mpsc::channel();
    let (ptx, prx) = mpsc::channel();
    tokio::spawn(bus.subscriber(&topics::FRAMES, "e2e-frames").run(
        move |f: Incoming<Frame>| {
            let tx = ftx.clone();
            async move {
                tx.send(f.message.sequence).map_err(|e| HandlerError::Transient(e.to_string()))
            }
        },
        shutdown.clone(),
    ));
    tokio::spawn(bus.subscriber(&topics::PREDICTIONS, "e2e-predictions").run(
        move |p: Incoming<Prediction>| {
            let tx = ptx.clone();
            async move {
                tx.send(p.message.frame_sequence)
                    .map_err(|e| HandlerError::Transient(e.to_string()))
            }
        },
        shutdown,
    ));
    (frx, prx)
}

/// With replicas, the killed one's frames come back to the survivor after the failover, older
/// than the predictor's default `--max-frame-age` (2 s): they are skipped, with a prediction
/// that says so. The slideshow holds each photo for 2 s (10 frames), so the frames labelled
/// still show every photo for more than `--min-frames`, and no change is lost.
const SLOW_FRAMES: u64 = 60;

#[test]
fn two_predictors_record_the_same_changes_and_a_killed_one_loses_no_change() {
    let t = TestBus::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(t.create_registry_topics());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let shutdown = CancellationToken::new();
    let (frames, predictions) = rt.block_on(frames_and_predictions(&t, shutdown.clone()));

    // The killed replica's frames come back after the group's session timeout (10 s) and the
    // takeover, later still on a loaded machine: the reorder window waits that out, as it must
    // with replicas (README, recorder), so the changes are those of an undisturbed run.
    let _recorder =
        recorder_with(&t, dir, "recorder", "lookout.db", "recorder", &["--reorder-timeout", "40s"]);
    let mut a = predictor(&t, dir, "predictor-a");
    let b = predictor(&t, dir, "predictor-b");
    joined(&a);
    joined(&b);
    let _camera = camera_with(&t, dir, "2s", SLOW_FRAMES);

    // Kill one replica once labelling is under way.
    let mut labelled: BTreeMap<u64, usize> = BTreeMap::new();
    while labelled.len() < 8 {
        let seq = predictions.recv_timeout(EVENT_TIMEOUT).expect("predictions flow");
        *labelled.entry(seq).or_default() += 1;
    }
    a.kill9();
    let killed = a.name.clone();

    // Every frame the camera produced gets a prediction, labelled or skipped as too old: the
    // survivor takes over the killed replica's partitions, and frames it had in flight are
    // handled again.
    let mut produced = BTreeSet::new();
    while produced.len() < SLOW_FRAMES as usize {
        produced.insert(frames.recv_timeout(EVENT_TIMEOUT).expect("frames flow"));
    }
    while !produced.iter().all(|s| labelled.contains_key(s)) {
        let seq = predictions
            .recv_timeout(EVENT_TIMEOUT * 2)
            .unwrap_or_else(|_| panic!("{killed} was killed and some frames got no prediction"));
        *labelled.entry(seq).or_default() += 1;
    }

    let stored = eventually("the recorder's changes", || {
        let c = changes(dir, "lookout.db");
        (c.len() >= CHANGES).then_some(c)
    });
    assert_slideshow_changes(&stored);
    shutdown.cancel();
}

#[test]
fn a_recorder_killed_and_restarted_stores_what_an_uninterrupted_one_stores() {
    let t = TestBus::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(t.create_registry_topics());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // Two recorders on the same stream, each with its own group and database: one runs
    // undisturbed, the other is killed with SIGKILL mid-run and restarted.
    let _steady = recorder(&t, dir, "steady", "steady.db", "recorder-steady");
    let mut crashy = recorder(&t, dir, "crashy", "crashy.db", "recorder-crashy");
    let predictor = predictor(&t, dir, "predictor");
    joined(&predictor);
    let _camera = camera(&t, dir);

    eventually("the first changes", || (changes(dir, "crashy.db").len() >= 2).then_some(()));
    crashy.kill9();
    let _restarted = recorder(&t, dir, "crashy-again", "crashy.db", "recorder-crashy");

    let key = |c: &Value| {
        (
            c["frame_sequence"].as_u64(),
            c["current"]["name"].to_string(),
            c["previous"]["name"].to_string(),
        )
    };
    let steady = eventually("the steady recorder's changes", || {
        let c = changes(dir, "steady.db");
        (c.len() >= CHANGES).then_some(c)
    });
    assert_slideshow_changes(&steady);
    let want: Vec<_> = steady.iter().map(key).collect();
    let got = eventually("the restarted recorder to catch up", || {
        let c = changes(dir, "crashy.db");
        (c.len() >= CHANGES).then_some(c)
    });
    let got: Vec<_> = got.iter().map(key).collect();
    assert_eq!(got, want, "the same changes, none lost, none doubled");
}

#[test]
fn the_demo_runs_everything_and_ctrl_c_leaves_no_process_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(["demo", "--broker-listen", "127.0.0.1:0", "--hold", "1"])
        .args(["--viewer-listen", &format!("127.0.0.1:{port}"), "--dir"])
        .arg(tmp.path())
        .current_dir(repo(""))
        .env_remove("LOOKOUT_BROKERS")
        .stdout(Stdio::piped())
        .spawn()
        .expect("lookout demo runs");
    let mut demo = Service { name: "demo".into(), child, log: None };
    let stdout = demo.child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Each service's state line, printed again whenever its state changes:
    // "  recorder     Ready  (admin http://127.0.0.1:40123/metrics, pid 4242)".
    let mut pids = BTreeMap::new();
    loop {
        let line = lines.recv_timeout(EVENT_TIMEOUT * 2).expect("the demo reports its services");
        if let Some(pid) =
            line.split("pid ").nth(1).and_then(|p| p.trim_end_matches(')').parse::<u32>().ok())
        {
            let name = line.split_whitespace().next().unwrap().to_owned();
            let previous = pids.insert(name, pid);
            assert!(previous.is_none_or(|p| p == pid), "a service changed pid: {line}");
        }
        if line.contains("Lookout is running") {
            assert!(line.contains(&format!("http://127.0.0.1:{port}/")), "{line}");
            break;
        }
    }
    let names: Vec<&str> = pids.keys().map(String::as_str).collect();
    assert_eq!(names, ["camera", "detector", "logship", "predictor", "recorder", "viewer"]);

    // The viewer shows the slideshow's labels, and the detector's boxes.
    sse_until(port, |v| v.to_string().contains("espresso"));
    sse_until(port, |v| v["objects"].as_array().is_some_and(|o| !o.is_empty()));

    interrupt(demo.child.id());
    let status = demo.child.wait().unwrap();
    assert!(status.success(), "the demo stops cleanly: {status}");
    for pid in pids.into_values() {
        assert!(!alive(pid), "service process {pid} of the {} is still running", demo.name);
    }
}
