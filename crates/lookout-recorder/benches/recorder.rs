//! Predictions per second the recorder decides and commits, with few and with many changes,
//! against SQLite and Postgres.
//!
//! ```sh
//! cargo bench -p lookout-recorder --bench recorder
//! ```
//!
//! Each scenario publishes a backlog of frames and predictions (4 cameras, in order) on an
//! embedded broker, then starts a recorder on a fresh database and times it from its first
//! handled prediction until every frame is decided. The recorder takes predictions in batches
//! (up to 500 of one partition, one transaction each), so this measures what the whole path
//! sustains: reading, deciding, snapshots, and the database's commits. Postgres is `LOOKOUT_BENCH_DATABASE_URL` (an
//! administrator URL; a database is created per scenario) or a throwaway server with the
//! default `fsync=on`; SQLite is a file in a temporary folder (WAL, synchronous=NORMAL).
//! `LOOKOUT_BENCH_PREDICTIONS` sets the backlog size (default 16000).

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::{PgServer, Shot, TestDb};
use lookout_bus::topics;
use lookout_recorder::{Recorder, RecorderConfig, detector::DetectorConfig};
use lookout_service::Readiness;
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use tokio_util::sync::CancellationToken;

const CAMERAS: usize = 4;

fn shots(per_camera: usize, run: usize) -> Vec<Shot> {
    let mut shots = Vec::new();
    for c in 0..CAMERAS {
        let base = common::now_ms();
        for i in 0..per_camera {
            let (photo, label) = common::PHOTOS[(i / run + c) % common::PHOTOS.len()];
            shots.push(Shot {
                camera: format!("camera-{c}"),
                sequence: 1_700_000_000_000_000 + c as u64 * 10_000_000 + i as u64,
                capture_ms: base + i as i64,
                photo,
                label: label.to_owned(),
                score: 0.8,
            });
        }
    }
    // As cameras produce them: interleaved in time, not one camera's backlog after another's.
    shots.sort_by_key(|s| (s.sequence % 10_000_000, s.camera.clone()));
    shots
}

struct Outcome {
    changes: u64,
    missing: usize,
    seconds: f64,
    transactions: u64,
}

async fn scenario(db: &TestDb, shots: &[Shot]) -> Outcome {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let bus = t.bus("lookout-bench");
    let frames = bus.publisher(&topics::FRAMES);
    let predictions = bus.publisher(&topics::PREDICTIONS);
    let mut pending = Vec::new();
    for s in shots {
        pending.push(frames.enqueue(&s.frame(), None).await.expect("queued"));
        pending.push(predictions.enqueue(&s.prediction(), None).await.expect("queued"));
        if pending.len() >= 2000 {
            for p in pending.drain(..) {
                p.wait().await.expect("delivered");
            }
        }
    }
    for p in pending {
        p.wait().await.expect("delivered");
    }

    let config = RecorderConfig {
        detector: DetectorConfig {
            min_frames: 3,
            min_score: 0.3,
            window_frames: 64,
            window_timeout: Duration::from_secs(3),
        },
        snapshot_buffer: 300,
        snapshot_wait: Duration::from_secs(3),
        retain: None,
        group: "recorder".into(),
        ..RecorderConfig::default()
    };
    let recorder =
        Recorder::new(config, t.bus("lookout-recorder"), db.store().await, Readiness::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (r, s) = (recorder.clone(), stop.clone());
        async move { r.run(s).await }
    });
    let deadline = Instant::now() + EVENT_TIMEOUT * 10;
    let mut started = None;
    loop {
        let s = recorder.stats();
        if started.is_none() && s.predictions > 0 {
            started = Some(Instant::now());
        }
        if s.decided >= shots.len() as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "the recorder did not finish: {s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let changes = recorder.stats().changes;
    let transactions = recorder.stats().batches;
    stop.cancel();
    task.await.expect("recorder task").expect("recorder stops cleanly");
    let stored = db.store().await.changes(&Default::default()).await.expect("changes listed");
    let missing = stored.iter().filter(|c| c.snapshot_missing).count();
    Outcome { changes, missing, seconds, transactions }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let predictions: usize = std::env::var("LOOKOUT_BENCH_PREDICTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16_000);
    let per_camera = predictions / CAMERAS;

    let server = match std::env::var("LOOKOUT_BENCH_DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => Some((url, None)),
        None => common::postgres_bin().map(|bin| {
            let server = Arc::new(PgServer::start_with(&bin, true).expect("throwaway Postgres"));
            (server.admin_url(), Some(server))
        }),
    };
    if server.is_none() {
        eprintln!(
            "no Postgres (set LOOKOUT_BENCH_DATABASE_URL or install initdb/pg_ctl): SQLite only"
        );
    }

    println!(
        "| backend | changes | predictions | changes stored | snapshots missing | transactions | seconds | predictions/s |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (what, run) in [("few (one per 500 frames)", 500), ("many (one per 6 frames)", 6)] {
        let shots = shots(per_camera, run);
        let mut backends = vec![("SQLite", TestDb::sqlite())];
        if let Some((url, _)) = &server {
            backends.push(("Postgres", TestDb::postgres_on_url(url).await));
        }
        for (name, db) in backends {
            let o = scenario(&db, &shots).await;
            println!(
                "| {name} | {what} | {} | {} | {} | {} | {:.2} | {:.0} |",
                shots.len(),
                o.changes,
                o.missing,
                o.transactions,
                o.seconds,
                shots.len() as f64 / o.seconds
            );
        }
    }
}
