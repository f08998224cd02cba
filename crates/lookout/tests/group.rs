//! A consumer group of three separate processes (`lookout tap --group`) shares a 6-partition
//! topic; one member is killed with SIGKILL mid-stream; every message is still handled.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use lookout_bus::topics;
use lookout_proto::v1::Prediction;
use lookout_test_util::{EVENT_TIMEOUT, TestBus};

const MESSAGES: u64 = 3000;
const PARTITIONS: i32 = 6;

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (member, partition, offset) of each message a member printed (= handled).
type Handled = (usize, i32, i64);

fn member(t: &TestBus, id: usize, tx: mpsc::Sender<Handled>) -> Guard {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(["tap", topics::PREDICTIONS.name(), "--group", "sharers", "--from", "beginning"])
        .args(t.child_args())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("lookout tap runs");
    let stdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
            let p = v["partition"].as_i64().unwrap() as i32;
            let o = v["offset"].as_i64().unwrap();
            if tx.send((id, p, o)).is_err() {
                break;
            }
        }
    });
    Guard(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_loses_nothing() {
    let t = TestBus::start();
    t.create_topic(topics::PREDICTIONS.name(), PARTITIONS).await;
    let bus = t.bus("lookout-test");

    let (tx, rx) = mpsc::channel();
    let mut members: Vec<Option<Guard>> = (0..3).map(|i| Some(member(&t, i, tx.clone()))).collect();
    drop(tx);

    // Produce steadily in the background, spread over many keys so every partition gets data.
    let producer = {
        let publisher = bus.publisher(&topics::PREDICTIONS);
        tokio::spawn(async move {
            for seq in 0..MESSAGES {
                let p = Prediction {
                    camera_id: format!("cam-{}", seq % 24),
                    frame_sequence: seq,
                    ..Default::default()
                };
                publisher.send(&p).await.expect("delivered");
                if seq % 50 == 49 {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        })
    };

    let mut handled: Vec<Handled> = Vec::new();
    let mut killed_at = None;
    let deadline = Instant::now() + EVENT_TIMEOUT * 3;
    let mut ends: Option<BTreeMap<i32, i64>> = None;
    loop {
        assert!(Instant::now() < deadline, "the group did not handle every message in time");
        if let Ok(h) = rx.recv_timeout(Duration::from_millis(200)) {
            handled.push(h);
        }
        // Kill member 0 once all three are working and it has handled a good share.
        let active: BTreeSet<usize> = handled.iter().map(|h| h.0).collect();
        let by_victim = handled.iter().filter(|h| h.0 == 0).count();
        if killed_at.is_none() && active.len() == 3 && by_victim >= 100 {
            let mut victim = members[0].take().unwrap();
            victim.0.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix
            victim.0.wait().unwrap();
            killed_at = Some(handled.len());
        }
        if ends.is_none() && producer.is_finished() {
            let described = lookout_bus::admin::describe(&bus).await.unwrap();
            let topic = described
                .iter()
                .find(|d| d.name == bus.topic_name(topics::PREDICTIONS.name()))
                .unwrap();
            ends = Some(topic.partitions.iter().map(|p| (p.id, p.high)).collect());
        }
        if let Some(ends) = &ends
            && killed_at.is_some()
        {
            let seen: BTreeSet<(i32, i64)> = handled.iter().map(|h| (h.1, h.2)).collect();
            if ends.iter().all(|(p, high)| (0..*high).all(|o| seen.contains(&(*p, o)))) {
                break;
            }
        }
    }
    producer.await.unwrap();

    let killed_at = killed_at.expect("the victim was killed");
    let ends = ends.unwrap();
    assert_eq!(ends.values().sum::<i64>(), MESSAGES as i64);
    let victims_partitions: BTreeSet<i32> =
        handled[..killed_at].iter().filter(|h| h.0 == 0).map(|h| h.1).collect();
    let taken_over: BTreeSet<i32> =
        handled[killed_at..].iter().filter(|h| h.0 != 0).map(|h| h.1).collect();
    assert!(
        victims_partitions.is_subset(&taken_over),
        "the survivors took over the victim's partitions {victims_partitions:?} (they handled {taken_over:?})"
    );
    let duplicates =
        handled.len() - handled.iter().map(|h| (h.1, h.2)).collect::<BTreeSet<_>>().len();
    eprintln!(
        "handled {} deliveries for {MESSAGES} messages ({duplicates} re-deliveries)",
        handled.len()
    );
    for m in &mut members {
        drop(m.take());
    }
}
