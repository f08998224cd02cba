//! The `lookout` binary as a user runs it: a broker process, a tap process, a publisher.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
};

use lookout_bus::{Bus, BusConfig, topics};
use lookout_proto::v1::{Encoding, Frame, ModelKind, ModelRef, Prediction};
use lookout_test_util::EVENT_TIMEOUT;

/// Kills the child when the test ends, however it ends.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lookout() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lookout"));
    c.env_remove("LOOKOUT_BROKERS").env("RUST_LOG", "warn");
    c
}

/// Spawns a child and streams its stdout lines into a channel.
fn spawn_lines(mut cmd: Command) -> (Guard, mpsc::Receiver<String>) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("lookout runs");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Guard(child), rx)
}

/// A `lookout broker` process, and the address it listens on.
fn broker() -> (Guard, String) {
    let mut broker = lookout();
    broker.args(["broker", "--listen", "127.0.0.1:0"]);
    let (guard, lines) = spawn_lines(broker);
    let first = lines.recv_timeout(EVENT_TIMEOUT).expect("broker prints its address");
    let addr = first.strip_prefix("listening on ").expect("first line names the address");
    (guard, addr.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_shows_what_another_process_publishes_through_the_broker_process() {
    let (_broker, addr) = broker();

    let mut tap = lookout();
    tap.args(["tap", "lookout.frames", "--brokers", &addr, "--count", "3"]);
    let (_tap, tapped) = spawn_lines(tap);

    let bus = Bus::new(BusConfig::new(&addr, "lookout-test")).unwrap();
    let frames = bus.publisher(&topics::FRAMES);
    for seq in 1..=3u64 {
        let f = Frame {
            camera_id: "porch".into(),
            sequence: seq,
            width: 2,
            height: 1,
            encoding: Encoding::Jpeg.into(),
            data: vec![0xff; 100].into(),
            ..Default::default()
        };
        frames.send(&f).await.unwrap();
    }

    let mut seqs = Vec::new();
    for _ in 0..3 {
        let line = tapped.recv_timeout(EVENT_TIMEOUT).expect("tap prints each frame");
        let v: serde_json::Value = serde_json::from_str(&line).expect("tap prints JSON lines");
        assert_eq!(v["type"], "lookout.v1.Frame");
        assert_eq!(v["key"], "porch");
        assert_eq!(v["headers"]["content-type"], topics::FRAMES.content_type());
        assert!(v["headers"]["traceparent"].as_str().unwrap().starts_with("00-"));
        assert_eq!(v["value"]["cameraId"], "porch");
        assert_eq!(v["value"]["encoding"], "ENCODING_JPEG");
        assert_eq!(v["value"]["data"], "<100 bytes>");
        seqs.push(v["value"]["sequence"].as_str().unwrap().parse::<u64>().unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_keeps_the_models_apart() {
    let (_broker, addr) = broker();

    let mut tap = lookout();
    tap.args(["tap", "lookout.predictions", "--brokers", &addr, "--count", "2"])
        .args(["--model", "ssdlite-mobilenet-v2-coco"]);
    let (mut tap, tapped) = spawn_lines(tap);

    let bus = Bus::new(BusConfig::new(&addr, "lookout-test")).unwrap();
    let predictions = bus.publisher(&topics::PREDICTIONS);
    let model = |name: &str, kind: ModelKind| {
        Some(ModelRef { name: name.into(), version: "1".into(), kind: kind.into() })
    };
    for seq in 1..=3u64 {
        for (name, kind) in [
            ("efficientnet-lite0", ModelKind::Classification),
            ("ssdlite-mobilenet-v2-coco", ModelKind::Detection),
        ] {
            let p = Prediction {
                camera_id: "porch".into(),
                frame_sequence: seq,
                model: model(name, kind),
                ..Default::default()
            };
            predictions.send(&p).await.unwrap();
        }
    }

    let mut seqs = Vec::new();
    for _ in 0..2 {
        let line = tapped.recv_timeout(EVENT_TIMEOUT).expect("tap prints the detector's");
        let v: serde_json::Value = serde_json::from_str(&line).expect("tap prints JSON lines");
        assert_eq!(v["value"]["model"]["name"], "ssdlite-mobilenet-v2-coco", "{v}");
        assert_eq!(v["value"]["model"]["kind"], "MODEL_KIND_DETECTION", "{v}");
        seqs.push(v["value"]["frameSequence"].as_str().unwrap().parse::<u64>().unwrap());
    }
    // The detector's first two predictions were printed, none of the classifier's, and then
    // the tap stopped at its count.
    assert_eq!(seqs, [1, 2]);
    let end = tapped.recv_timeout(EVENT_TIMEOUT);
    assert_eq!(end, Err(mpsc::RecvTimeoutError::Disconnected), "the tap ends, printing no more");
    assert!(tap.0.wait().unwrap().success());
}

#[test]
fn a_bad_argument_is_a_usage_error() {
    let out = lookout().args(["tap"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "missing topic exits with EX_USAGE");
    let out = lookout().args(["tap", "x", "--from", "yesterday-ish"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
    let out = lookout().args(["--help"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("broker"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_follows_readiness() {
    use lookout_service::{Readiness, admin};
    let readiness = Readiness::default();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let addr = admin::serve(
        "127.0.0.1:0".parse().unwrap(),
        admin::AdminState::without_metrics(readiness.clone()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let url = format!("http://{addr}/readyz");
    let check = || lookout().args(["healthcheck", &url]).output().unwrap();
    readiness.set("kafka", false);
    let out = check();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("503"), "{out:?}");
    readiness.set("kafka", true);
    assert!(check().status.success());
    shutdown.cancel();
}

#[test]
fn topics_check_says_when_the_brokers_cannot_describe_topic_configs() {
    let mut broker = lookout();
    broker.args(["broker", "--listen", "127.0.0.1:0"]);
    let (_broker, lines) = spawn_lines(broker);
    let first = lines.recv_timeout(EVENT_TIMEOUT).expect("broker prints its address");
    let addr = first.strip_prefix("listening on ").unwrap().to_owned();

    // --create finds the topics the broker made and leaves them alone.
    let out = lookout().args(["topics", "--create", "--brokers", &addr]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("created"), "{text}");
    assert!(text.contains("--check"), "says how to compare existing topics: {text}");

    // The embedded broker has no DescribeConfigs: --check fails and says why.
    let out = lookout().args(["topics", "--check", "--brokers", &addr]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DescribeConfigs"), "{err}");
}
