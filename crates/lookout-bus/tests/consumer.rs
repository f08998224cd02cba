//! The consumer group's partition tasks against a real Kafka-protocol broker: a blocked
//! partition does not hold up the others, a stuck handler keeps its membership, a rebalance
//! hands no in-flight message to two members at once, a panic fails the subscriber, batches.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lookout_bus::{Bus, BusError, HandlerError, Incoming, Rejected, headers, topics};
use lookout_proto::v1::Prediction;
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

async fn recv<T>(rx: &mut mpsc::Receiver<T>) -> T {
    tokio::time::timeout(EVENT_TIMEOUT, rx.recv())
        .await
        .expect("message arrives before the timeout")
        .expect("channel open")
}

fn prediction(camera: &str, seq: u64) -> Prediction {
    Prediction { camera_id: camera.into(), frame_sequence: seq, ..Default::default() }
}

/// Camera ids whose predictions land on each partition of the predictions topic (keyed by
/// camera): publishes one prediction (sequence 0) per candidate until every partition has
/// one. Returns them and how many probes were published.
async fn cameras_by_partition(bus: &Bus, partitions: i32) -> (BTreeMap<i32, String>, usize) {
    let publisher = bus.publisher(&topics::PREDICTIONS);
    let mut found = BTreeMap::new();
    for i in 0.. {
        let camera = format!("cam-{i}");
        let d = publisher.send(&prediction(&camera, 0)).await.unwrap();
        found.entry(d.partition).or_insert(camera);
        if found.len() == partitions as usize {
            return (found, i + 1);
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_partition_does_not_delay_the_others() {
    let t = TestBus::start();
    t.create_topic(topics::PREDICTIONS.name(), 2).await;
    let bus = t.bus("lookout-test");
    let (cams, _) = cameras_by_partition(&bus, 2).await;
    let (slow, fast) = (cams[&0].clone(), cams[&1].clone());
    let publisher = bus.publisher(&topics::PREDICTIONS);

    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut rx) = mpsc::channel(64);
    let shutdown = CancellationToken::new();
    let task = {
        let (gate, slow) = (gate.clone(), slow.clone());
        tokio::spawn(bus.subscriber(&topics::PREDICTIONS, "blocked").run(
            move |m: Incoming<Prediction>| {
                let (gate, tx, slow) = (gate.clone(), tx.clone(), slow.clone());
                async move {
                    if m.message.camera_id == slow && m.message.frame_sequence == 1 {
                        // Blocks its partition until the test opens the gate.
                        gate.acquire().await.expect("open").forget();
                    }
                    tx.send((m.message.camera_id, m.message.frame_sequence))
                        .await
                        .map_err(HandlerError::transient)
                }
            },
            shutdown.clone(),
        ))
    };
    publisher.send(&prediction(&slow, 1)).await.unwrap();
    publisher.send(&prediction(&slow, 2)).await.unwrap();
    for seq in 1..=20 {
        publisher.send(&prediction(&fast, seq)).await.unwrap();
    }
    let mut fast_seen = Vec::new();
    while fast_seen.len() < 20 {
        let (camera, seq) = recv(&mut rx).await;
        if seq == 0 {
            continue; // the probes of `cameras_by_partition`
        }
        assert_eq!(camera, fast, "the blocked partition handled nothing more");
        fast_seen.push(seq);
    }
    assert_eq!(fast_seen, (1..=20).collect::<Vec<_>>(), "all of the other partition, in order");
    assert_eq!(gate.available_permits(), 0, "and all while the gate was still shut");
    gate.add_permits(1);
    let mut slow_seen = Vec::new();
    while slow_seen.len() < 2 {
        let (camera, seq) = recv(&mut rx).await;
        if seq > 0 {
            assert_eq!(camera, slow);
            slow_seen.push(seq);
        }
    }
    assert_eq!(slow_seen, vec![1, 2], "the blocked partition goes on, in order");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// Records whether a member's partition count ever dropped to 0 after it first owned some.
fn watch_membership(mut owned: watch::Receiver<usize>) -> (Arc<AtomicBool>, Arc<AtomicBool>) {
    let (joined, left) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (j, l) = (joined.clone(), left.clone());
    tokio::spawn(async move {
        loop {
            let n = *owned.borrow_and_update();
            if n > 0 {
                j.store(true, Ordering::SeqCst);
            } else if j.load(Ordering::SeqCst) {
                l.store(true, Ordering::SeqCst);
            }
            if owned.changed().await.is_err() {
                return;
            }
        }
    });
    (joined, left)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_stuck_past_the_poll_interval_keeps_its_membership_and_loses_nothing() {
    const MAX_POLL: Duration = Duration::from_millis(3000);
    let t = TestBus::start();
    t.create_topic(topics::PREDICTIONS.name(), 2).await;
    let bus = Bus::new(
        t.config("lookout-test")
            .with_opt("max.poll.interval.ms", &MAX_POLL.as_millis().to_string()),
    )
    .unwrap();
    let (cams, probes) = cameras_by_partition(&bus, 2).await;
    let (stuck, other) = (cams[&0].clone(), cams[&1].clone());
    let publisher = bus.publisher(&topics::PREDICTIONS);

    let gate = Arc::new(Semaphore::new(0));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let (tx, mut rx) = mpsc::channel(64);
    let shutdown = CancellationToken::new();
    let subscriber = bus.subscriber(&topics::PREDICTIONS, "stuck");
    let (joined, left) = watch_membership(subscriber.assignment());
    let task = {
        let (gate, stuck, handled) = (gate.clone(), stuck.clone(), handled.clone());
        tokio::spawn(subscriber.run(
            move |m: Incoming<Prediction>| {
                let (gate, tx, stuck, handled) =
                    (gate.clone(), tx.clone(), stuck.clone(), handled.clone());
                async move {
                    if m.message.camera_id == stuck && m.message.frame_sequence == 1 {
                        gate.acquire().await.expect("open").forget();
                    }
                    handled.lock().unwrap().push((m.meta.partition, m.meta.offset));
                    tx.send(m.message.frame_sequence).await.map_err(HandlerError::transient)
                }
            },
            shutdown.clone(),
        ))
    };
    for seq in 1..=5 {
        publisher.send(&prediction(&stuck, seq)).await.unwrap();
    }
    // The condition under test is elapsed time: the handler stays stuck for more than twice
    // the poll interval while the other partition keeps going.
    let stuck_for = MAX_POLL * 2 + Duration::from_secs(1);
    let started = tokio::time::Instant::now();
    let mut seq = 1;
    while started.elapsed() < stuck_for {
        publisher.send(&prediction(&other, seq)).await.unwrap();
        loop {
            if recv(&mut rx).await == seq {
                break;
            }
        }
        seq += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(joined.load(Ordering::SeqCst), "the member owned partitions");
    assert!(!left.load(Ordering::SeqCst), "the member never lost its partitions while stuck");
    gate.add_permits(1);
    let want: usize = probes + 5 + (seq as usize - 1); // probes, the stuck camera's five, the others
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    while handled.lock().unwrap().len() < want {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {:?}", handled.lock().unwrap());
        let _ = recv(&mut rx).await;
    }
    let all = handled.lock().unwrap().clone();
    let distinct: BTreeSet<_> = all.iter().collect();
    assert_eq!(all.len(), want, "each message once: {all:?}");
    assert_eq!(distinct.len(), want);
    assert!(!left.load(Ordering::SeqCst));
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_while_messages_are_in_flight_hands_none_of_them_to_two_members() {
    let t = TestBus::start();
    t.create_topic(topics::PREDICTIONS.name(), 4).await;
    let bus = t.bus("lookout-test");

    // A stream of messages over every partition (100 a second), faster than one member handles
    // them (50 ms each, 4 partitions at a time: 80 a second), until the test has seen the
    // group rebalance and both members work: every partition task has a backlog, so it is in
    // the middle of a message when its partition is revoked.
    let producing = CancellationToken::new();
    let producer = {
        let (bus, producing) = (bus.clone(), producing.clone());
        tokio::spawn(async move {
            let publisher = bus.publisher(&topics::PREDICTIONS);
            let mut seq = 0u64;
            while !producing.is_cancelled() {
                for _ in 0..4 {
                    let p = prediction(&format!("cam-{}", seq % 16), seq);
                    let _pending = publisher.enqueue(&p, None).await.unwrap();
                    seq += 1;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            bus.flush(EVENT_TIMEOUT).unwrap();
            seq
        })
    };

    // Every handling: which member, the message's partition and sequence, when it started and
    // ended. Handled counts per member.
    let handled: Arc<Mutex<Vec<Handling>>> = Arc::new(Mutex::new(Vec::new()));
    let (progress, _) = watch::channel([0usize; 2]);
    let progress = Arc::new(progress);
    let member = |id: usize, shutdown: &CancellationToken| {
        let (handled, progress) = (handled.clone(), progress.clone());
        let subscriber = bus.subscriber(&topics::PREDICTIONS, "in-flight");
        let assignment = subscriber.assignment();
        let task = tokio::spawn(subscriber.run(
            move |m: Incoming<Prediction>| {
                let (handled, progress) = (handled.clone(), progress.clone());
                async move {
                    let start = Instant::now();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    handled.lock().unwrap().push(Handling {
                        member: id,
                        partition: m.meta.partition,
                        sequence: m.message.frame_sequence,
                        start,
                        end: Instant::now(),
                    });
                    progress.send_modify(|p| p[id] += 1);
                    Ok(())
                }
            },
            shutdown.clone(),
        ));
        (task, assignment)
    };
    let stop = CancellationToken::new();
    let (a, mut a_owns) = member(0, &stop);
    let mut rx = progress.subscribe();
    tokio::time::timeout(EVENT_TIMEOUT, rx.wait_for(|p| p[0] >= 20)).await.unwrap().unwrap();
    assert_eq!(*a_owns.borrow(), 4, "the first member owns every partition");
    let (b, _) = member(1, &stop);
    // The first member gives partitions up: its revoke callback has returned (the partition
    // tasks drained, offsets committed) by the time its assignment shrinks.
    tokio::time::timeout(EVENT_TIMEOUT * 2, a_owns.wait_for(|n| *n < 4))
        .await
        .expect("the first member gives partitions up")
        .unwrap();
    let revoked = Instant::now();
    tokio::time::timeout(EVENT_TIMEOUT, rx.wait_for(|p| p[1] >= 40)).await.unwrap().unwrap();
    producing.cancel();
    let total = producer.await.unwrap() as usize;
    let all_seen = |handled: &[Handling]| {
        handled.iter().map(|h| h.sequence).collect::<BTreeSet<_>>().len() >= total
    };
    tokio::time::timeout(EVENT_TIMEOUT * 2, async {
        while !all_seen(&handled.lock().unwrap()) {
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("every message is handled");
    stop.cancel();
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();

    let all = handled.lock().unwrap().clone();
    let distinct: BTreeSet<u64> = all.iter().map(|h| h.sequence).collect();
    assert_eq!(distinct.len(), total, "none lost");
    // Each partition that moved to the new member: the first member finished every message of
    // it, those in flight at the revoke included, before it let the partition go.
    let mut moved = 0;
    for partition in 0..4 {
        let of = |member: usize| {
            all.iter().filter(move |h| h.partition == partition && h.member == member)
        };
        if of(1).next().is_none() {
            continue;
        }
        moved += 1;
        let late: Vec<_> = of(0).filter(|h| h.end > revoked).collect();
        assert!(
            late.is_empty(),
            "partition {partition}: handled by the first member after it let the partition go: {late:?}"
        );
        let last_end = of(0).map(|h| h.end).max();
        let next_start = of(1).map(|h| h.start).min().unwrap();
        assert!(
            last_end.is_none_or(|end| end <= next_start),
            "partition {partition}: two members at once"
        );
    }
    assert!(moved > 0, "a partition moved to the new member");
    // Messages handled twice, if any, are those whose offsets the first member could not
    // commit: the embedded broker refuses commits while the group rebalances (real Kafka takes
    // them until the new assignment is handed out), so there the next owner starts again from
    // the last commit that got through. At least once; never by two members at once.
    let twice = all.len() - distinct.len();
    eprintln!(
        "{} handlings of {total} messages; {twice} handled again by the next owner",
        all.len()
    );
}

/// One message handled by one member.
#[derive(Debug, Clone)]
struct Handling {
    member: usize,
    partition: i32,
    sequence: u64,
    start: Instant,
    end: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_the_subscriber() {
    let t = TestBus::start();
    t.create_topic(topics::PREDICTIONS.name(), 2).await;
    let bus = t.bus("lookout-test");
    bus.publisher(&topics::PREDICTIONS).send(&prediction("cam", 1)).await.unwrap();
    let run = bus.subscriber(&topics::PREDICTIONS, "panics").run(
        |m: Incoming<Prediction>| async move {
            assert_ne!(m.message.frame_sequence, 1, "a bug in the handler");
            Ok(())
        },
        CancellationToken::new(),
    );
    let err =
        tokio::time::timeout(EVENT_TIMEOUT, run).await.expect("fails, not hangs").unwrap_err();
    let BusError::HandlerPanicked { message, partition, .. } = &err else {
        panic!("unexpected error: {err}")
    };
    assert!(message.contains("a bug in the handler"), "{message}");
    assert!(*partition >= 0);
    // Not acknowledged: a new member of the group gets the message again.
    let (tx, mut rx) = mpsc::channel(4);
    let shutdown = CancellationToken::new();
    let again = tokio::spawn(bus.subscriber(&topics::PREDICTIONS, "panics").run(
        move |m: Incoming<Prediction>| {
            let tx = tx.clone();
            async move { tx.send(m.message.frame_sequence).await.map_err(HandlerError::transient) }
        },
        shutdown.clone(),
    ));
    assert_eq!(recv(&mut rx).await, 1);
    shutdown.cancel();
    again.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_come_in_order_and_a_refused_batch_is_split_to_find_the_bad_message() {
    let t = TestBus::start();
    t.create_topic(topics::PREDICTIONS.name(), 1).await;
    t.create_topic(topics::DLQ, 1).await;
    let bus = t.bus("lookout-test");
    let publisher = bus.publisher(&topics::PREDICTIONS);
    for seq in 0..100 {
        let camera = if seq == 42 { "poison" } else { "cam" };
        let _pending = publisher.enqueue(&prediction(camera, seq), None).await.unwrap();
    }
    bus.flush(EVENT_TIMEOUT).unwrap();

    let dead = t.collect(topics::DLQ);
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let (tx, mut rx) = mpsc::channel(256);
    let shutdown = CancellationToken::new();
    let task = {
        let sizes = sizes.clone();
        tokio::spawn(bus.subscriber(&topics::PREDICTIONS, "batches").run_batched(
            32,
            Duration::from_millis(50),
            move |batch: Vec<Incoming<Prediction>>| {
                let (tx, sizes) = (tx.clone(), sizes.clone());
                async move {
                    sizes.lock().unwrap().push(batch.len());
                    // All or nothing, like a transaction: a batch with the bad one does nothing.
                    if batch.iter().any(|m| m.message.camera_id == "poison") {
                        return Err(HandlerError::permanent("camera id not allowed"));
                    }
                    for m in batch {
                        tx.send(m.message.frame_sequence).await.map_err(HandlerError::transient)?;
                    }
                    Ok(Rejected::none())
                }
            },
            shutdown.clone(),
        ))
    };
    let mut got = Vec::new();
    while got.len() < 99 {
        got.push(recv(&mut rx).await);
    }
    let want: Vec<u64> = (0..100).filter(|s| *s != 42).collect();
    assert_eq!(got, want, "every good message once, in order");
    let letters = dead.wait_for(1).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].headers.get_str(headers::DLQ_OFFSET), Some("42"));
    assert!(letters[0].headers.get_str(headers::DLQ_ERROR).unwrap().contains("not allowed"));
    let sizes = sizes.lock().unwrap().clone();
    assert!(sizes.iter().any(|n| *n > 1), "messages came several at a time: {sizes:?}");
    assert!(sizes.iter().all(|n| *n <= 32), "never more than asked: {sizes:?}");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dead_letter_topic_fails_the_subscriber_instead_of_retrying_for_ever() {
    let t = TestBus::start();
    t.create_topic(topics::PREDICTIONS.name(), 1).await; // and no dead-letter topic
    let writer = t.bus("lookout-test");
    let topic = writer.topic_name(topics::PREDICTIONS.name());
    writer
        .publish_raw(
            &topic,
            Some(b"cam"),
            Some(b"\xff\xff not a message"),
            &lookout_bus::Headers::new(),
        )
        .await
        .unwrap();
    // Brokers that do not create topics on use (auto.create.topics.enable=false), as
    // production clusters are set up.
    let bus = Bus::new(
        t.config("lookout-test")
            .with_opt("allow.auto.create.topics", "false")
            .with_opt("topic.metadata.propagation.max.ms", "1000"),
    )
    .unwrap();
    let run = bus
        .subscriber(&topics::PREDICTIONS, "no-dlq")
        .run(|_: Incoming<Prediction>| async { Ok(()) }, CancellationToken::new());
    let err =
        tokio::time::timeout(EVENT_TIMEOUT, run).await.expect("fails, not hangs").unwrap_err();
    assert!(matches!(err, BusError::DeadLetter { .. }), "{err}");
    assert!(err.to_string().contains("lookout.dlq"), "{err}");
}
