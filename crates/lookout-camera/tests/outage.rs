//! The camera while the broker is unreachable, and after it returns.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{captured_at, read_frames_from};
use lookout_bus::{Bus, BusConfig, embedded::EmbeddedBroker};
use lookout_camera::{CameraArgs, SourceSpec};
use lookout_service::Readiness;
use lookout_test_util::EVENT_TIMEOUT;
use tokio_util::sync::CancellationToken;

/// Waits until `reader` sees at least `n` frames captured after `since`.
async fn wait_for_frames(reader: &Bus, since: SystemTime, n: usize) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let frames = read_frames_from(reader.clone()).await;
        if frames.iter().filter(|(_, f)| captured_at(f) > since).count() >= n {
            return;
        }
        assert!(Instant::now() < deadline, "frames captured after {since:?} never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_dropped_oldest_first_while_the_broker_is_away_and_flow_again_after() {
    let broker = EmbeddedBroker::start().unwrap();
    let prefix = "outage.";
    broker.create_registry_topics(prefix).unwrap();
    // Clients reach the broker only through this forwarder, which the test cuts and restores.
    let up = CancellationToken::new();
    let addr = broker.listen("127.0.0.1:0".parse().unwrap(), up.clone()).await.unwrap();
    let config = BusConfig::new(addr.to_string(), "lookout-camera")
        .with_topic_prefix(prefix)
        .with_opt("message.timeout.ms", "1500");
    let bus = Bus::new(lookout_camera::producer_config(config)).unwrap();
    let reader =
        Bus::new(BusConfig::new(addr.to_string(), "lookout-test").with_topic_prefix(prefix))
            .unwrap();

    let mut args = CameraArgs::new(SourceSpec::Synthetic);
    args.width = Some(64);
    args.height = Some(48);
    args.fps = Some(50.0);
    let shutdown = CancellationToken::new();
    let camera =
        tokio::spawn(lookout_camera::run(args, bus, Readiness::default(), shutdown.clone()));

    let started = SystemTime::now();
    wait_for_frames(&reader, started, 5).await;

    up.cancel();
    let cut = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(2500)).await; // 125 frames' worth
    let restored = SystemTime::now();
    let up = CancellationToken::new();
    broker.listen(addr, up.clone()).await.unwrap();

    wait_for_frames(&reader, restored, 5).await;
    shutdown.cancel();
    let summary = tokio::time::timeout(EVENT_TIMEOUT, camera).await.unwrap().unwrap().unwrap();

    assert!(summary.dropped_queue_full > 0, "the queue dropped frames: {summary:?}");
    assert_eq!(summary.published + summary.dropped(), summary.captured, "{summary:?}");
    assert!(
        summary.dropped() >= 50,
        "most frames of the outage were dropped, not buffered: {summary:?}"
    );

    let frames = read_frames_from(reader).await;
    up.cancel();
    assert_eq!(frames.len() as u64, summary.published);
    for w in frames.windows(2) {
        assert!(w[1].1.sequence > w[0].1.sequence, "sequence numbers keep increasing");
    }
    let during = frames
        .iter()
        .filter(|(_, f)| {
            let t = captured_at(f);
            t > cut + Duration::from_millis(1600) && t < restored
        })
        .count();
    // Frames captured during the outage reach the broker only if they were among the newest
    // queued when it came back (the drop-oldest queue) or still in the producer's buffer.
    assert!(
        during <= lookout_camera::QUEUE_FRAMES + lookout_camera::MAX_IN_FLIGHT,
        "{during} frames from the middle of the outage were kept"
    );
}
