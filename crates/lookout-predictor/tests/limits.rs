//! The real predictor process against frames built to sink it: strips of 1 × 65,000 and
//! 65,000 × 1 pixels (their full resize would be gigabytes) and a PNG labelled JPEG. Each is
//! refused with its reason, the process's peak resident memory stays under 300 MB, the next
//! normal frame is labelled, and SIGTERM stops it cleanly.

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::SystemTime,
};

use image::{RgbImage, codecs::jpeg::JpegEncoder};
use lookout_bus::topics;
use lookout_proto::v1::{Encoding, Frame, Prediction, SkipReason};
use lookout_test_util::{EVENT_TIMEOUT, TestBus};

const MAX_RESIDENT_BYTES: u64 = 300 << 20;

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let img =
        RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 251) as u8, (y % 241) as u8, 90]));
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(&mut buf, 90).encode_image(&img).expect("encodes");
    buf
}

fn frame(seq: u64, data: Vec<u8>, width: u32, height: u32) -> Frame {
    Frame {
        camera_id: "sink".into(),
        sequence: seq,
        capture_time: Some(lookout_proto::timestamp(SystemTime::now())),
        width,
        height,
        encoding: Encoding::Jpeg.into(),
        data: data.into(),
    }
}

/// `VmHWM` (peak resident set) of a process, in bytes.
fn peak_resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc is there");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in status");
    let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number");
    kb * 1024
}

#[allow(unsafe_code)] // kill(2): the test plays the orchestrator stopping the service.
fn sigterm(child: &Child) {
    // SAFETY: kill(2) with a pid this test started and still owns.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strips_and_pngs_are_refused_within_300_mb_and_the_next_frame_is_labelled() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let predictions = t.collect(topics::PREDICTIONS.name());
    let mut child = Guard(
        Command::new(env!("CARGO_BIN_EXE_lookout-predictor"))
            .args(t.child_args())
            .args(["--model", common::manifest().to_str().unwrap(), "--max-frame-age", "0"])
            .args(["--shutdown-grace", "10s"])
            .stdout(Stdio::null())
            .spawn()
            .expect("lookout-predictor runs"),
    );

    let frames = t.bus("lookout-camera").publisher(&topics::FRAMES);
    let tall = jpeg(1, 65_000);
    let wide = jpeg(65_000, 1);
    assert!(
        tall.len() < 200_000 && wide.len() < 200_000,
        "small files: {} {}",
        tall.len(),
        wide.len()
    );
    let (cat, w, h) = common::sample_jpeg("chelsea.png");
    let mut png = Vec::new();
    image::open(common::repo("samples/chelsea.png"))
        .unwrap()
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    frames.send(&frame(1, tall, 1, 65_000)).await.unwrap();
    frames.send(&frame(2, wide, 65_000, 1)).await.unwrap();
    frames.send(&frame(3, png, w, h)).await.unwrap();
    frames.send(&frame(4, cat, w, h)).await.unwrap();

    predictions.wait_for(4).await;
    let mut got: Vec<Prediction> = predictions.decoded();
    got.sort_by_key(|p| p.frame_sequence);
    let reasons: Vec<(u64, SkipReason)> =
        got.iter().map(|p| (p.frame_sequence, p.skipped())).collect();
    assert_eq!(
        reasons,
        vec![
            (1, SkipReason::Unsupported),
            (2, SkipReason::Unsupported),
            (3, SkipReason::Undecodable),
            (4, SkipReason::Unspecified),
        ]
    );
    let top3: Vec<&str> = got[3].top_k.iter().take(3).map(|l| l.name.as_str()).collect();
    assert!(top3.iter().any(|n| n.contains("cat") || *n == "tabby"), "cat in top 3: {top3:?}");

    let peak = peak_resident(child.0.id());
    assert!(peak < MAX_RESIDENT_BYTES, "peak resident memory {} MB", peak >> 20);
    eprintln!("predictor peak resident memory: {} MB", peak >> 20);

    sigterm(&child.0);
    let status = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                return status;
            }
            // Polling the child: std has no async wait on a process.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the predictor exits after SIGTERM");
    assert!(status.success(), "stopped within the shutdown grace: {status}");
}
