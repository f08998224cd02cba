//! The log layer publishes events on the logs topic through a real broker, in order, with the
//! fields of their spans; and it never makes the service wait when the brokers are away.

use std::time::{Duration, Instant};

use lookout_bus::{Bus, BusConfig, Incoming, topics};
use lookout_proto::v1::{Level, LogRecord};
use lookout_telemetry::{ShipConfig, log_layer};
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::{Registry, layer::SubscriberExt as _};

/// Reads the logs topic until `n` records arrived.
async fn read_logs(bus: &Bus, n: usize) -> Vec<(Incoming<LogRecord>, i64)> {
    let (tx, mut rx) = mpsc::channel(1024);
    let shutdown = CancellationToken::new();
    let subscriber = bus.subscriber(&topics::LOGS, "telemetry-test");
    let consumer = tokio::spawn(subscriber.run(
        move |m: Incoming<LogRecord>| {
            let tx = tx.clone();
            async move {
                let offset = m.meta.offset;
                let _ = tx.send((m, offset)).await;
                Ok(())
            }
        },
        shutdown.clone(),
    ));
    let mut got = Vec::new();
    while got.len() < n {
        let next = tokio::time::timeout(EVENT_TIMEOUT, rx.recv()).await;
        got.push(next.expect("log records arrive").expect("consumer runs"));
    }
    shutdown.cancel();
    consumer.await.unwrap().unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_on_the_logs_topic_in_order_with_their_span_fields() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let (layer, shipper) =
        log_layer::<Registry>(ShipConfig::new(t.bus("lookout-emitter")).level(LevelFilter::INFO))
            .unwrap();
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        for seq in 0..20u64 {
            let span = tracing::info_span!("frame", camera_id = "porch", sequence = seq);
            let _entered = span.enter();
            tracing::info!(score = 0.75, "labelled");
            tracing::debug!("not shipped: below the level");
        }
        tracing::warn!(target: "librdkafka", "not shipped: the Kafka client's own log");
        tracing::error!(trace_id = "4bf92f3577b34da6a3ce929d0e0e4736", "last");
    });
    assert!(shipper.flush(EVENT_TIMEOUT).await, "every record is acknowledged");
    assert_eq!(shipper.dropped(), 0);

    let got = read_logs(&t.bus("lookout-test"), 21).await;
    let records: Vec<&LogRecord> = got.iter().map(|(m, _)| &m.message).collect();
    for (seq, r) in records[..20].iter().enumerate() {
        assert_eq!(r.message, "labelled");
        assert_eq!(r.service, "lookout-emitter");
        assert_eq!(r.camera_id, "porch");
        assert_eq!(r.frame_sequence, Some(seq as u64), "in the order they were logged");
        assert_eq!(r.fields["score"], "0.75");
        assert_eq!(r.level, Level::Info as i32);
    }
    let last = &got[20].0;
    assert_eq!(last.message.message, "last");
    assert_eq!(last.message.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        last.meta.trace().map(|t| t.trace_id_hex()).as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        "a record about a traced frame travels in that trace"
    );
    assert_eq!(last.meta.key_str(), Some("lookout-emitter"), "keyed by service");
    assert!(got.iter().all(|(m, _)| m.meta.partition == got[0].0.meta.partition));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_never_waits_for_absent_brokers() {
    // Nothing listens on port 1: every record stays queued or undelivered.
    let bus = Bus::new(
        BusConfig::new("127.0.0.1:1", "lookout-emitter").with_opt("message.timeout.ms", "2000"),
    )
    .unwrap();
    let (layer, shipper) = log_layer::<Registry>(ShipConfig::new(bus).queue_capacity(8)).unwrap();
    let subscriber = tracing_subscriber::registry().with(layer);
    let started = Instant::now();
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..5000u32 {
            tracing::info!(i, "into the void");
        }
    });
    // Not a timing assertion: only a guard against a hang in the loop above.
    assert!(started.elapsed() < EVENT_TIMEOUT);
    assert!(shipper.dropped() > 0, "records that did not fit were dropped, not waited for");
    // The records handed to the producer fail after message.timeout.ms and are counted too.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !shipper.flush(Duration::from_secs(5)).await {
        assert!(Instant::now() < deadline, "the shipping thread settles every record");
    }
    assert_eq!(shipper.dropped(), 5000, "none of them was delivered, every one was counted");
}
