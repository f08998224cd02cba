//! The recorder binary is killed with SIGKILL at random moments while frames and predictions
//! stream in from three interleaving predictor-like publishers, and restarted each time. Beside
//! it an identical recorder runs uninterrupted on its own database. At the end both tables are
//! equal, snapshots included, and equal to what the detector decides on the frames in order.

mod common;

use std::{
    fs::File,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Row, Shot, TestDb};
use lookout_bus::topics;
use lookout_recorder::{Access, Store, detector::DetectorConfig};
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use tokio::sync::mpsc;

/// The options the recorder processes run with (and the detector settings they mean).
const ARGS: &[&str] = &[
    "--min-frames",
    "3",
    "--min-score",
    "0.3",
    "--reorder-frames",
    "64",
    "--reorder-timeout",
    "1s",
    "--snapshot-wait",
    "2s",
    "--retain-days",
    "0",
    "--log-format",
    "json",
];

fn detector() -> DetectorConfig {
    DetectorConfig {
        min_frames: 3,
        min_score: 0.3,
        window_frames: 64,
        window_timeout: Duration::from_secs(1),
    }
}

/// Kills the child when the test ends, however it ends.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn recorder(t: &TestBus, db: &TestDb, group: &str, log: &Path) -> Guard {
    let log = File::options().create(true).append(true).open(log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_lookout-recorder"))
        .args(t.child_args())
        .args(["--database-url", &db.url, "--group", group])
        .args(ARGS)
        .env("RUST_LOG", "info,rdkafka=warn")
        .env_remove("LOOKOUT_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("lookout-recorder runs");
    Guard(child)
}

/// Streams each shot's frame, then its prediction through one of three publishers that take
/// turns at random, at a steady pace.
async fn stream(t: &TestBus, shots: Vec<Shot>, seed: u64) {
    let bus = t.bus("lookout-test");
    let frames = bus.publisher(&topics::FRAMES);
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for p in 0..3u64 {
        let (tx, mut rx) = mpsc::channel::<Shot>(64);
        senders.push(tx);
        let predictions = bus.publisher(&topics::PREDICTIONS);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed + p);
            while let Some(s) = rx.recv().await {
                if rng.random_bool(0.2) {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(1..8))).await;
                }
                predictions.send(&s.prediction()).await.expect("prediction delivered");
            }
        }));
    }
    for (i, s) in shots.into_iter().enumerate() {
        frames.send(&s.frame()).await.expect("frame delivered");
        senders[i % 3].send(s).await.unwrap();
        if i % 5 == 4 {
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    drop(senders);
    for task in tasks {
        task.await.unwrap();
    }
}

async fn rows(url: &str) -> Vec<Row> {
    match Store::open(url, Access::ReadOnly).await {
        Ok(store) => {
            let rows = common::stored_rows(&store).await;
            store.close().await;
            rows
        }
        Err(_) => Vec::new(),
    }
}

async fn wait_for_rows(url: &str, want: &[Row], what: &str, log: &Path) -> Vec<Row> {
    let deadline = Instant::now() + EVENT_TIMEOUT * 2;
    loop {
        let got = rows(url).await;
        if got == want {
            return got;
        }
        if Instant::now() > deadline {
            let log_path = log;
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{what}: the table did not reach the expected rows (log: {})\n got {:#?}\nwant {:#?}\nlog tail (newest first):\n{}",
                log_path.display(),
                common::describe(&got),
                common::describe(want),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn killed_and_restarted_equals_a_clean_run(killed: TestDb, clean: TestDb, seed: u64) {
    let t = TestBus::start();
    t.create_registry_topics().await;
    // Kept when the test fails, for a look at the recorders' logs.
    let logs = tempfile::tempdir().unwrap().keep();
    let (killed_log, clean_log) = (logs.join("killed.log"), logs.join("clean.log"));

    let mut shots = common::slideshow("porch", 1_700_000_000_000_000, 9, 60, seed);
    shots.extend(common::slideshow("lobby", 1_700_000_200_000_000, 7, 60, seed + 1));
    // Interleave the two cameras as a real deployment would.
    shots.sort_by_key(|s| (s.capture_ms, s.camera.clone()));
    let expected = common::expected_rows(&common::expected_changes(detector(), &shots), &shots);
    assert!(expected.len() > 100);

    // Migrate first, so the tables can be polled from the start (migrations are idempotent).
    killed.store().await.close().await;
    clean.store().await.close().await;
    let _clean = recorder(&t, &clean, "recorder-clean", &clean_log);
    let mut victim = Some(recorder(&t, &killed, "recorder", &killed_log));
    let producer = tokio::spawn({
        let (t, shots) = (t.clone(), shots.clone());
        async move { stream(&t, shots, seed).await }
    });

    // Kill -9 at random moments while the stream goes on, restarting each time. Each kill
    // waits until the restarted recorder has stored something (it first has to rejoin the
    // group, which waits for the killed member's session to expire).
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kills = Vec::new();
    let mut stored_at_restart = 0;
    loop {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while rows(&killed.url).await.len() <= stored_at_restart
            && stored_at_restart < expected.len()
        {
            assert!(Instant::now() < deadline, "the restarted recorder made no progress");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
        if producer.is_finished() && kills.len() >= 3 || kills.len() >= 6 {
            break;
        }
        let mut child = victim.take().expect("running");
        child.0.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix
        child.0.wait().unwrap();
        drop(child);
        stored_at_restart = rows(&killed.url).await.len();
        kills.push(stored_at_restart);
        victim = Some(recorder(&t, &killed, "recorder", &killed_log));
    }
    producer.await.unwrap();
    eprintln!(
        "{}: killed {} times, with {:?} of {} changes stored",
        killed.name,
        kills.len(),
        kills,
        expected.len()
    );
    assert!(
        kills.iter().any(|n| *n > 0 && *n < expected.len()),
        "at least one kill came mid-stream: {kills:?}"
    );

    let clean_rows = wait_for_rows(&clean.url, &expected, "uninterrupted run", &clean_log).await;
    let killed_rows = wait_for_rows(&killed.url, &expected, "killed run", &killed_log).await;
    assert_eq!(killed_rows, clean_rows);
    assert!(killed_rows.iter().all(|r| r.snapshot.is_some() && !r.snapshot_missing));
    let _ = std::fs::remove_dir_all(&logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kill_9_and_restart_equals_a_clean_run() {
    killed_and_restarted_equals_a_clean_run(TestDb::sqlite(), TestDb::sqlite(), 21).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kill_9_and_restart_equals_a_clean_run() {
    let killed = TestDb::postgres().await;
    let clean = TestDb::postgres().await;
    killed_and_restarted_equals_a_clean_run(killed, clean, 42).await;
}
