//! The `lookout-camera` binary as a user runs it.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
};

use common::{assert_consecutive, decoded_size, read_frames};
use lookout_test_util::{EVENT_TIMEOUT, TestBus};

/// Kills the child when the test ends, however it ends.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn camera() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lookout-camera"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LOOKOUT_") {
            c.env_remove(key);
        }
    }
    c.env("RUST_LOG", "info");
    c
}

#[test]
fn list_without_a_camera_says_so_plainly_and_fails() {
    let out = camera().arg("--list").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // A machine with a webcam: each is listed with its formats.
        assert!(stdout.contains("webcam:") && stdout.contains("/dev/video"), "{stdout}");
    } else {
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr.contains("no cameras were found"), "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_webcam_fails_naming_what_exists() {
    let t = TestBus::start();
    let out =
        camera().args(t.child_args()).args(["--source", "webcam:/dev/video9"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("webcam /dev/video9 was not found"), "{stderr}");
    assert!(
        stderr.contains("no cameras were found") || stderr.contains("cameras found: webcam:"),
        "{stderr}"
    );
}

#[test]
fn bad_options_are_usage_errors() {
    for (args, says) in [
        (vec!["--source", "tape:1"], "webcam:N"),
        (vec![], "--source"),
        (vec!["--source", "file:/nonexistent/clip.mp4"], "no such file"),
        (vec!["--source", "synthetic", "--loop"], "--loop"),
        (vec!["--source", "synthetic", "--jpeg-quality", "0"], "jpeg-quality"),
        (vec!["--source", "images:/nonexistent/photos"], "no images"),
    ] {
        let out = camera().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(stderr.lines().count() <= 6, "a short message: {stderr}");
    }
}

#[test]
fn help_documents_the_sources_and_the_sequence_scheme() {
    let out = camera().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "webcam:N",
        "file:PATH",
        "rtsp://",
        "images:DIR",
        "synthetic",
        "start_unix_millis * 1000 + frame_index",
        "LOOKOUT_CAMERA_SOURCE",
        "LOOKOUT_CAMERA_MAX_WIDTH",
        "LOOKOUT_BROKERS",
    ] {
        assert!(help.contains(needle), "--help mentions {needle}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_publishes_frames_configured_from_the_environment() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let out = camera()
        .args(t.child_args())
        .env("LOOKOUT_CAMERA_SOURCE", "synthetic")
        .env("LOOKOUT_CAMERA_ID", "porch")
        .env("LOOKOUT_CAMERA_FRAMES", "5")
        .env("LOOKOUT_CAMERA_FPS", "25")
        .env("LOOKOUT_CAMERA_WIDTH", "200")
        .env("LOOKOUT_CAMERA_HEIGHT", "100")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let frames = read_frames(&t).await;
    assert_eq!(frames.len(), 5);
    assert_consecutive(&frames);
    for (_, f) in &frames {
        assert_eq!(f.camera_id, "porch");
        assert_eq!(decoded_size(f), (200, 100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_is_shrunk_to_fit_and_reported_once() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let mut cmd = camera();
    cmd.args(t.child_args())
        .args(["--source", "synthetic", "--fps", "20", "--frames", "3", "--log-format", "json"])
        .args(["--kafka-opt", "message.max.bytes=8000"])
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let _guard = Guard(child);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Every line the camera logs until it exits after its three frames.
    let mut reports = Vec::new();
    while let Ok(line) = rx.recv_timeout(EVENT_TIMEOUT) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if v["message"].as_str().is_some_and(|m| m.contains("message.max.bytes")) {
            reports.push(v);
        }
    }
    assert_eq!(reports.len(), 1, "one warning for the run: {reports:?}");
    let report = &reports[0];
    assert_eq!(report["level"], "WARN");
    assert_eq!(report["limit"], 8000);
    assert!(report["size"].as_u64().unwrap() > 8000, "{report}");
    assert!(report["new_size"].as_u64().unwrap() < 8000, "{report}");
    assert_eq!(report["camera_id"], "synthetic");

    let frames = read_frames(&t).await;
    assert_eq!(frames.len(), 3, "every frame was published");
    for (_, f) in &frames {
        assert!(f.data.len() < 8000, "{} bytes", f.data.len());
        decoded_size(f);
    }
}
