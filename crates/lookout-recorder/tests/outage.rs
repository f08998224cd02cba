//! The recorder binary against its own throwaway Postgres server, which is stopped mid-stream
//! and started again: `/readyz` reports the database not ready meanwhile, no offset moves, and
//! afterwards every change is stored, with its snapshot, as if nothing had happened.

mod common;

use std::{
    fs::File,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Shot, TestDb};
use lookout_bus::topics;
use lookout_recorder::{Access, Store, detector::DetectorConfig};
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` on the admin server: (status, body).
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Some((status, body))
}

async fn wait_ready(addr: &str, ready: bool) -> String {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        if let Some((status, body)) = get(addr, "/readyz").await
            && (status == 200) == ready
        {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz did not become ready={ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stored(url: &str) -> Option<Vec<common::Row>> {
    let store = Store::open(url, Access::ReadOnly).await.ok()?;
    // Fails while the server is down (stored_rows would panic).
    store.changes(&Default::default()).await.ok()?;
    let rows = common::stored_rows(&store).await;
    store.close().await;
    Some(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_then_back_loses_nothing() {
    let db = TestDb::postgres_dedicated().await;
    let server = db.server().expect("a dedicated server");
    let t = TestBus::start();
    t.create_registry_topics().await;
    db.store().await.close().await;

    let admin = format!("127.0.0.1:{}", common::free_port());
    let log = tempfile::tempdir().unwrap().keep().join("recorder.log");
    let child = Command::new(env!("CARGO_BIN_EXE_lookout-recorder"))
        .args(t.child_args())
        .args(["--database-url", &db.url, "--admin-addr", &admin])
        .args(["--reorder-frames", "64", "--reorder-timeout", "1s", "--snapshot-wait", "2s"])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info,rdkafka=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .expect("lookout-recorder runs");
    let _recorder = Guard(child);
    wait_ready(&admin, true).await;

    let mut shots = common::slideshow("porch", 1_700_000_000_000_000, 8, 40, 9);
    shots.extend(common::slideshow("lobby", 1_700_000_300_000_000, 6, 40, 10));
    shots.sort_by_key(|s| (s.capture_ms, s.camera.clone()));
    let detector = DetectorConfig {
        min_frames: 3,
        min_score: 0.3,
        window_frames: 64,
        window_timeout: Duration::from_secs(1),
    };
    let expected = common::expected_rows(&common::expected_changes(detector, &shots), &shots);

    let producer = tokio::spawn({
        let (t, shots) = (t.clone(), shots.clone());
        async move { stream(&t, &shots).await }
    });

    // Let some changes be stored, then take the database away.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while stored(&db.url).await.is_none_or(|r| r.len() < 5) {
        assert!(Instant::now() < deadline, "no change stored before the outage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().expect("pg_ctl stop");
    let body = wait_ready(&admin, false).await;
    assert!(body.contains("database"), "/readyz names the database: {body}");
    // Frames and predictions keep coming while the database is down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let produced_during_outage = !producer.is_finished();
    server.start_again().expect("pg_ctl start");
    wait_ready(&admin, true).await;
    producer.await.unwrap();
    assert!(produced_during_outage, "the stream went on during the outage");

    let deadline = Instant::now() + EVENT_TIMEOUT * 2;
    loop {
        let rows = stored(&db.url).await.unwrap_or_default();
        if rows == expected {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "after the outage the table is not as expected\n got {:#?}\nwant {:#?}\nlog:\n{}",
                common::describe(&rows),
                common::describe(&expected),
                log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = get(&admin, "/metrics").await.map(|m| m.1).unwrap_or_default();
    assert!(metrics.contains("lookout_recorder_database_errors_total"), "{metrics}");
}

/// Each shot's frame, then its prediction, at a steady pace.
async fn stream(t: &TestBus, shots: &[Shot]) {
    let bus = t.bus("lookout-test");
    let frames = bus.publisher(&topics::FRAMES);
    let predictions = bus.publisher(&topics::PREDICTIONS);
    for (i, s) in shots.iter().enumerate() {
        frames.send(&s.frame()).await.expect("frame delivered");
        predictions.send(&s.prediction()).await.expect("prediction delivered");
        if i % 5 == 4 {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
}
