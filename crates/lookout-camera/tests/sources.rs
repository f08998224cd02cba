//! Each source through the camera's `run`, into an embedded broker, and back.

mod common;

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{
    PHOTO_SIZES, assert_consecutive, captured_at, decoded_size, fixtures, make_video, read_frames,
    require_ffmpeg,
};
use lookout_bus::Bus;
use lookout_camera::{CameraArgs, CameraError, SourceSpec, Summary};
use lookout_service::Readiness;
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use tokio_util::sync::CancellationToken;

async fn bus(t: &TestBus) -> Bus {
    t.create_registry_topics().await;
    Bus::new(lookout_camera::producer_config(t.config("lookout-camera"))).expect("bus")
}

/// Runs the camera until it stops by itself (end of file, `--frames`).
async fn run(t: &TestBus, args: CameraArgs) -> Result<Summary, CameraError> {
    run_with(t, args, Readiness::default()).await
}

async fn run_with(
    t: &TestBus,
    args: CameraArgs,
    readiness: Readiness,
) -> Result<Summary, CameraError> {
    let bus = bus(t).await;
    tokio::time::timeout(
        EVENT_TIMEOUT,
        lookout_camera::run(args, bus, readiness, CancellationToken::new()),
    )
    .await
    .expect("the camera stops by itself")
}

