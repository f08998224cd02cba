//! The recorder binary reaches Postgres only through a [`FaultProxy`], which the test cuts and
//! then stalls, each time for longer than the recorder's `max.poll.interval.ms` (set short),
//! while frames and predictions keep streaming in. The recorder stays in its consumer group
//! (nothing is revoked), and afterwards its table holds every change once, with its snapshot,
//! as an uninterrupted run decides them.

mod common;

use std::{
    fs::File,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use common::{Guard, TestDb};
use lookout_test_util::{FaultProxy, TestBus};

/// The recorder's `max.poll.interval.ms` (librdkafka's floor is `session.timeout.ms`, which the
/// test bus sets to 3 s on the embedded broker).
const POLL_INTERVAL: Duration = Duration::from_secs(3);
/// How long each fault lasts: well over the poll interval.
const FAULT: Duration = Duration::from_secs(10);

/// The host:port of a Postgres URL.
fn server_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    host_port.parse().unwrap_or_else(|e| panic!("{host_port} in {url}: {e}"))
}

/// `url` with its host:port replaced by `addr`.
fn via(url: &str, addr: SocketAddr) -> String {
    url.replacen(&server_of(url).to_string(), &addr.to_string(), 1)
}

#[test]
fn a_postgres_url_is_pointed_at_the_proxy() {
    let url = "postgres://postgres@127.0.0.1:5432/lookout_x?sslmode=disable";
    assert_eq!(server_of(url), "127.0.0.1:5432".parse().unwrap());
    assert_eq!(
        via(url, "127.0.0.1:7".parse().unwrap()),
        "postgres://postgres@127.0.0.1:7/lookout_x?sslmode=disable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_then_stalled_longer_than_the_poll_interval_loses_and_doubles_nothing() {
    let db = TestDb::postgres().await;
    db.store().await.close().await;
    let proxy = FaultProxy::start(server_of(&db.url)).await.expect("the proxy starts");
    let t = TestBus::start();
    t.create_registry_topics().await;

    let admin = format!("127.0.0.1:{}", common::free_port());
    let log = tempfile::tempdir().unwrap().keep().join("recorder.log");
    let child = Command::new(env!("CARGO_BIN_EXE_lookout-recorder"))
        .args(t.child_args())
        .args(["--database-url", &via(&db.url, proxy.addr()), "--admin-addr", &admin])
        .args(["--reorder-frames", "64", "--reorder-timeout", "1s", "--snapshot-wait", "2s"])
        .arg("--kafka-opt")
        .arg(format!("max.poll.interval.ms={}", POLL_INTERVAL.as_millis()))
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info,rdkafka=warn")
        .env_remove("LOOKOUT_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .expect("lookout-recorder runs");
    let _recorder = Guard(child);
    common::wait_ready(&admin, true).await;
    assert!(proxy.accepted() > 0, "the recorder reaches Postgres through the proxy");

    let (shots, expected) = common::two_cameras();
    // Slow enough to go on through both faults.
    let producer = tokio::spawn({
        let (t, shots) = (t.clone(), shots.clone());
        async move { common::stream(&t, &shots, Duration::from_millis(250)).await }
    });

    common::wait_stored(&db.url, 5).await;

    // Cut: every connection closed, new ones too. The recorder says the database is not ready.
    let accepted = proxy.accepted();
    proxy.cut();
    let body = common::wait_ready(&admin, false).await;
    assert!(body.contains("database"), "/readyz names the database: {body}");
    tokio::time::sleep(FAULT).await;
    proxy.restore();
    common::wait_ready(&admin, true).await;
    assert!(proxy.accepted() > accepted, "the recorder reconnected through the proxy");

    // Stall: connections open, nothing answers.
    proxy.stall();
    tokio::time::sleep(FAULT).await;
    let produced_during_faults = !producer.is_finished();
    proxy.restore();
    producer.await.unwrap();
    assert!(produced_during_faults, "the stream went on during the faults");

    common::wait_for_expected(&db.url, &expected, &log).await;
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !log.contains("partitions revoked"),
        "the recorder never left its group (max.poll.interval.ms was not exceeded):\n{log}"
    );
    let metrics = common::get(&admin, "/metrics").await.map(|m| m.1).unwrap_or_default();
    assert!(metrics.contains("lookout_recorder_database_errors_total"), "{metrics}");
}
