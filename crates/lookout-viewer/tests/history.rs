//! Each camera's history of changes, with thumbnails: read back from the changes topic when the
//! viewer starts (so it survives a restart), served newest first a page at a time, older pages
//! read from the topic beyond what the viewer keeps; and shown by the page in headless Chromium
//! after a restart, older changes loading as the list scrolls.

mod common;

use std::time::Duration;

use bytes::Bytes;
use image::{codecs::jpeg::JpegEncoder, imageops::FilterType};
use lookout_bus::topics;
use lookout_proto::v1::{Label, ModelRef, PredictionChange};
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use lookout_viewer::ViewerArgs;
use serde_json::Value;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use common::{artifacts, chromium, playwright_core, repo};

/// Changes of the `porch` camera on the topic; the viewer keeps fewer in memory at start.
const PORCH: usize = 30;
/// Changes read back at start (`--history`): older ones must come from the topic.
const READ_BACK: u64 = 12;

/// A thumbnail of a sample photo, as the recorder makes them (160 wide, JPEG).
fn thumbnail(name: &str) -> Bytes {
    let img = image::open(repo(&format!("samples/{name}"))).unwrap();
    let small = img.resize(160, 160, FilterType::Triangle).into_rgb8();
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 70).encode_image(&small).unwrap();
    Bytes::from(out)
}

/// `porch` alternates between the cat and the coffee photo, `attic` (no thumbnails: its
/// snapshots were missing) changes in between.
async fn publish_changes(t: &TestBus) -> Vec<PredictionChange> {
    let bus = t.bus("lookout-recorder");
    let publisher = bus.publisher(&topics::CHANGES);
    let photos = [("chelsea.png", "tabby"), ("coffee.png", "espresso")];
    let thumbs: Vec<Bytes> = photos.iter().map(|(p, _)| thumbnail(p)).collect();
    let mut porch = Vec::new();
    for i in 0..PORCH {
        let (now, before) = (i % 2, (i + 1) % 2);
        let change = PredictionChange {
            camera_id: "porch".into(),
            frame_sequence: 100 + i as u64 * 10,
            previous: (i > 0).then(|| Label {
                class_id: 1,
                name: photos[before].1.into(),
                score: 0.8,
            }),
            current: Some(Label { class_id: 2, name: photos[now].1.into(), score: 0.9 }),
            model: Some(ModelRef {
                name: "efficientnet-lite0".into(),
                version: "1".into(),
                ..Default::default()
            }),
            time: Some(lookout_proto::timestamp_from_millis(1_764_000_000_000 + i as i64 * 1000)),
            change_id: i as i64 + 1,
            snapshot_missing: false,
            thumbnail: thumbs[now].clone(),
        };
        publisher.send(&change).await.unwrap();
        porch.push(change);
        if i % 3 == 0 {
            let attic = PredictionChange {
                camera_id: "attic".into(),
                frame_sequence: i as u64,
                current: Some(Label { class_id: 3, name: "dust".into(), score: 0.5 }),
                snapshot_missing: true,
                ..Default::default()
            };
            publisher.send(&attic).await.unwrap();
        }
    }
    porch
}

struct Viewer {
    url: String,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), lookout_viewer::ViewerError>>,
}