fn args(source: &str) -> CameraArgs {
    CameraArgs::new(source.parse::<SourceSpec>().expect("source parses"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_frames_decode_at_their_size_with_consecutive_sequences() {
    let t = TestBus::start();
    let mut a = args("synthetic");
    a.width = Some(320);
    a.height = Some(240);
    a.fps = Some(50.0);
    a.frames = Some(12);
    let readiness = Readiness::default();
    let summary = run_with(&t, a, readiness.clone()).await.unwrap();
    assert_eq!(readiness.status(), (true, vec![]), "the source check is set once frames flow");
    assert_eq!(summary.published, 12);
    assert_eq!(summary.dropped(), 0);

    let frames = read_frames(&t).await;
    assert_eq!(frames.len(), 12);
    assert_consecutive(&frames);
    let partitions: BTreeSet<i32> = frames.iter().map(|(p, _)| *p).collect();
    assert_eq!(partitions.len(), 6, "consecutive frames spread over every partition");
    for (_, f) in &frames {
        assert_eq!(f.camera_id, "synthetic");
        assert_eq!(decoded_size(f), (320, 240));
    }
    for w in frames.windows(2) {
        assert!(captured_at(&w[1].1) > captured_at(&w[0].1), "capture times increase");
    }
    assert_eq!(summary.first_sequence, Some(frames[0].1.sequence));
    assert_eq!(summary.last_sequence, Some(frames[11].1.sequence));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_width_scales_down_keeping_the_aspect_ratio() {
    let t = TestBus::start();
    let mut a = args("synthetic");
    a.width = Some(640);
    a.height = Some(480);
    a.max_width = Some(160);
    a.no_pace = true;
    a.frames = Some(3);
    a.camera_id = Some("small".into());
    run(&t, a).await.unwrap();
    let frames = read_frames(&t).await;
    assert_eq!(frames.len(), 3);
    for (_, f) in &frames {
        assert_eq!(f.camera_id, "small");
        assert_eq!(decoded_size(f), (160, 120));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_numbers_keep_increasing_across_restarts() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let mut last = 0;
    for _ in 0..3 {
        let mut a = args("synthetic");
        a.width = Some(64);
        a.height = Some(48);
        a.no_pace = true;
        a.frames = Some(5);
        let bus = Bus::new(lookout_camera::producer_config(t.config("lookout-camera"))).unwrap();
        let s = lookout_camera::run(a, bus, Readiness::default(), CancellationToken::new())
            .await
            .unwrap();
        let first = s.first_sequence.unwrap();
        assert!(first > last, "a restarted camera continues above {last}, got {first}");
        last = s.last_sequence.unwrap();
    }
    let frames = read_frames(&t).await;
    assert_eq!(frames.len(), 15);
    for w in frames.windows(2) {
        assert!(w[1].1.sequence > w[0].1.sequence);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_folder_sends_each_photo_at_its_own_size() {
    let t = TestBus::start();
    let mut a = args(&format!("images:{}", fixtures().display()));
    a.no_pace = true;
    a.fps = Some(10.0);
    a.hold = Duration::from_millis(100); // one frame per photo, in frame time
    a.frames = Some(6);
    let summary = run(&t, a).await.unwrap();
    assert_eq!(summary.published, 6);

    let frames = read_frames(&t).await;
    let sizes: Vec<(u32, u32)> = frames.iter().map(|(_, f)| decoded_size(f)).collect();
    let mut expected = PHOTO_SIZES.to_vec();
    expected.extend(PHOTO_SIZES);
    assert_eq!(sizes, expected, "the photos in name order, looping");
    assert!(frames.iter().all(|(_, f)| f.camera_id == "samples"));
    let rocket = std::fs::read(fixtures().join("rocket.jpg")).unwrap();
    assert_eq!(frames[2].1.data.as_ref(), rocket.as_slice(), "a JPEG that fits is sent untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slideshow_changes_image_on_schedule() {
    let t = TestBus::start();
    let hold = Duration::from_millis(400);
    let mut a = args(&format!("images:{}/*", fixtures().display()));
    a.fps = Some(20.0);
    a.hold = hold;
    a.frames = Some(40); // about two seconds: four or five switches
    run(&t, a).await.unwrap();

    let frames = read_frames(&t).await;
    assert_eq!(frames.len(), 40);
    // Switches: (capture time, size) of the first frame of each run of one image.
    let mut switches = Vec::new();
    let mut shown = None;
    for (_, f) in &frames {
        let size = decoded_size(f);
        if shown != Some(size) {
            switches.push((captured_at(f), size));
            shown = Some(size);
        }
    }
    assert!(switches.len() >= 4, "the image changed several times: {}", switches.len());
    for (i, s) in switches.iter().enumerate() {
        assert_eq!(s.1, PHOTO_SIZES[i % 3], "photos come in name order");
    }
    // Monotonic and wall clocks may differ by a few hundred microseconds over a second.
    let slack = Duration::from_millis(2);
    for w in switches.windows(2) {
        let held = w[1].0.duration_since(w[0].0).expect("later");
        assert!(held + slack >= hold, "an image was shown for {held:?}, less than --hold {hold:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_file_round_trips_at_its_own_pace() {
    let dir = tempfile::tempdir().unwrap();
    let video = make_video(dir.path(), "clip.mp4", 320, 240, 10, 2);
    let t = TestBus::start();
    let summary = run(&t, args(&format!("file:{}", video.display()))).await.unwrap();
    assert_eq!(summary.published, 20);
    assert_eq!(summary.dropped(), 0);

    let frames = read_frames(&t).await;
    assert_eq!(frames.len(), 20, "2 s at 10 fps");
    assert_consecutive(&frames);
    for (_, f) in &frames {
        assert_eq!(f.camera_id, "clip");
        assert_eq!(decoded_size(f), (320, 240));
    }
    let span = captured_at(&frames[19].1).duration_since(captured_at(&frames[0].1)).unwrap();
    // 19 frame periods; ffmpeg's -re may run a frame or so early.
    assert!(span >= Duration::from_millis(1700), "paced at the file's rate: 20 frames in {span:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaced_file_loses_no_frame_and_honours_max_height() {
    let dir = tempfile::tempdir().unwrap();
    let video = make_video(dir.path(), "fast.mp4", 320, 240, 10, 2);
    let t = TestBus::start();
    let mut a = args(&format!("file:{}", video.display()));
    a.no_pace = true;
    a.max_height = Some(100);
    let summary = run(&t, a).await.unwrap();
    assert_eq!(summary.published, 20);

    let frames = read_frames(&t).await;
    assert_eq!(frames.len(), 20);
    assert_consecutive(&frames);
    for (_, f) in &frames {
        assert_eq!(decoded_size(f), (133, 100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_file_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let video = make_video(dir.path(), "loop.mp4", 160, 120, 10, 1);
    let t = TestBus::start();
    let mut a = args(&format!("file:{}", video.display()));
    a.no_pace = true;
    a.loop_file = true;
    a.frames = Some(25);
    let summary = run(&t, a).await.unwrap();
    assert_eq!(summary.published, 25, "more frames than the 10 in the file");
    let frames = read_frames(&t).await;
    assert_eq!(frames.len(), 25);
    assert_consecutive(&frames);
}

/// Serves `body` to every HTTP request, then closes the connection; counts connections.
async fn serve_once_per_connection(body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/live.ts", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    let body = Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = Arc::clone(&body);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (url, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_is_reconnected() {
    let dir = tempfile::tempdir().unwrap();
    let clip = make_video(dir.path(), "live.ts", 160, 120, 10, 1);
    let (url, connections) = serve_once_per_connection(std::fs::read(&clip).unwrap()).await;
    let t = TestBus::start();
    let mut a = args(&url);
    a.camera_id = Some("gate".into());
    a.frames = Some(15); // each connection gives at most 10
    let summary = run(&t, a).await.unwrap();
    assert_eq!(summary.published, 15);
    assert!(connections.load(Ordering::SeqCst) >= 2, "the camera reconnected");

    let frames = read_frames(&t).await;
    assert_eq!(frames.len(), 15);
    assert_consecutive(&frames);
    for (_, f) in &frames {
        assert_eq!(f.camera_id, "gate");
        assert_eq!(decoded_size(f), (160, 120));
    }
}

/// A camera bus whose producer sends messages of at most `limit` bytes.
async fn bus_with_limit(t: &TestBus, limit: usize) -> Bus {
    t.create_registry_topics().await;
    let config = lookout_camera::producer_config(
        t.config("lookout-camera").with_opt("message.max.bytes", &limit.to_string()),
    );
    Bus::new(config).expect("bus")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_message_limit_is_encoded_again_at_a_lower_quality() {
    let t = TestBus::start();
    // rocket.jpg (112 kB) would be sent as it is, over the limit; at quality 60 it fits at
    // its own size. The PNGs, encoded at quality 60, are well under the limit.
    let limit = 100_000;
    let rocket = std::fs::metadata(fixtures().join("rocket.jpg")).unwrap().len();
    assert!(rocket > limit as u64);
    let bus = bus_with_limit(&t, limit).await;
    let mut a = args(&format!("images:{}", fixtures().display()));
    a.no_pace = true;
    a.fps = Some(10.0);
    a.hold = Duration::from_millis(100);
    a.jpeg_quality = 60;
    a.frames = Some(6);
    let summary =
        lookout_camera::run(a, bus, Readiness::default(), CancellationToken::new()).await.unwrap();
    assert_eq!(summary.published, 6);
    assert!(summary.shrunk >= 2, "rocket came up twice and was shrunk each time: {summary:?}");
    assert_eq!(summary.dropped(), 0);

    let frames = read_frames(&t).await;
    let sizes: Vec<_> = frames.iter().map(|(_, f)| decoded_size(f)).collect();
    assert_eq!(sizes, PHOTO_SIZES.repeat(2), "every photo at its own size");
    assert_consecutive(&frames);
    for (_, f) in &frames {
        assert!(f.data.len() < limit, "{} bytes", f.data.len());
    }
}

/// A 12-megapixel photo (4000x3000): a sample photo scaled up, with strong noise (sensor noise
/// in poor light) so that even at a low quality it does not fit 1 MB, encoded at quality 92. Returns its path and size in bytes.
fn twelve_megapixel_photo(dir: &std::path::Path) -> (std::path::PathBuf, usize) {
    let sample = image::open(fixtures().join("rocket.jpg")).expect("sample photo").into_rgb8();
    let mut photo =
        image::imageops::resize(&sample, 4000, 3000, image::imageops::FilterType::Triangle);
    let mut state = 0x9e37_79b9_u32;
    for p in photo.pixels_mut() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let [a, b, c, _] = state.to_le_bytes();
        for (v, n) in p.0.iter_mut().zip([a, b, c]) {
            *v = v.saturating_add(n % 96).saturating_sub(48);
        }
    }
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 92)
        .encode_image(&photo)
        .expect("encodes");
    let path = dir.join("twelve-megapixels.jpg");
    std::fs::write(&path, &jpeg).unwrap();
    (path, jpeg.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twelve_megapixel_photo_is_shrunk_until_it_fits_and_published() {
    let t = TestBus::start();
    let dir = tempfile::tempdir().unwrap();
    let (photo, size) = twelve_megapixel_photo(dir.path());
    let bus = bus_with_limit(&t, 1_000_000).await; // librdkafka's default
    let limit = bus.max_message_bytes();
    assert!(size > 2 * limit, "the photo ({size} bytes) is well over the limit");

    let mut a = args(&format!("images:{}", photo.display()));
    a.no_pace = true;
    a.frames = Some(2);
    let summary =
        lookout_camera::run(a, bus, Readiness::default(), CancellationToken::new()).await.unwrap();
    assert_eq!(summary.published, 2);
    // Frames captured while the last ones were published are shrunk too (from the kept result).
    assert!(summary.shrunk >= 2, "{summary:?}");
    assert_eq!(summary.dropped(), 0);

    let frames = read_frames(&t).await;
    assert_eq!(frames.len(), 2);
    let (_, frame) = &frames[0];
    assert!(frame.data.len() < limit, "{} bytes, limit {limit}", frame.data.len());
    let (width, height) = decoded_size(frame);
    assert!((1000..4000).contains(&width), "scaled down, not to a thumbnail: {width}x{height}");
    assert!((width * 3).abs_diff(height * 4) <= 4, "aspect ratio kept: {width}x{height}");
    assert_eq!(frames[1].1.data, frame.data, "the photo held on screen is shrunk once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_cannot_fit_are_dropped_and_counted() {
    let t = TestBus::start();
    let dir = tempfile::tempdir().unwrap();
    let video = make_video(dir.path(), "clip.mp4", 320, 240, 10, 1);
    // librdkafka's smallest message.max.bytes: no JPEG fits in what is left of it.
    let bus = bus_with_limit(&t, 1000).await;
    let mut a = args(&format!("file:{}", video.display()));
    a.no_pace = true;
    let summary = tokio::time::timeout(
        EVENT_TIMEOUT,
        lookout_camera::run(a, bus, Readiness::default(), CancellationToken::new()),
    )
    .await
    .expect("the camera stops at the end of the file")
    .unwrap();
    assert_eq!(summary.captured, 10);
    assert_eq!(summary.published, 0);
    assert_eq!(summary.shrunk, 0);
    assert_eq!(summary.dropped_too_large, 10, "every frame is counted");
    assert!(read_frames(&t).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ffmpeg_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.mp4");
    std::fs::write(&file, b"not really a video").unwrap();
    let t = TestBus::start();
    let mut a = args(&format!("file:{}", file.display()));
    a.ffmpeg = dir.path().join("no-ffmpeg-here");
    let err = run(&t, a).await.unwrap_err();
    assert!(matches!(err, CameraError::FfmpegSpawn { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("camera x") && text.contains("install ffmpeg"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_ffmpeg_cannot_read_is_an_error_with_what_ffmpeg_said() {
    require_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.mp4");
    std::fs::write(&file, b"not really a video").unwrap();
    let t = TestBus::start();
    let err = run(&t, args(&format!("file:{}", file.display()))).await.unwrap_err();
    assert!(matches!(err, CameraError::FfmpegFailed { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("broken.mp4") && text.contains("exit status"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_webcam_names_the_cameras_that_exist() {
    let t = TestBus::start();
    let err = run(&t, args("webcam:7")).await.unwrap_err();
    assert!(matches!(err, CameraError::WebcamNotFound { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("camera webcam-7: webcam /dev/video7 was not found"), "{text}");
    assert!(
        text.contains("no cameras were found") || text.contains("cameras found: webcam:"),
        "the error says what exists: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_a_live_camera_after_publishing_what_it_captured() {
    let t = TestBus::start();
    let bus = bus(&t).await;
    let shutdown = CancellationToken::new();
    let mut a = args("synthetic");
    a.width = Some(64);
    a.height = Some(48);
    a.fps = Some(100.0);
    let task = tokio::spawn(lookout_camera::run(a, bus, Readiness::default(), shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    let summary = tokio::time::timeout(EVENT_TIMEOUT, task).await.unwrap().unwrap().unwrap();
    assert!(summary.published > 0);
    assert_eq!(
        summary.published + summary.dropped(),
        summary.captured,
        "every frame accounted for"
    );
    assert_eq!(read_frames(&t).await.len() as u64, summary.published);
}
