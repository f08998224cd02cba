//! Helpers shared by the camera's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use lookout_bus::{Bus, Start, topics};
use lookout_proto::v1::{Encoding, Frame};
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use tokio_util::sync::CancellationToken;

/// The project's sample photos (see `samples/README.md`).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples")
}

/// Sizes of the sample photos, by file name order: chelsea.png, coffee.png, rocket.jpg.
pub const PHOTO_SIZES: [(u32, u32); 3] = [(451, 300), (600, 400), (640, 427)];

/// Fails the test (never skips it) when ffmpeg is missing.
pub fn require_ffmpeg() {
    let found = Command::new("ffmpeg").arg("-version").output().is_ok_and(|o| o.status.success());
    assert!(
        found,
        "this test needs ffmpeg on PATH and it was not found: install it \
         (Debian/Ubuntu: apt-get install ffmpeg; .ci/run installs it)"
    );
}

/// Makes a test-pattern video with ffmpeg: `seconds` long at `fps`, `width`x`height`.
pub fn make_video(
    dir: &Path,
    name: &str,
    width: u32,
    height: u32,
    fps: u32,
    seconds: u32,
) -> PathBuf {
    require_ffmpeg();
    let out = dir.join(name);
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size={width}x{height}:rate={fps}"))
        .args(["-t", &seconds.to_string(), "-pix_fmt", "yuv420p"])
        .arg(&out)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg made {name}");
    out
}

/// Every frame on this test's frames topic, read from the beginning of each partition up to
/// its current end, sorted by sequence number, with the partition each was on.
pub async fn read_frames(t: &TestBus) -> Vec<(i32, Frame)> {
    read_frames_from(t.bus("lookout-test")).await
}

/// [`read_frames`] through any bus.
pub async fn read_frames_from(bus: Bus) -> Vec<(i32, Frame)> {
    let topic = bus.topic_name(topics::FRAMES.name());
    let reader = bus
        .reader(&topic)
        .start(Start::Beginning)
        .open(&CancellationToken::new())
        .await
        .expect("the frames topic can be read")
        .expect("not shut down");
    let mut end: HashMap<i32, i64> = reader
        .starts()
        .iter()
        .filter(|s| s.high > s.offset)
        .map(|s| (s.partition, s.high))
        .collect();
    let mut frames = Vec::new();
    while !end.is_empty() {
        let m = tokio::time::timeout(EVENT_TIMEOUT, reader.recv())
            .await
            .expect("the frames on the topic could be read back")
            .expect("no read error");
        let frame = m.decode::<Frame>().expect("a Frame").message;
        if end.get(&m.partition).is_some_and(|high| m.offset + 1 >= *high) {
            end.remove(&m.partition);
        }
        frames.push((m.partition, frame));
    }
    frames.sort_by_key(|(_, f)| f.sequence);
    frames
}

/// Decodes a frame's JPEG and checks it is a JPEG of the size the frame says.
pub fn decoded_size(frame: &Frame) -> (u32, u32) {
    assert_eq!(frame.encoding, i32::from(Encoding::Jpeg));
    assert!(frame.data.starts_with(&[0xFF, 0xD8]), "JPEG data");
    let img = image::load_from_memory_with_format(&frame.data, image::ImageFormat::Jpeg)
        .expect("the frame decodes");
    assert_eq!(
        (img.width(), img.height()),
        (frame.width, frame.height),
        "Frame.width/height are the JPEG's"
    );
    (img.width(), img.height())
}

/// The capture time of a frame.
pub fn captured_at(frame: &Frame) -> SystemTime {
    lookout_proto::system_time(frame.capture_time.as_ref().expect("capture time"))
        .expect("valid time")
}

/// Checks sequence numbers: strictly increasing, and consecutive within one run.
pub fn assert_consecutive(frames: &[(i32, Frame)]) {
    for w in frames.windows(2) {
        assert_eq!(w[1].1.sequence, w[0].1.sequence + 1, "consecutive sequence numbers");
    }
}
