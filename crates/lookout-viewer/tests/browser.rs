//! The whole live path in a real browser: embedded broker, the real predictors (the classifier
//! and the detector, each its own consumer group), the viewer, and headless Chromium (Debian's
//! `chromium`, driven by the npm package `playwright-core`, which this test installs under the
//! target directory) opening the page. The viewer has a token: the page is refused without it
//! and works through the browser's sign-in with it.
//!
//! Needs `/usr/bin/chromium` (or `LOOKOUT_CHROMIUM`), `node` and `npm`; `.ci/run` installs
//! them. A missing browser fails the test: it never passes without having looked.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use image::{codecs::jpeg::JpegEncoder, imageops::FilterType};
use lookout_bus::{Bus, HandlerError, Incoming, topics};
use lookout_predictor::PredictorArgs;
use lookout_proto::v1::{Prediction, PredictionChange, SkipReason};
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use lookout_viewer::ViewerArgs;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use common::{artifacts, chromium, frame, playwright_core, repo};

/// A sample photo as a 640×480 camera frame.
fn camera_jpeg(name: &str) -> (Bytes, u32, u32) {
    let img = image::open(repo(&format!("samples/{name}"))).expect("sample opens");
    let img = img.resize_to_fill(640, 480, FilterType::Triangle).into_rgb8();
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(&mut buf, 85).encode_image(&img).expect("encodes");
    (Bytes::from(buf), 640, 480)
}

/// Two cameras: `lobby` alternates between the coffee and the cat photo every 6 s (labels and
/// boxes come through one more hop than frames, so they lag, the detector's most; 6 s leaves
/// time for them to agree on a loaded machine),
/// `kitchen` shows the coffee all the time (its label and boxes always match its image, however
/// late they come).
async fn cameras(bus: Bus, shutdown: CancellationToken) {
    let frames = bus.publisher(&topics::FRAMES);
    let lobby = [camera_jpeg("coffee.png"), camera_jpeg("chelsea.png")];
    let kitchen = camera_jpeg("coffee.png");
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    for i in 0u64.. {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let photo = &lobby[(i / 24 % 2) as usize];
        frames.send(&frame("lobby", i, photo)).await.expect("frame published");
        if i % 2 == 0 {
            frames.send(&frame("kitchen", i / 2, &kitchen)).await.expect("frame published");
        }
    }
}

/// Per camera and model name, the newest prediction and its frame sequence.
type Newest = HashMap<(String, String), (u64, Prediction)>;

/// Stands in for the recorder: publishes a change whenever a camera's top label changes, per
/// model; predictions without a label (skipped, or a detector that found nothing) change
/// nothing.
async fn changes(bus: Bus, shutdown: CancellationToken) {
    let publisher = bus.publisher(&topics::CHANGES);
    let current: Arc<Mutex<Newest>> = Arc::default();
    let ids = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let handler = move |p: Incoming<Prediction>| {
        let p = p.message;
        let mut change = None;
        if p.skipped() == SkipReason::Unspecified && !p.top_k.is_empty() {
            let mut current = current.lock().unwrap();
            let key = (p.camera_id.clone(), p.model.clone().unwrap_or_default().name);
            let previous = current.get(&key);
            if previous.is_none_or(|(seq, _)| *seq < p.frame_sequence) {
                let before = previous.and_then(|(_, b)| b.top_k.first().cloned());
                let now = p.top_k.first().cloned();
                if before.as_ref().map(|l| &l.name) != now.as_ref().map(|l| &l.name) {
                    change = Some(PredictionChange {
                        camera_id: p.camera_id.clone(),
                        frame_sequence: p.frame_sequence,
                        previous: before,
                        current: now,
                        model: p.model.clone(),
                        time: p.capture_time,
                        change_id: ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
                        snapshot_missing: false,
                        ..Default::default()
                    });
                }
                current.insert(key, (p.frame_sequence, p));
            }
        }
        let publisher = publisher.clone();
        async move {
            if let Some(c) = change {
                publisher.send(&c).await.map_err(|e| HandlerError::Transient(e.to_string()))?;
            }
            Ok(())
        }
    };
    bus.live(&topics::PREDICTIONS)
        .run(handler, shutdown)
        .await
        .expect("changes follow predictions");
}

