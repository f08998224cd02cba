//! Predictor benchmark: per-frame cost of each stage on one thread, and sustained frames/s
//! through the embedded broker against the bare model loop. Run by `just bench-predictor`
//! (`bench/predictor/run.py`), which puts onnxruntime beside it.
//!
//! Prints one JSON object per line.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use image::codecs::jpeg::JpegEncoder;
use lookout_bus::{Bus, BusConfig, HandlerError, Incoming, embedded::EmbeddedBroker, topics};
use lookout_predictor::{FrameLimits, PredictorArgs, model::Model};

const LIMITS: FrameLimits = FrameLimits { max_pixels: 40_000_000, max_aspect_ratio: 20.0 };
use lookout_proto::v1::{Encoding, Frame, Prediction};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(p)
}

/// A sample photo as JPEG bytes with its width and height.
type Jpeg = (Vec<u8>, u32, u32);

fn jpeg(name: &str) -> Jpeg {
    let img = image::open(repo(&format!("samples/{name}"))).expect("sample").into_rgb8();
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(&mut buf, 90).encode_image(&img).expect("encode");
    (buf, img.width(), img.height())
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let iterations = arg("--iterations", 30);
    let pipeline_frames = arg("--pipeline-frames", 120);
    let load_started = Instant::now();
    let model =
        Arc::new(Model::load(&repo("models/efficientnet-lite0/model.toml")).expect("model"));
    println!(r#"{{"impl":"tract","op":"load","ms":{:.1}}}"#, ms(load_started.elapsed()));
    let images: Vec<(&str, Jpeg)> =
        ["chelsea.png", "coffee.png", "rocket.jpg"].iter().map(|n| (*n, jpeg(n))).collect();

    // Per stage, single thread.
    for (name, (bytes, _, _)) in &images {
        let _ = model.classify(bytes, 5, &LIMITS).expect("warm-up");
        let (mut d, mut p, mut i) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..iterations {
            let t0 = Instant::now();
            let img = Model::decode(bytes, &LIMITS).expect("decode");
            let t1 = Instant::now();
            let input = model.preprocess(&img);
            let t2 = Instant::now();
            let scores = model.infer(&input).expect("infer");
            let t3 = Instant::now();
            std::hint::black_box(scores);
            d.push(t1 - t0);
            p.push(t2 - t1);
            i.push(t3 - t2);
        }
        println!(
            r#"{{"impl":"tract","op":"stages","image":"{name}","iterations":{iterations},"decode_ms":{:.2},"preprocess_ms":{:.2},"inference_ms":{:.2}}}"#,
            median(&mut d),
            median(&mut p),
            median(&mut i)
        );
    }

    // Bare model loop: decode + preprocess + inference, back to back.
    let started = Instant::now();
    for n in 0..pipeline_frames {
        let (_, (bytes, _, _)) = &images[n % images.len()];
        std::hint::black_box(model.classify(bytes, 5, &LIMITS).expect("classify"));
    }
    let bare = pipeline_frames as f64 / started.elapsed().as_secs_f64();
    println!(r#"{{"impl":"tract","op":"bare_loop","frames":{pipeline_frames},"fps":{bare:.2}}}"#);

    // The same frames through the embedded broker and the predictor service.
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let fps = rt.block_on(pipeline(&images, pipeline_frames));
    println!(
        r#"{{"impl":"lookout-predictor","op":"pipeline","frames":{pipeline_frames},"fps":{fps:.2},"vs_bare":{:.3}}}"#,
        fps / bare
    );
}

async fn pipeline(images: &[(&str, Jpeg)], n: usize) -> f64 {
    let broker = EmbeddedBroker::start().expect("broker");
    broker.create_registry_topics("").expect("topics");
    let config = |svc: &str| {
        let mut c = BusConfig::new(broker.bootstrap_servers(), svc);
        c.compression = lookout_bus::Compression::None;
        c
    };
    let camera = Bus::new(config("bench-camera")).unwrap();
    let frames = camera.publisher(&topics::FRAMES);
    // Publish every frame first, so the predictor is measured, not the publisher.
    for seq in 0..n {
        let (_, (bytes, w, h)) = &images[seq % images.len()];
        let f = Frame {
            camera_id: "bench".into(),
            sequence: seq as u64,
            capture_time: Some(lookout_proto::timestamp(SystemTime::now())),
            width: *w,
            height: *h,
            encoding: Encoding::Jpeg.into(),
            data: bytes.clone().into(),
        };
        frames.send(&f).await.expect("frame published");
    }
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(n);
    let reader = Bus::new(config("bench-reader")).unwrap();
    tokio::spawn(reader.subscriber(&topics::PREDICTIONS, "bench").run(
        move |p: Incoming<Prediction>| {
            let tx = tx.clone();
            async move {
                tx.send(p.message.frame_sequence)
                    .await
                    .map_err(|e| HandlerError::Transient(e.to_string()))
            }
        },
        shutdown.clone(),
    ));
    let mut args = PredictorArgs::for_model(repo("models/efficientnet-lite0/model.toml"));
    args.max_frame_age = Duration::ZERO;
    tokio::spawn(lookout_predictor::run(
        args,
        Bus::new(config("bench-predictor")).unwrap(),
        shutdown.clone(),
    ));
    // Time from the first prediction to the last, so model loading and joining the group
    // are not counted.
    rx.recv().await.expect("first prediction");
    let first = Instant::now();
    for _ in 1..n {
        rx.recv().await.expect("prediction");
    }
    let fps = (n - 1) as f64 / first.elapsed().as_secs_f64();
    shutdown.cancel();
    fps
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [Duration]) -> f64 {
    v.sort();
    ms(v[v.len() / 2])
}
