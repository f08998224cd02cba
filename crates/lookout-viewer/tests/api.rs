//! The router without a socket: the API, the page's files and the error cases.

mod common;

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode, header},
};
use http_body_util::BodyExt as _;
use lookout_proto::v1::{Label, PredictionChange};
use lookout_test_util::EVENT_TIMEOUT;
use lookout_viewer::{ViewerConfig, ViewerState, app};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use common::{Multipart, frame, prediction, sample_jpeg};

fn state(config: ViewerConfig) -> ViewerState {
    ViewerState::new(config, CancellationToken::new())
}

async fn get(app: &Router, path: &str) -> axum::response::Response {
    let req = Request::get(path).body(Body::empty()).unwrap();
    app.clone().oneshot(req).await.unwrap()
}

async fn text(app: &Router, path: &str) -> (StatusCode, String) {
    let res = get(app, path).await;
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn json(app: &Router, path: &str) -> serde_json::Value {
    let (status, body) = text(app, path).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn cameras_lists_every_camera_with_frame_and_label() {
    let s = state(ViewerConfig::default());
    let coffee = sample_jpeg("coffee.png");
    s.on_frame(frame("kitchen", 1, &coffee));
    s.on_frame(frame("kitchen", 2, &coffee));
    s.on_prediction(&prediction("kitchen", 2, "espresso", 0.82));
    s.on_prediction(&prediction("porch", 9, "tabby", 0.4));
    let app = app(s);

    let cams = json(&app, "/api/cameras").await;
    let cams = cams.as_array().unwrap();
    assert_eq!(cams.len(), 2);
    let kitchen = &cams[0];
    assert_eq!(kitchen["id"], "kitchen");
    assert_eq!(kitchen["sequence"], 2);
    assert_eq!(kitchen["width"], coffee.1);
    assert_eq!(kitchen["height"], coffee.2);
    assert!(kitchen["capture_ms"].as_i64().unwrap() > 0);
    assert!(kitchen["received_ms"].as_i64().unwrap() > 0);
    assert!(kitchen["fps"].as_f64().unwrap() >= 0.0);
    assert_eq!(kitchen["label"]["name"], "espresso");
    assert!((kitchen["label"]["score"].as_f64().unwrap() - 0.82).abs() < 1e-6);
    assert_eq!(kitchen["label"]["sequence"], 2);
    let porch = &cams[1];
    assert_eq!(porch["id"], "porch");
    assert!(porch["sequence"].is_null(), "a camera known only from a prediction has no frame");
    assert_eq!(porch["label"]["name"], "tabby");
}

#[tokio::test]
async fn out_of_order_predictions_never_step_back() {
    let s = state(ViewerConfig::default());
    let mut events = s.subscribe_events();
    let app = app(s.clone());
    for (seq, label) in [(10, "espresso"), (7, "tabby"), (9, "tiger cat"), (10, "tabby")] {
        s.on_prediction(&prediction("cam", seq, label, 0.5));
        let cams = json(&app, "/api/cameras").await;
        assert_eq!(cams[0]["label"]["name"], "espresso", "after seq {seq}");
        assert_eq!(cams[0]["label"]["sequence"], 10);
    }
    s.on_prediction(&prediction("cam", 11, "cup", 0.6));
    assert_eq!(json(&app, "/api/cameras").await[0]["label"]["name"], "cup");

    // Only the predictions that became the label were announced.
    let mut announced = Vec::new();
    while let Ok(e) = events.try_recv() {
        assert_eq!(e.kind, "prediction");
        let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        announced.push((v["sequence"].as_u64().unwrap(), v["label"].as_str().unwrap().to_owned()));
    }
    assert_eq!(announced, vec![(10, "espresso".into()), (11, "cup".into())]);
}

#[tokio::test]
async fn unknown_camera_is_404_naming_the_cameras_that_exist() {
    let s = state(ViewerConfig::default());
    let app = app(s.clone());
    let (status, body) = text(&app, "/cameras/garage/stream.mjpeg").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("garage") && body.contains("no camera"), "{body}");

    let jpeg = sample_jpeg("chelsea.png");
    s.on_frame(frame("lobby", 1, &jpeg));
    s.on_frame(frame("porch", 1, &jpeg));
    for path in ["/cameras/garage/stream.mjpeg", "/cameras/garage/snapshot.jpg"] {
        let (status, body) = text(&app, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(body.contains("\"garage\""), "{body}");
        assert!(body.contains("lobby, porch"), "the body lists the cameras: {body}");
    }
    // Camera ids are path segments, decoded.
    s.on_frame(frame("front door", 1, &jpeg));
    assert_eq!(get(&app, "/cameras/front%20door/snapshot.jpg").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn snapshot_passes_the_jpeg_through_untouched() {
    let s = state(ViewerConfig::default());
    let jpeg = sample_jpeg("rocket.jpg");
    s.on_frame(frame("pad", 41, &jpeg));
    s.on_prediction(&prediction("later", 1, "x", 0.1));
    let app = app(s);
    let res = get(&app, "/cameras/pad/snapshot.jpg").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "image/jpeg");
    assert_eq!(res.headers()["x-lookout-sequence"], "41");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, jpeg.0, "the bytes are the camera's");
    let (status, body) = text(&app, "/cameras/later/snapshot.jpg").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test]
async fn static_files_are_a_fixed_table_and_traversal_is_404() {
    let app = app(state(ViewerConfig::default()));
    let res = get(&app, "/").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    assert!(res.headers().contains_key(header::CONTENT_SECURITY_POLICY));
    assert!(!res.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN), "no CORS");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let html = String::from_utf8_lossy(&body);
    assert!(html.contains("/static/app.js") && html.contains("/static/style.css"));

    for (path, ty) in [
        ("/static/app.js", "text/javascript"),
        ("/static/style.css", "text/css"),
        ("/static/favicon.svg", "image/svg+xml"),
    ] {
        let res = get(&app, path).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert!(res.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with(ty));
    }
    for path in [
        "/static/",
        "/static/APP.JS",
        "/static/index.html",
        "/static/..%2FCargo.toml",
        "/static/..%2F..%2F..%2FCargo.toml",
        "/static/%2e%2e/src/lib.rs",
        "/static/../Cargo.toml",
        "/static/../../etc/passwd",
        "/static/app.js/..",
        "/static/..%5CCargo.toml",
        "/nothing-here",
    ] {
        let (status, body) = text(&app, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(!body.contains("[package]"), "{path}");
    }
}

#[tokio::test]
async fn changes_are_listed_newest_first() {
    let s = state(ViewerConfig::default());
    let app = app(s.clone());
    assert_eq!(json(&app, "/api/changes").await, serde_json::json!([]));
    let label = |name: &str, score| Some(Label { class_id: 0, name: name.into(), score });
    s.on_change(&PredictionChange {
        camera_id: "cam".into(),
        frame_sequence: 3,
        previous: None,
        current: label("tabby", 0.6),
        change_id: 1,
        ..Default::default()
    });
    s.on_change(&PredictionChange {
        camera_id: "cam".into(),
        frame_sequence: 8,
        previous: label("tabby", 0.6),
        current: label("espresso", 0.9),
        change_id: 2,
        ..Default::default()
    });
    let changes = json(&app, "/api/changes").await;
    assert_eq!(changes[0]["sequence"], 8);
    assert_eq!(changes[0]["previous"]["name"], "tabby");
    assert_eq!(changes[0]["current"]["name"], "espresso");
    assert_eq!(changes[1]["sequence"], 3);
    assert!(changes[1]["previous"].is_null());
}

#[tokio::test]
async fn streams_beyond_the_client_cap_get_503() {
    let s = state(ViewerConfig { max_clients: 2, ..ViewerConfig::default() });
    s.on_frame(frame("cam", 1, &sample_jpeg("chelsea.png")));
    let app = app(s);
    let first = get(&app, "/cameras/cam/stream.mjpeg").await;
    assert_eq!(first.status(), StatusCode::OK);
    let events = get(&app, "/api/events").await;
    assert_eq!(events.status(), StatusCode::OK);
    for path in ["/cameras/cam/stream.mjpeg", "/cameras/cam/stream.mjpeg?overlay=1", "/api/events"]
    {
        let (status, body) = text(&app, path).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(body.contains("too many clients"), "{body}");
    }
    // The API stays available at the cap.
    assert_eq!(get(&app, "/api/cameras").await.status(), StatusCode::OK);
    // A client that leaves frees its place.
    drop(first);
    assert_eq!(get(&app, "/cameras/cam/stream.mjpeg").await.status(), StatusCode::OK);
    drop(events);
}

/// Reads the next part of a body that is being streamed.
async fn next_part(body: &mut Body, parser: &mut Multipart) -> common::Part {
    tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            if let Some(p) = parser.next_part() {
                return p;
            }
            let frame = body.frame().await.expect("the stream goes on").unwrap();
            if let Ok(data) = frame.into_data() {
                parser.push(&data);
            }
        }
    })
    .await
    .expect("a part arrives")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_is_rendered_once_per_frame_for_all_clients() {
    let s = state(ViewerConfig::default());
    let photo = sample_jpeg("coffee.png");
    s.on_frame(frame("cam", 1, &photo));
    s.on_prediction(&prediction("cam", 1, "espresso", 0.9));
    let app = app(s.clone());

    let mut clients = Vec::new();
    for _ in 0..3 {
        let res = get(&app, "/cameras/cam/stream.mjpeg?overlay=1").await;
        assert_eq!(res.status(), StatusCode::OK);
        let parser = Multipart::new(res.headers()[header::CONTENT_TYPE].to_str().unwrap());
        clients.push((res.into_body(), parser));
    }
    let mut plain = get(&app, "/cameras/cam/stream.mjpeg").await.into_body();
    let mut plain_parser = Multipart::new("multipart/x-mixed-replace; boundary=lookoutframe");

    const FRAMES: u64 = 5;
    let mut last_overlay = Vec::new();
    for seq in 1..=FRAMES {
        if seq > 1 {
            s.on_frame(frame("cam", seq, &photo));
        }
        let mut bodies = Vec::new();
        for (body, parser) in &mut clients {
            let part = loop {
                let p = next_part(body, parser).await;
                if p.sequence() == seq {
                    break p;
                }
            };
            bodies.push(part.body);
        }
        assert!(bodies.windows(2).all(|w| w[0] == w[1]), "every overlay client gets one rendering");
        assert_ne!(bodies[0], photo.0, "the overlay frame is not the camera's");
        let img = image::load_from_memory(&bodies[0]).expect("a JPEG").into_rgb8();
        assert_eq!((img.width(), img.height()), (photo.1, photo.2));
        let p = next_part(&mut plain, &mut plain_parser).await;
        assert_eq!(p.sequence(), seq);
        assert_eq!(p.body, photo.0, "plain clients get the camera's bytes");
        last_overlay = bodies.swap_remove(0);
    }
    assert_eq!(s.overlay_renders("cam"), Some(FRAMES), "one rendering per frame, not per client");

    // A new top label is drawn at once into the current frame, still once for everybody.
    s.on_prediction(&prediction("cam", FRAMES, "cup", 0.7));
    let mut bodies = Vec::new();
    for (body, parser) in &mut clients {
        let part = next_part(body, parser).await;
        assert_eq!(part.sequence(), FRAMES, "the same frame, redrawn");
        bodies.push(part.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_ne!(bodies[0], last_overlay, "the new label is drawn");
    assert_eq!(s.overlay_renders("cam"), Some(FRAMES + 1));
}