/// The viewer's `--auth-token`: the page, its streams and its events work through the
/// browser's sign-in.
const TOKEN: &str = "browser-test-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_live_video_and_labels_in_chromium() {
    // Missing browser parts fail the test before anything starts.
    chromium();
    playwright_core();
    let out = artifacts();
    for name in ["viewer.png", "viewer-phone.png", "viewer-overlay.png", "viewer-failure.png"] {
        let _ = std::fs::remove_file(out.join(name));
    }

    let t = TestBus::start();
    t.create_registry_topics().await;
    let shutdown = CancellationToken::new();
    let mut predictor_args = PredictorArgs::for_model(repo("models/efficientnet-lite0/model.toml"));
    predictor_args.max_frame_age = Duration::from_secs(2);
    let predictor = tokio::spawn(lookout_predictor::run(
        predictor_args,
        t.bus("lookout-predictor"),
        shutdown.clone(),
    ));
    let mut detector_args = PredictorArgs::for_model(repo("models/ssdlite-mobilenet-v2-coco"));
    detector_args.max_frame_age = Duration::from_secs(2);
    detector_args.group = "detector".into();
    let detector = tokio::spawn(lookout_predictor::run(
        detector_args,
        t.bus("lookout-detector"),
        shutdown.clone(),
    ));
    let recorder = tokio::spawn(changes(t.bus("lookout-recorder"), shutdown.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let viewer_args = ViewerArgs {
        listen: listener.local_addr().unwrap(),
        max_clients: 16,
        max_cameras: 16,
        overlay_default: false,
        overlay_quality: 80,
        camera_idle: Duration::from_secs(120),
        history: 1000,
        auth_token: TOKEN.to_owned(),
        max_connections: 512,
        header_timeout: Duration::from_secs(10),
        write_timeout: Duration::from_secs(20),
        tls_cert: None,
        tls_key: None,
    };
    let viewer = tokio::spawn(lookout_viewer::run(
        viewer_args,
        listener,
        t.bus("lookout-viewer"),
        shutdown.clone(),
    ));
    let camera = tokio::spawn(cameras(t.bus("lookout-camera"), shutdown.clone()));

    let step_timeout = EVENT_TIMEOUT.as_millis().to_string();
    let args = [url.as_str(), "lobby", "espresso", "cat", "kitchen"].map(std::ffi::OsStr::new);
    let result = common::browser_check(
        "viewer.cjs",
        args.into_iter().chain([out.as_os_str(), step_timeout.as_ref()]),
        &[("VIEWER_TOKEN", TOKEN)],
        EVENT_TIMEOUT * 5,
    )
    .await;
    assert_eq!(result["without_token"]["status"], 401, "{result}");
    assert!(
        result["without_token"]["challenge"].as_str().is_some_and(|c| c.starts_with("Basic ")),
        "the browser is asked for the token: {result}"
    );
    assert!(result["label"].as_str().unwrap().contains("espresso"), "{result}");
    assert_ne!(result["image_signatures"][0], result["image_signatures"][1], "{result}");
    let tiles = result["tiles"].as_array().unwrap();
    assert!(tiles.iter().any(|t| t == "lobby") && tiles.iter().any(|t| t == "kitchen"), "{result}");
    assert!(!result["changes"].as_array().unwrap().is_empty(), "{result}");
    // The detector's box for the cat photo, drawn over the live image with its label.
    let cat = &result["object"];
    assert_eq!(cat["label"], "cat", "{result}");
    assert!(cat["tag"].as_str().unwrap().starts_with("cat "), "{result}");
    let (w, h) = (cat["width"].as_f64().unwrap(), cat["height"].as_f64().unwrap());
    let (iw, ih) = (cat["image_width"].as_f64().unwrap(), cat["image_height"].as_f64().unwrap());
    assert!(w > 0.5 * iw && h > 0.5 * ih, "the cat box covers most of the image: {result}");

    let screenshot = out.join("viewer.png");
    let png = image::open(&screenshot).expect("the screenshot is a PNG");
    assert_eq!(png.width(), 1280);
    eprintln!("screenshot: {}", screenshot.display());

    shutdown.cancel();
    camera.await.unwrap();
    recorder.await.unwrap();
    viewer.await.unwrap().expect("the viewer stops cleanly");
    predictor.await.unwrap().expect("the predictor stops cleanly");
    detector.await.unwrap().expect("the detector stops cleanly");
}
