//! The recorder binary against its own throwaway Postgres server, which is stopped mid-stream
//! and started again: `/readyz` reports the database not ready meanwhile, no offset moves, and
//! afterwards every change is stored, with its snapshot, as if nothing had happened.

mod common;

use std::{
    fs::File,
    process::{Command, Stdio},
    time::Duration,
};

use common::TestDb;
use lookout_test_util::TestBus;

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
    let _recorder = common::Guard(child);
    common::wait_ready(&admin, true).await;

    let (shots, expected) = common::two_cameras();
    let producer = tokio::spawn({
        let (t, shots) = (t.clone(), shots.clone());
        async move { common::stream(&t, &shots, Duration::from_millis(40)).await }
    });

    // Let some changes be stored, then take the database away.
    common::wait_stored(&db.url, 5).await;
    server.stop().expect("pg_ctl stop");
    let body = common::wait_ready(&admin, false).await;
    assert!(body.contains("database"), "/readyz names the database: {body}");
    // Frames and predictions keep coming while the database is down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let produced_during_outage = !producer.is_finished();
    server.start_again().expect("pg_ctl start");
    common::wait_ready(&admin, true).await;
    producer.await.unwrap();
    assert!(produced_during_outage, "the stream went on during the outage");

    common::wait_for_expected(&db.url, &expected, &log).await;
    let metrics = common::get(&admin, "/metrics").await.map(|m| m.1).unwrap_or_default();
    assert!(metrics.contains("lookout_recorder_database_errors_total"), "{metrics}");
}
