//! The bus against a real Kafka-protocol broker (embedded, or `LOOKOUT_BROKERS`): round trips,
//! dead letters, content types, restarts, retries, readers by position, live subscriptions,
//! partitions lost while the broker is unreachable.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::SystemTime,
};

use bytes::Bytes;
use lookout_bus::{
    BusError, HandlerError, Headers, Incoming, LiveSubscription, RawMessage, Start, headers, topics,
};
use lookout_proto::{
    BusMessage, Topic, timestamp,
    v1::{
        BoundingBox, Detection, Encoding, Frame, Label, Level, LogRecord, ModelKind, ModelRef,
        Prediction, PredictionChange, Timings,
    },
};
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use rdkafka::{
    ClientConfig,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

async fn recv<T>(rx: &mut mpsc::Receiver<T>) -> T {
    tokio::time::timeout(EVENT_TIMEOUT, rx.recv())
        .await
        .expect("message arrives before the timeout")
        .expect("channel open")
}

/// Publishes `message` on `topic` and receives it back through a consumer group.
async fn round_trip<M: BusMessage + Clone + PartialEq + std::fmt::Debug>(
    t: &TestBus,
    topic: &Topic<M>,
    message: M,
) -> Incoming<M> {
    let bus = t.bus("lookout-test");
    let delivered = bus.publisher(topic).send(&message).await.expect("delivered");
    assert!(delivered.offset >= 0);

    let (tx, mut rx) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let sub = bus.subscriber(topic, "round-trip").run(
        move |m: Incoming<M>| {
            let tx = tx.clone();
            async move { tx.send(m).await.map_err(|_| HandlerError::Transient("test ended".into())) }
        },
        shutdown.clone(),
    );
    let task = tokio::spawn(sub);
    let got = recv(&mut rx).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    assert_eq!(got.message, message);
    assert_eq!(got.meta.offset, delivered.offset);
    assert_eq!(got.meta.partition, delivered.partition);
    assert_eq!(got.meta.key_str(), Some(message.key()));
    let h = &got.meta.headers;
    assert_eq!(h.get_str(headers::CONTENT_TYPE), Some(topic.content_type().as_str()));
    assert!(
        topic.content_type().starts_with("application/x-protobuf; messageType=lookout.v1."),
        "the conventional form: {}",
        topic.content_type()
    );
    assert_eq!(h.len(), 2, "content type and traceparent only: {h:?}");
    assert!(got.meta.timestamp_ms.unwrap() > 1_600_000_000_000, "produce time is a recent Unix ms");
    assert_eq!(
        got.meta.trace(),
        Some(delivered.trace),
        "traceparent carries the trace it was sent with"
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_type_round_trips() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let now = timestamp(SystemTime::now());
    let label = |id, name: &str, score| Label { class_id: id, name: name.into(), score };
    let model = ModelRef {
        name: "efficientnet-lite0".into(),
        version: "1".into(),
        kind: ModelKind::Classification.into(),
    };

    round_trip(
        &t,
        &topics::FRAMES,
        Frame {
            camera_id: "lobby".into(),
            sequence: 42,
            capture_time: Some(now),
            width: 640,
            height: 480,
            encoding: Encoding::Jpeg.into(),
            data: Bytes::from_static(b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9"),
        },
    )
    .await;

    round_trip(
        &t,
        &topics::PREDICTIONS,
        Prediction {
            camera_id: "lobby".into(),
            frame_sequence: 42,
            capture_time: Some(now),
            model: Some(model.clone()),
            top_k: vec![label(967, "espresso", 0.95), label(968, "cup", 0.02)],
            detections: vec![Detection {
                r#box: Some(BoundingBox { x: 1.0, y: 2.0, width: 3.0, height: 4.0 }),
                label: Some(label(1, "goldfish", 0.5)),
            }],
            timings: Some(Timings {
                decode: Some(lookout_proto::Duration { seconds: 0, nanos: 2_000_000 }),
                preprocess: Some(lookout_proto::Duration { seconds: 0, nanos: 1_000_000 }),
                inference: Some(lookout_proto::Duration { seconds: 0, nanos: 30_000_000 }),
            }),
            predictor_instance: "host-1".into(),
            predicted_time: Some(now),
            skipped: lookout_proto::v1::SkipReason::Unspecified.into(),
        },
    )
    .await;

    round_trip(
        &t,
        &topics::CHANGES,
        PredictionChange {
            camera_id: "lobby".into(),
            frame_sequence: 43,
            previous: Some(label(282, "tiger cat", 0.4)),
            current: Some(label(967, "espresso", 0.9)),
            model: Some(model),
            time: Some(now),
            change_id: 7,
            snapshot_missing: false,
            ..Default::default()
        },
    )
    .await;

    round_trip(
        &t,
        &topics::LOGS,
        LogRecord {
            time: Some(now),
            service: "lookout-predictor".into(),
            instance: "host-1".into(),
            level: Level::Warn.into(),
            target: "lookout_predictor::run".into(),
            message: "frame skipped".into(),
            fields: [("reason".to_owned(), "too old".to_owned())].into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            camera_id: "lobby".into(),
            frame_sequence: Some(42),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_one_camera_spread_over_all_partitions() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let bus = t.bus("lookout-test");
    let frames = bus.publisher(&topics::FRAMES);
    let mut partitions = BTreeSet::new();
    for seq in 0..12 {
        let f = Frame { camera_id: "one".into(), sequence: seq, ..Default::default() };
        partitions.insert(frames.send(&f).await.unwrap().partition);
    }
    assert_eq!(partitions.len() as i32, topics::FRAMES.partitions());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_is_refused_with_its_size_and_the_limit() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let bus =
        lookout_bus::Bus::new(t.config("lookout-test").with_opt("message.max.bytes", "10000"))
            .unwrap();
    let frame =
        Frame { camera_id: "big".into(), data: vec![0u8; 20_000].into(), ..Default::default() };
    let err = bus.publisher(&topics::FRAMES).send(&frame).await.unwrap_err();
    let BusError::TooLarge { size, limit, .. } = &err else { panic!("unexpected error {err}") };
    assert!(*size > 20_000);
    assert_eq!(*limit, 10_000);
    let text = err.to_string();
    assert!(text.contains(&size.to_string()) && text.contains("10000"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_goes_to_the_dead_letter_topic_and_later_messages_are_handled() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let bus = t.bus("lookout-test");
    let topic = bus.topic_name(topics::PREDICTIONS.name());
    let predictions = bus.publisher(&topics::PREDICTIONS);

    let good =
        |seq| Prediction { camera_id: "cam".into(), frame_sequence: seq, ..Default::default() };
    predictions.send(&good(1)).await.unwrap();
    // Bytes that are not a protobuf message (wire type 7 does not exist).
    let garbage_bytes = &b"\xff\xff\xff\xff garbage"[..];
    let typed = Headers::new().with(headers::CONTENT_TYPE, "lookout.v1.Prediction");
    let garbage = bus.publish_raw(&topic, Some(b"cam"), Some(garbage_bytes), &typed).await.unwrap();
    // A well-formed message of the wrong type on this topic is refused too.
    let frame_type = Headers::new().with(headers::CONTENT_TYPE, "lookout.v1.Frame");
    let wrong_type = bus.publish_raw(&topic, Some(b"cam"), Some(&[]), &frame_type).await.unwrap();
    predictions.send(&good(2)).await.unwrap();
    predictions.send(&good(3)).await.unwrap();

    let (tx, mut rx) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(bus.subscriber(&topics::PREDICTIONS, "dlq-test").run(
        move |m: Incoming<Prediction>| {
            let tx = tx.clone();
            async move {
                tx.send(m.message.frame_sequence)
                    .await
                    .map_err(|e| HandlerError::Transient(e.to_string()))
            }
        },
        shutdown.clone(),
    ));
    let handled = vec![recv(&mut rx).await, recv(&mut rx).await, recv(&mut rx).await];
    assert_eq!(handled, vec![1, 2, 3], "the messages after the bad ones are handled, in order");

    // The dead-letter topic holds both bad messages with their origin and the reason.
    let (dtx, mut drx) = mpsc::channel(8);
    let dlq_task = tokio::spawn(
        bus.raw_subscriber(&[bus.topic_name(topics::DLQ)], "dlq-reader")
            .run(Collector(dtx), shutdown.clone()),
    );
    let mut dead = BTreeMap::new();
    for _ in 0..2 {
        let m: RawMessage = recv(&mut drx).await;
        let hs: BTreeMap<String, String> = m.headers.to_strings().into_iter().collect();
        assert_eq!(hs[headers::DLQ_TOPIC], topic);
        assert_eq!(hs[headers::DLQ_GROUP], "dlq-test");
        dead.insert(
            hs[headers::DLQ_OFFSET].parse::<i64>().unwrap(),
            (hs, m.payload.map(|p| p.to_vec())),
        );
    }
    let (garbage_headers, garbage_payload) = &dead[&garbage.1];
    assert_eq!(garbage_headers[headers::DLQ_PARTITION], garbage.0.to_string());
    assert!(garbage_headers[headers::DLQ_ERROR].contains("cannot decode"), "{garbage_headers:?}");
    assert_eq!(
        garbage_payload.as_deref(),
        Some(&b"\xff\xff\xff\xff garbage"[..]),
        "original bytes kept"
    );
    let (wrong_headers, _) = &dead[&wrong_type.1];
    assert!(wrong_headers[headers::DLQ_ERROR].contains("lookout.v1.Frame"), "{wrong_headers:?}");

    shutdown.cancel();
    task.await.unwrap().unwrap();
    dlq_task.await.unwrap().unwrap();
}

struct Collector(mpsc::Sender<RawMessage>);

impl lookout_bus::RawHandler for Collector {
    async fn handle(&self, m: &RawMessage) -> Result<(), HandlerError> {
        self.0.send(m.clone()).await.map_err(|e| HandlerError::Transient(e.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_resumes_where_the_last_one_stopped() {
    let t = TestBus::start();
    t.create_topic(topics::PREDICTIONS.name(), 3).await;
    let bus = t.bus("lookout-test");
    let predictions = bus.publisher(&topics::PREDICTIONS);
    const TOTAL: u64 = 600;
    const MORE: u64 = 100;
    for seq in 0..TOTAL {
        let camera = format!("cam-{}", seq % 5);
        let p = Prediction { camera_id: camera, frame_sequence: seq, ..Default::default() };
        let _pending = predictions.enqueue(&p, None).await.unwrap();
    }
    bus.flush(EVENT_TIMEOUT).unwrap();

    // First run: stop after 250 messages were handled.
    let handled = Arc::new(Mutex::new(Vec::new()));
    let shutdown = CancellationToken::new();
    let count = Arc::new(AtomicUsize::new(0));
    {
        let (handled, stop, count) = (handled.clone(), shutdown.clone(), count.clone());
        bus.subscriber(&topics::PREDICTIONS, "resume")
            .run(
                move |m: Incoming<Prediction>| {
                    let (handled, stop, count) = (handled.clone(), stop.clone(), count.clone());
                    async move {
                        handled.lock().unwrap().push(m.message.frame_sequence);
                        if count.fetch_add(1, Ordering::SeqCst) + 1 == 250 {
                            stop.cancel();
                        }
                        Ok(())
                    }
                },
                shutdown.clone(),
            )
            .await
            .unwrap();
    }
    let first: Vec<u64> = handled.lock().unwrap().clone();
    // Partitions are handled concurrently and stopping drains what is in flight, so the first
    // run may have handled more than 250, possibly all of them.
    assert!(first.len() >= 250 && first.len() <= TOTAL as usize, "{}", first.len());

    // More messages while no consumer runs: the second run always has something to resume to.
    for seq in TOTAL..TOTAL + MORE {
        let camera = format!("cam-{}", seq % 5);
        let p = Prediction { camera_id: camera, frame_sequence: seq, ..Default::default() };
        let _pending = predictions.enqueue(&p, None).await.unwrap();
    }
    bus.flush(EVENT_TIMEOUT).unwrap();

    // Second run, same group: it must handle exactly the rest.
    let (tx, mut rx) = mpsc::channel(1024);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(bus.subscriber(&topics::PREDICTIONS, "resume").run(
        move |m: Incoming<Prediction>| {
            let tx = tx.clone();
            async move {
                tx.send(m.message.frame_sequence)
                    .await
                    .map_err(|e| HandlerError::Transient(e.to_string()))
            }
        },
        shutdown.clone(),
    ));
    let mut second = Vec::new();
    while first.len() + second.len() < (TOTAL + MORE) as usize {
        second.push(recv(&mut rx).await);
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let a: BTreeSet<u64> = first.iter().copied().collect();
    let b: BTreeSet<u64> = second.iter().copied().collect();
    assert_eq!(a.len(), first.len(), "no duplicates in the first run");
    assert!(
        a.is_disjoint(&b),
        "acknowledged messages are not handled again: {:?}",
        a.intersection(&b).collect::<Vec<_>>()
    );
    let all: BTreeSet<u64> = a.union(&b).copied().collect();
    assert_eq!(all, (0..TOTAL + MORE).collect(), "nothing is lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_fails_transiently_gets_the_same_message_again() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let bus = t.bus("lookout-test");
    let p = |seq| Prediction { camera_id: "cam".into(), frame_sequence: seq, ..Default::default() };
    for seq in 1..=3 {
        bus.publisher(&topics::PREDICTIONS).send(&p(seq)).await.unwrap();
    }
    let attempts = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let task = {
        let attempts = attempts.clone();
        tokio::spawn(bus.subscriber(&topics::PREDICTIONS, "retry").run(
            move |m: Incoming<Prediction>| {
                let (tx, attempts) = (tx.clone(), attempts.clone());
                async move {
                    // The second message fails twice (a database outage, say), then succeeds.
                    if m.message.frame_sequence == 2 && attempts.fetch_add(1, Ordering::SeqCst) < 2
                    {
                        return Err(HandlerError::Transient("database unavailable".into()));
                    }
                    tx.send(m.message.frame_sequence)
                        .await
                        .map_err(|e| HandlerError::Transient(e.to_string()))
                }
            },
            shutdown.clone(),
        ))
    };
    let got = vec![recv(&mut rx).await, recv(&mut rx).await, recv(&mut rx).await];
    assert_eq!(got, vec![1, 2, 3], "order is kept and nothing is skipped");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscription_starts_at_the_newest_message() {
    let t = TestBus::start();
    t.create_topic(topics::CHANGES.name(), 1).await;
    let bus = t.bus("lookout-test");
    let changes = bus.publisher(&topics::CHANGES);
    let c = |seq| PredictionChange {
        camera_id: "cam".into(),
        frame_sequence: seq,
        ..Default::default()
    };
    for seq in 1..=5 {
        changes.send(&c(seq)).await.unwrap();
    }
    let (tx, mut rx) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let live: LiveSubscription<PredictionChange> = bus.live(&topics::CHANGES);
    let task = tokio::spawn(live.run(
        move |m: Incoming<PredictionChange>| {
            let tx = tx.clone();
            async move {
                tx.send(m.message.frame_sequence)
                    .await
                    .map_err(|e| HandlerError::Transient(e.to_string()))
            }
        },
        shutdown.clone(),
    ));
    assert_eq!(recv(&mut rx).await, 5, "history before the newest message is skipped");
    changes.send(&c(6)).await.unwrap();
    assert_eq!(recv(&mut rx).await, 6, "new messages follow");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_topics_is_idempotent_on_existing_topics() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let bus = t.bus("lookout-test");
    let created = lookout_bus::admin::ensure_topics(&bus, &topics::all()).await.unwrap();
    assert!(created.is_empty(), "nothing to create: {created:?}");
    let described = lookout_bus::admin::describe(&bus).await.unwrap();
    let frames = described.iter().find(|d| d.name == bus.topic_name("lookout.frames")).unwrap();
    assert_eq!(frames.partitions.len(), 6);
}

/// Waits until a member's partition count satisfies `want`, and returns it.
async fn until(
    mut owned: tokio::sync::watch::Receiver<usize>,
    want: impl Fn(usize) -> bool,
) -> usize {
    tokio::time::timeout(EVENT_TIMEOUT, owned.wait_for(|n| want(*n)))
        .await
        .expect("the rebalance completes before the timeout")
        .map(|n| *n)
        .expect("the member's count is still published")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_follows_rebalances() {
    let t = TestBus::start();
    t.create_topic(topics::PREDICTIONS.name(), 3).await;
    let bus = t.bus("lookout-test");
    let member = |shutdown: &CancellationToken| {
        let sub = bus.subscriber(&topics::PREDICTIONS, "assignment");
        let owned = sub.assignment();
        let task =
            tokio::spawn(sub.run(|_: Incoming<Prediction>| async { Ok(()) }, shutdown.clone()));
        (owned, task)
    };

    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let (a, task_a) = member(&stop_a);
    assert_eq!(*a.borrow(), 0, "nothing is owned before joining");
    assert_eq!(until(a.clone(), |n| n == 3).await, 3, "a lone member owns every partition");

    let (b, task_b) = member(&stop_b);
    let got_b = until(b.clone(), |n| n > 0).await;
    let got_a = until(a.clone(), move |n| n == 3 - got_b).await;
    assert_eq!((got_a + got_b, got_a > 0), (3, true), "two members share the partitions");

    stop_b.cancel();
    task_b.await.unwrap().unwrap();
    assert_eq!(*b.borrow(), 0, "a stopped member owns nothing");
    assert_eq!(until(a.clone(), |n| n == 3).await, 3, "the survivor takes every partition back");
    stop_a.cancel();
    task_a.await.unwrap().unwrap();
    assert_eq!(*a.borrow(), 0);
}

/// A member cut off from the broker (through a fault proxy) for longer than its session timeout
/// loses its partitions; when the broker is back and it gets them again, it reads them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_lost_to_a_session_timeout_are_read_again_when_they_come_back() {
    let (t, proxy) = TestBus::behind_proxy().await;
    t.create_topic(topics::PREDICTIONS.name(), 3).await;
    let bus = t.bus("lookout-test");
    let predictions = bus.publisher(&topics::PREDICTIONS);
    let p = |seq| Prediction { camera_id: "cam".into(), frame_sequence: seq, ..Default::default() };

    let (tx, mut rx) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let sub = bus.subscriber(&topics::PREDICTIONS, "lost");
    let owned = sub.assignment();
    let task = tokio::spawn(sub.run(
        move |m: Incoming<Prediction>| {
            let tx = tx.clone();
            async move { tx.send(m.message.frame_sequence).await.map_err(HandlerError::transient) }
        },
        shutdown.clone(),
    ));
    predictions.send(&p(1)).await.unwrap();
    assert_eq!(recv(&mut rx).await, 1);

    proxy.cut();
    assert_eq!(until(owned.clone(), |n| n == 0).await, 0, "the session timed out");
    proxy.restore();
    assert_eq!(until(owned.clone(), |n| n == 3).await, 3, "the partitions come back");
    predictions.send(&p(2)).await.unwrap();
    // The first may come again (its offset may not have been committed before the cut).
    while recv(&mut rx).await != 2 {}

    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert!(proxy.accepted() > 1, "the member reconnected through the proxy");
}

/// A producer that is not the bus: another client, as a Python or Java service would be.
fn other_client(t: &TestBus) -> FutureProducer {
    ClientConfig::new().set("bootstrap.servers", t.brokers()).create().expect("producer")
}

async fn produce_with_content_type(
    producer: &FutureProducer,
    topic: &str,
    payload: &[u8],
    content_type: Option<&str>,
) -> i64 {
    let mut record: FutureRecord<'_, str, [u8]> =
        FutureRecord::to(topic).key("cam").payload(payload);
    if let Some(ct) = content_type {
        record = record.headers(
            OwnedHeaders::new().insert(Header { key: headers::CONTENT_TYPE, value: Some(ct) }),
        );
    }
    producer.send(record, std::time::Duration::from_secs(10)).await.expect("produced").offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_conventional_content_type_form_is_decoded() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let bus = t.bus("lookout-test");
    let topic = bus.topic_name(topics::PREDICTIONS.name());
    let producer = other_client(&t);
    let forms: [(u64, Option<&str>); 5] = [
        (1, Some("application/x-protobuf; messageType=lookout.v1.Prediction")),
        (2, Some("lookout.v1.Prediction")),
        (3, Some("application/protobuf; proto=lookout.v1.Prediction")),
        (4, Some("application/x-protobuf")),
        (5, None),
    ];
    for (seq, ct) in forms {
        let p = Prediction { camera_id: "cam".into(), frame_sequence: seq, ..Default::default() };
        produce_with_content_type(&producer, &topic, &topics::PREDICTIONS.encode(&p), ct).await;
    }
    // Other types are refused (dead-lettered), whatever the form.
    let refused = [
        "application/json",
        "application/x-protobuf; messageType=lookout.v1.Frame",
        "lookout.v1.Frame",
    ];
    for ct in refused {
        produce_with_content_type(&producer, &topic, b"{}", Some(ct)).await;
    }
    let last = Prediction { camera_id: "cam".into(), frame_sequence: 6, ..Default::default() };
    bus.publisher(&topics::PREDICTIONS).send(&last).await.unwrap();

    let dead = t.collect(topics::DLQ);
    let (tx, mut rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(bus.subscriber(&topics::PREDICTIONS, "content-types").run(
        move |m: Incoming<Prediction>| {
            let tx = tx.clone();
            async move { tx.send(m.message.frame_sequence).await.map_err(HandlerError::transient) }
        },
        shutdown.clone(),
    ));
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(recv(&mut rx).await);
    }
    assert_eq!(got, vec![1, 2, 3, 4, 5, 6], "every accepted form is decoded, in order");
    let letters = dead.wait_for(refused.len()).await;
    let reasons: Vec<String> =
        letters.iter().map(|m| m.headers.get_str(headers::DLQ_ERROR).unwrap().to_owned()).collect();
    assert!(reasons[0].contains("application/json"), "{reasons:?}");
    assert!(
        reasons[1].contains("lookout.v1.Frame") && reasons[2].contains("lookout.v1.Frame"),
        "{reasons:?}"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_over_the_size_limit_is_cut_to_fit_and_marked() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let writer = t.bus("lookout-test");
    let topic = writer.topic_name(topics::PREDICTIONS.name());
    let big = vec![0xffu8; 60_000];
    writer.publish_raw(&topic, Some(b"cam"), Some(&big), &Headers::new()).await.unwrap();

    // This consumer's producer may send at most 20 kB: the copy must be cut.
    let small =
        lookout_bus::Bus::new(t.config("lookout-test").with_opt("message.max.bytes", "20000"))
            .unwrap();
    let dead = t.collect(topics::DLQ);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        small
            .subscriber(&topics::PREDICTIONS, "too-large")
            .run(|_: Incoming<Prediction>| async { Ok(()) }, shutdown.clone()),
    );
    let letter = dead.wait_for(1).await.remove(0);
    let payload = letter.payload.expect("payload kept, cut");
    assert!(payload.len() < 20_000 && !payload.is_empty(), "{}", payload.len());
    assert_eq!(&payload[..], &big[..payload.len()], "the beginning of the original bytes");
    assert_eq!(letter.headers.get_str(headers::DLQ_TRUNCATED), Some("60000"));
    assert!(letter.headers.get_str(headers::DLQ_ERROR).unwrap().contains("cannot decode"));
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// Publishes `n` changes on a one-partition topic and returns their offsets.
async fn changes(bus: &lookout_bus::Bus, first: u64, n: u64) -> Vec<i64> {
    let publisher = bus.publisher(&topics::CHANGES);
    let mut offsets = Vec::new();
    for seq in first..first + n {
        let c =
            PredictionChange { camera_id: "cam".into(), frame_sequence: seq, ..Default::default() };
        offsets.push(publisher.send(&c).await.unwrap().offset);
    }
    offsets
}

async fn read_sequences(reader: &lookout_bus::Reader, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        let m =
            tokio::time::timeout(EVENT_TIMEOUT, reader.recv()).await.expect("a message").unwrap();
        out.push(m.decode::<PredictionChange>().unwrap().message.frame_sequence);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_start_where_asked() {
    let t = TestBus::start();
    t.create_topic(topics::CHANGES.name(), 1).await;
    let bus = t.bus("lookout-test");
    let name = bus.topic_name(topics::CHANGES.name());
    let first = changes(&bus, 0, 5).await;
    // Later messages get later timestamps: wait for the clock to move on (the condition is
    // time itself), then note the time.
    let last_ts = {
        let reader = bus.reader(&name).start(Start::Last(1)).open(&CancellationToken::new()).await;
        reader.unwrap().unwrap().recv().await.unwrap().timestamp_ms.unwrap()
    };
    while lookout_proto::unix_millis(SystemTime::now()) <= last_ts {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let between = lookout_proto::unix_millis(SystemTime::now());
    let second = changes(&bus, 5, 5).await;
    assert_eq!(first, vec![0, 1, 2, 3, 4]);
    assert_eq!(second, vec![5, 6, 7, 8, 9]);

    let stop = CancellationToken::new();
    let open = |start| {
        let bus = bus.clone();
        let (name, stop) = (name.clone(), stop.clone());
        async move { bus.reader(&name).start(start).open(&stop).await.unwrap().unwrap() }
    };
    assert_eq!(
        read_sequences(&open(Start::Beginning).await, 10).await,
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(read_sequences(&open(Start::Offset(7)).await, 3).await, vec![7, 8, 9]);
    assert_eq!(read_sequences(&open(Start::Last(2)).await, 2).await, vec![8, 9]);
    let by_time = open(Start::Time(between)).await;
    assert_eq!(by_time.starts()[0].offset, 5, "the first message at or after the time");
    assert_eq!(read_sequences(&by_time, 5).await, vec![5, 6, 7, 8, 9]);
    let at_end = open(Start::End).await;
    assert_eq!(
        at_end.starts()[0],
        lookout_bus::PartitionStart { partition: 0, offset: 10, high: 10 }
    );
    changes(&bus, 10, 1).await;
    assert_eq!(read_sequences(&at_end, 1).await, vec![10], "only what comes after");

    let fetcher = bus.fetcher(&name);
    let fetched = fetcher.fetch(0, 3).await.unwrap().expect("offset 3 is there");
    assert_eq!(fetched.offset, 3);
    assert_eq!(fetched.decode::<PredictionChange>().unwrap().message.frame_sequence, 3);
    let many = fetcher.fetch_many(&[(0, 9), (0, 2), (0, 5)]).await.unwrap();
    let offsets: BTreeSet<i64> = many.keys().map(|(_, o)| *o).collect();
    assert_eq!(offsets, [2, 5, 9].into(), "several positions read in one pass");
    assert_eq!(many[&(0, 5)].decode::<PredictionChange>().unwrap().message.frame_sequence, 5);

    let missing = bus.reader(&bus.topic_name("no.such.topic")).open(&stop).await.unwrap_err();
    assert!(matches!(missing, BusError::UnknownTopic { .. }), "{missing}");
    let partition = bus.reader(&name).partitions([3]).open(&stop).await.unwrap_err();
    assert!(partition.to_string().contains("no partition 3"), "{partition}");
}