impl Viewer {
    async fn start(t: &TestBus) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let args = ViewerArgs {
            listen: addr,
            max_clients: 16,
            max_cameras: 16,
            overlay_default: false,
            overlay_quality: 80,
            camera_idle: Duration::from_secs(120),
            history: READ_BACK,
            auth_token: String::new(),
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(20),
            tls_cert: None,
            tls_key: None,
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(lookout_viewer::run(
            args,
            listener,
            t.bus("lookout-viewer"),
            shutdown.clone(),
        ));
        Self { url: format!("http://{addr}"), shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(EVENT_TIMEOUT, self.task)
            .await
            .expect("the viewer stops")
            .unwrap()
            .expect("the viewer stops cleanly");
    }

    async fn get(&self, path: &str) -> (u16, Bytes) {
        let client = reqwest::Client::new();
        let r = client.get(format!("{}{path}", self.url)).send().await.expect("the viewer answers");
        (r.status().as_u16(), r.bytes().await.unwrap())
    }

    async fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// Waits until the camera's history has been read back.
    async fn history_ready(&self, camera: &str) {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let page = self.json(&format!("/api/cameras/{camera}/history?limit=1")).await;
            if !page["changes"].as_array().unwrap().is_empty() {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the history was not read back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn sequences(changes: &Value) -> Vec<u64> {
    changes.as_array().unwrap().iter().map(|c| c["sequence"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cameras_history_survives_a_restart_and_pages_back_through_the_topic() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let porch = publish_changes(&t).await;
    let newest_first: Vec<u64> = porch.iter().rev().map(|c| c.frame_sequence).collect();

    for run in ["first", "restarted"] {
        let viewer = Viewer::start(&t).await;
        viewer.history_ready("porch").await;

        // Page by page, newest first, all of them: the first pages from memory, the rest read
        // back from the topic.
        let mut seen = Vec::new();
        let mut before: Option<i64> = None;
        let mut thumbs = Vec::new();
        loop {
            let path = match before {
                None => "/api/cameras/porch/history?limit=8".to_owned(),
                Some(b) => format!("/api/cameras/porch/history?limit=8&before={b}"),
            };
            let page = viewer.json(&path).await;
            let changes = page["changes"].as_array().unwrap().clone();
            assert!(changes.iter().all(|c| c["camera"] == "porch"), "{run}: {page}");
            seen.extend(sequences(&page["changes"]));
            thumbs.extend(changes.iter().map(|c| {
                assert_eq!(c["thumbnail"], true, "{c}");
                (c["partition"].as_i64().unwrap(), c["offset"].as_i64().unwrap())
            }));
            before = changes.last().map(|c| c["offset"].as_i64().unwrap());
            if !page["more"].as_bool().unwrap() || changes.is_empty() {
                break;
            }
            assert!(seen.len() <= PORCH, "{run}: no change twice: {seen:?}");
        }
        assert_eq!(seen, newest_first, "{run}: every change of the camera, newest first");

        // Thumbnails, from memory (the newest) and from the topic (the oldest).
        for (i, (partition, offset)) in
            [thumbs[0], thumbs[thumbs.len() - 1]].into_iter().enumerate()
        {
            let (status, jpeg) =
                viewer.get(&format!("/api/cameras/porch/history/{partition}/{offset}.jpg")).await;
            assert_eq!(status, 200, "{run}");
            let want = if i == 0 { &porch[PORCH - 1].thumbnail } else { &porch[0].thumbnail };
            assert_eq!(&jpeg, want, "{run}: the change's own thumbnail");
        }
        let (status, _) = viewer.get("/api/cameras/attic/history/0/99999.jpg").await;
        assert_eq!(status, 404, "no such change");
        let attic = viewer.json("/api/cameras/attic/history").await;
        assert!(attic["changes"].as_array().unwrap().iter().all(|c| c["thumbnail"] == false));
        viewer.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_cameras_history_with_thumbnails_after_a_restart_in_chromium() {
    // Missing browser parts fail the test before anything starts.
    chromium();
    playwright_core();
    let out = artifacts();
    let _ = std::fs::remove_file(out.join("viewer-history.png"));
    let t = TestBus::start();
    t.create_registry_topics().await;
    let porch = publish_changes(&t).await;

    // The viewer that saw the changes goes away; a new one starts with an empty memory.
    let first = Viewer::start(&t).await;
    first.history_ready("porch").await;
    first.stop().await;
    let viewer = Viewer::start(&t).await;
    viewer.history_ready("porch").await;

    let args = [format!("{}/", viewer.url), "porch".into(), out.display().to_string()];
    let timeout_ms = EVENT_TIMEOUT.as_millis().to_string();
    let result = common::browser_check(
        "history.cjs",
        args.into_iter().chain([timeout_ms]),
        &[],
        EVENT_TIMEOUT * 3,
    )
    .await;

    // At first a page of thumbnails, newest first, each a loaded image; scrolling down loads
    // the older ones, read back from the topic, until the camera's first change.
    let first_page = result["first_page"].as_u64().unwrap();
    assert!(first_page >= 10, "{result}");
    assert!(first_page < PORCH as u64, "not everything at once: {result}");
    assert_eq!(result["after_scroll"].as_u64().unwrap(), PORCH as u64, "{result}");
    assert_eq!(result["loaded_thumbnails"].as_u64().unwrap(), PORCH as u64, "{result}");
    assert_eq!(result["newest"].as_str().unwrap(), porch[PORCH - 1].current.as_ref().unwrap().name);
    assert_eq!(result["oldest"].as_str().unwrap(), porch[0].current.as_ref().unwrap().name);
    assert_eq!(result["thumbnail_width"].as_u64().unwrap(), 160, "{result}");
    viewer.stop().await;
}
