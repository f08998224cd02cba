//! Predictor benchmark: per-frame cost of each stage, frames/s of the bare model loop, and
//! sustained frames/s of the predictor service through the embedded broker, for one backend and
//! one setting of workers, threads and batch size. Run by `just bench-predictor`
//! (`bench/predictor/run.py`), which runs every setting and Python onnxruntime beside it.
//!
//! `--model models/NAME` (default the classifier, `models/efficientnet-lite0`),
//! `--backend tract|onnxruntime` (the latter needs `--features onnxruntime` and
//! `ORT_DYLIB_PATH`), `--workers N`, `--threads N`, `--batch N`, `--iterations N` (per image, for
//! the stages), `--frames N` (for the loops), `--no-stages`. Prints one JSON object per line.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use clap::Parser as _;
use image::codecs::jpeg::JpegEncoder;
use lookout_bus::{Bus, BusConfig, HandlerError, Incoming, embedded::EmbeddedBroker, topics};
use lookout_predictor::{Args, PredictorArgs, model::Model};
use lookout_proto::v1::{Encoding, Frame, Prediction, SkipReason};
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

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn num(name: &str, default: usize) -> usize {
    flag(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let iterations = num("--iterations", 30);
    let frames = num("--frames", 120);
    let stages = !std::env::args().any(|a| a == "--no-stages");
    // The predictor's own options, from the same flags the service takes.
    let mut cli = vec!["lookout-predictor".to_owned()];
    for name in ["--model", "--backend", "--workers", "--threads", "--batch"] {
        if let Some(v) = flag(name) {
            cli.extend([name.to_owned(), v]);
        }
    }
    let mut args = Args::parse_from(cli).predictor;
    // A model named relative to the repository, default the classifier.
    args.model = repo(&flag("--model").unwrap_or_else(|| "models/efficientnet-lite0".into()));
    args.max_frame_age = Duration::ZERO;
    let setting = format!(
        r#""backend":"{}","workers":{},"threads":{},"batch":{}"#,
        args.backend.map_or("tract", |b| b.as_str()),
        args.workers,
        args.threads,
        args.batch
    );

    let load_started = Instant::now();
    let model = Arc::new(Model::load_with(&args.model, &args.engine_options()).expect("model"));
    println!(r#"{{{setting},"op":"load","ms":{:.1}}}"#, ms(load_started.elapsed()));
    let images: Vec<(&str, Jpeg)> =
        ["chelsea.png", "coffee.png", "rocket.jpg"].iter().map(|n| (*n, jpeg(n))).collect();
    let limits = args.frame_limits();

    if stages {
        for (name, (bytes, _, _)) in &images {
            let _ = model.label(bytes, 5, &limits).expect("warm-up");
            let (mut d, mut p, mut i) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..iterations {
                let t0 = Instant::now();
                let img = Model::decode(bytes, &limits).expect("decode");
                let t1 = Instant::now();
                let input = model.preprocess(&img);
                let t2 = Instant::now();
                let labels = model.infer(&input, 5).expect("infer");
                let t3 = Instant::now();
                std::hint::black_box(labels);
                d.push(t1 - t0);
                p.push(t2 - t1);
                i.push(t3 - t2);
            }
            println!(
                r#"{{{setting},"op":"stages","image":"{name}","iterations":{iterations},"decode_ms":{:.2},"preprocess_ms":{:.2},"inference_ms":{:.2}}}"#,
                median(&mut d),
                median(&mut p),
                median(&mut i)
            );
        }
    }

    let bare = bare_loop(&model, &images, frames, args.workers.max(1), &limits);
    println!(r#"{{{setting},"op":"bare_loop","frames":{frames},"fps":{bare:.2}}}"#);

    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let fps = rt.block_on(pipeline(args, &images, frames));
    println!(
        r#"{{{setting},"op":"pipeline","frames":{frames},"fps":{fps:.2},"vs_bare":{:.3}}}"#,
        fps / bare
    );
}

/// Decode + preprocess + inference back to back, `workers` threads sharing `frames` frames,
/// each running the model on up to `model.max_batch()` frames at a time.
fn bare_loop(
    model: &Arc<Model>,
    images: &[(&str, Jpeg)],
    frames: usize,
    workers: usize,
    limits: &lookout_predictor::FrameLimits,
) -> f64 {
    let batch = model.max_batch();
    // Warm up every worker's state or session, as the pipeline's timing starts after its first
    // prediction: the first run of a session allocates its buffers.
    let (bytes, _, _) = &images[0].1;
    let one = model.preprocess(&Model::decode(bytes, limits).expect("decode"));
    for worker in 0..workers {
        for n in [1, batch] {
            model.infer_batch(worker, &one.repeat(n), n, 5).expect("warm-up");
        }
    }
    // Workers take the next frames as they become free, as the service's workers do.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for worker in 0..workers {
            let next = &next;
            s.spawn(move || {
                loop {
                    let first = next.fetch_add(batch, std::sync::atomic::Ordering::Relaxed);
                    if first >= frames {
                        return;
                    }
                    let chunk = first..(first + batch).min(frames);
                    let n = chunk.len();
                    let mut input = Vec::with_capacity(n * model.input_len());
                    for i in chunk {
                        let (_, (bytes, _, _)) = &images[i % images.len()];
                        let img = Model::decode(bytes, limits).expect("decode");
                        input.extend(model.preprocess(&img));
                    }
                    let labels = model.infer_batch(worker, &input, n, 5).expect("infer");
                    std::hint::black_box(labels);
                }
            });
        }
    });
    frames as f64 / started.elapsed().as_secs_f64()
}

/// The same frames through the embedded broker and the predictor service with `args`.
async fn pipeline(args: PredictorArgs, images: &[(&str, Jpeg)], n: usize) -> f64 {
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
                assert_eq!(p.message.skipped(), SkipReason::Unspecified, "every frame is labelled");
                let at = p.message.predicted_time.as_ref().and_then(lookout_proto::system_time);
                tx.send((p.message.frame_sequence, at.expect("predicted_time is set")))
                    .await
                    .map_err(|e| HandlerError::Transient(e.to_string()))
            }
        },
        shutdown.clone(),
    ));
    tokio::spawn(lookout_predictor::run(
        args,
        Bus::new(config("bench-predictor")).unwrap(),
        shutdown.clone(),
    ));
    // From the first prediction made to the last (their `predicted_time`, the predictor's
    // clock), so model loading, joining the group and this reader's own start are not counted.
    // A frame labelled twice (at least once delivery) counts once, at its first labelling.
    let mut times = std::collections::BTreeMap::new();
    let mut duplicates = 0;
    while times.len() < n {
        let (sequence, at) = rx.recv().await.expect("prediction");
        if times.insert(sequence, at).is_some() {
            duplicates += 1;
        }
    }
    shutdown.cancel();
    if duplicates > 0 {
        eprintln!("{duplicates} frames were labelled twice");
    }
    let (first, last) = (times.values().min().unwrap(), times.values().max().unwrap());
    (n - 1) as f64 / last.duration_since(*first).unwrap().as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [Duration]) -> f64 {
    v.sort();
    ms(v[v.len() / 2])
}
