//! Network chaos: every service as its own process, with the broker reachable only through a
//! [`FaultProxy`] that the test cuts for a minute and then restores.
//!
//! The embedded broker advertises the proxy's address in its metadata, so every client's
//! connections (bootstrap and after) go through the proxy: while it is cut the broker is
//! unreachable for all of them. The proxy's connection counter and every service's `/readyz`
//! show that.

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{
    Service, changes, counter, eventually, free_port, joined, log_records, predictor, recorder,
    repo, s, sse_until, start, strip_ansi, wait_ready,
};
use lookout_bus::topics;
use lookout_proto::v1::{Frame, Prediction};
use lookout_test_util::{FaultProxy, TestBus};
use serde_json::Value;

/// How long the broker stays unreachable.
const OUTAGE: Duration = Duration::from_secs(60);

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn capture_ms(change: &Value) -> i64 {
    let text = change["capture_time"].as_str().expect("a capture time");
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .expect("an RFC 3339 time");
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A change as compared between runs.
fn key(c: &Value) -> (Option<u64>, String, String, Value) {
    (
        c["frame_sequence"].as_u64(),
        c["current"]["name"].to_string(),
        c["previous"]["name"].to_string(),
        c["snapshot_missing"].clone(),
    )
}

/// A numeric field (`name=42`) of the first log line containing `message`.
fn field(log: &str, message: &str, name: &str) -> u64 {
    let line = log.lines().find(|l| l.contains(message)).expect("the line is logged");
    let plain = strip_ansi(line);
    plain
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {plain}"))
        .parse()
        .unwrap_or_else(|e| panic!("{name} in {plain}: {e}"))
}

/// The broker is unreachable for a minute while camera, predictor, recorder, viewer and log
/// shipper run. Each notices (its `/readyz` names Kafka), none exits, and after the broker
/// returns each works again without a restart. Every frame the camera captured is on the
/// frames topic or counted as dropped in its final figures, every frame on the topic gets a
/// prediction, and the recorder's table equals that of a recorder that read the same topics
/// without interruption.
#[test]
fn the_broker_away_for_a_minute_every_service_recovers_and_nothing_is_silently_lost() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (t, proxy): (TestBus, FaultProxy) = rt.block_on(TestBus::behind_proxy());
    rt.block_on(t.create_registry_topics());
    let (frames, predictions) = rt.block_on(async {
        (t.collect(topics::FRAMES.name()), t.collect(topics::PREDICTIONS.name()))
    });
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = dir.join("logs");
    let port = free_port();

    let logship =
        start(&t, dir, "logship", &s(&["logship", "--sink", &format!("file:{}", logs.display())]));
    let recorder = recorder(&t, dir, "recorder", "chaos.db", "recorder");
    let viewer =
        start(&t, dir, "viewer", &s(&["viewer", "--listen", &format!("127.0.0.1:{port}")]));
    let predictor = predictor(&t, dir, "predictor");
    joined(&predictor);
    let source = format!("images:{}", repo("samples").display());
    let camera = start(
        &t,
        dir,
        "camera",
        &s(&["camera", "--source", &source, "--hold", "1s", "--fps", "5", "--max-width", "320"]),
    );
    let mut services = [logship, recorder, viewer, predictor, camera];
    let admins: Vec<String> = services.iter().map(Service::admin).collect();

    // Everything flows: changes are stored, and every service is ready.
    eventually("the first changes", || (changes(dir, "chaos.db").len() >= 2).then_some(()));
    for (service, admin) in services.iter().zip(&admins) {
        wait_ready(service, admin, true);
    }
    assert!(proxy.accepted() > 0, "the clients connect through the proxy");

    // The broker goes away: every service notices (so none reaches it another way).
    let accepted_before = proxy.accepted();
    proxy.cut();
    let cut_at = Instant::now();
    for (service, admin) in services.iter().zip(&admins) {
        let body = wait_ready(service, admin, false);
        assert!(body.contains("kafka"), "{}'s /readyz names Kafka: {body}", service.name);
    }
    std::thread::sleep(OUTAGE.saturating_sub(cut_at.elapsed()));
    assert!(proxy.accepted() > accepted_before, "clients kept trying to reconnect");
    for service in &mut services {
        assert!(service.running(), "{} still runs after the outage", service.name);
    }

    // Back: every service is ready again, the same processes.
    proxy.restore();
    let restored_ms = unix_ms(SystemTime::now());
    for (service, admin) in services.iter().zip(&admins) {
        wait_ready(service, admin, true);
    }
    // Viewer: live labels of frames captured after the outage, and new stored changes.
    let label = sse_until(port, |v| {
        v["label"].is_string() && v["capture_ms"].as_i64().is_some_and(|ms| ms > restored_ms)
    });
    assert_eq!(label["camera"], "samples", "{label}");
    sse_until(port, |v| {
        v["change_id"].is_i64() && v["time_ms"].as_i64().is_some_and(|ms| ms > restored_ms)
    });
    // Recorder: changes of frames captured after the outage.
    let after = eventually("a change captured after the outage", || {
        changes(dir, "chaos.db").into_iter().find(|c| capture_ms(c) > restored_ms)
    });
    // Log shipper: the recorder's log record about that change.
    eventually("the log record of a change after the outage", || {
        log_records(&logs).into_iter().find(|r| {
            r["service"] == "lookout-recorder"
                && r["message"] == "change recorded"
                && r["frame_sequence"] == after["frame_sequence"]
        })
    });
    for service in &mut services {
        assert!(service.running(), "{} was not restarted", service.name);
    }

    // The camera stops; its final figures account for every frame it captured.
    let [_, recorder, _, predictor, camera] = &mut services;
    camera.stop();
    let log = camera.log_text();
    let captured = field(&log, "camera stopped", "captured");
    let published = field(&log, "camera stopped", "published");
    let dropped = field(&log, "camera stopped", "dropped");
    assert!(dropped > 0, "frames were dropped during the outage, and counted");
    assert_eq!(published + dropped, captured, "every captured frame is published or counted");
    let on_topic = eventually("every published frame on the frames topic", || {
        let seqs: BTreeSet<u64> = frames.decoded::<Frame>().iter().map(|f| f.sequence).collect();
        (seqs.len() as u64 >= published).then_some(seqs)
    });

    // The predictor: a prediction for every frame on the topic (labelled, or skipped as too
    // old for the frames that waited out the outage in the camera's queue).
    let predicted = eventually("a prediction for every frame", || {
        let p: Vec<Prediction> = predictions.decoded();
        let seqs: BTreeSet<u64> = p.iter().map(|p| p.frame_sequence).collect();
        on_topic.is_subset(&seqs).then_some(p.len() as u64)
    });

    // The recorder has read every prediction; another one, started now on the same topics,
    // reads them without interruption: both store the same changes.
    let recorder_admin = &admins[1];
    eventually("the recorder to read every prediction", || {
        (counter(recorder_admin, "lookout_recorder_predictions_total") >= predicted).then_some(())
    });
    let reference = common::recorder(&t, dir, "reference", "reference.db", "recorder-reference");
    let reference_admin = reference.admin();
    eventually("the reference recorder to read every prediction", || {
        (counter(&reference_admin, "lookout_recorder_predictions_total") >= predicted).then_some(())
    });
    let (got, want) = eventually("the same changes as an uninterrupted run", || {
        let got: Vec<_> = changes(dir, "chaos.db").iter().map(key).collect();
        let want: Vec<_> = changes(dir, "reference.db").iter().map(key).collect();
        (!want.is_empty() && got == want).then_some((got, want))
    });
    assert_eq!(got, want, "nothing lost, nothing doubled");
    assert!(
        got.iter().any(|k| k.0 == after["frame_sequence"].as_u64()),
        "the comparison covers the changes after the outage"
    );
    assert!(recorder.running() && predictor.running());
}
