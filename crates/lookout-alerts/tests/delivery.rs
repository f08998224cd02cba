//! The alerts service end to end: real predictions on the embedded broker, alerts on the
//! alerts topic, delivered to the machine's Mosquitto (127.0.0.1:1883), to a Mosquitto the
//! test stops and starts, and to a webhook server that fails for a while.

mod common;

use std::{collections::BTreeSet, sync::atomic::Ordering};

use common::{Mosquitto, Service, Subscriber, Webhook, mqtt_prefix, publish};
use lookout_alerts::{SinkSpec, sink::webhook};
use lookout_bus::topics;
use lookout_proto::{
    objects,
    v1::{Alert, AlertSource, Prediction, PredictionChange},
};
use lookout_test_util::TestBus;

const RULES: &str = r#"
[[camera]]
id = "door"

[[alert]]
name = "cat-seen"
camera = "door*"
label = "cat"
min_score = 0.5
for_frames = 3
cooldown = 0

[[alert]]
name = "marker"
label = "marker"
cooldown = 0
"#;

const SECRET: &str = "s3cret";

/// Two episodes of a cat, a one-frame glimpse that is not one, and a marker that closes the
/// sequence: alerts go out in the order of the frames, so once the marker's alert is in, any
/// extra alert of the episodes before it would be too.
const FRAMES: &[(u64, &str)] = &[
    (1, "cat"),
    (2, "cat"),
    (3, "cat"), // episode 1 alerts
    (4, "cat"),
    (5, "dog"),
    (6, "cat"),
    (7, "dog"), // one frame: no alert
    (8, "cat"),
    (9, "cat"),
    (10, "cat"), // episode 2 alerts
    (11, "cat"),
    (12, "dog"),
    (13, "marker"),
];

#[tokio::test(flavor = "multi_thread")]
async fn each_episode_alerts_once_on_mqtt_and_the_webhook() {
    let tb = TestBus::start();
    tb.create_registry_topics().await;
    let prefix = mqtt_prefix();
    let mqtt = Subscriber::connect(1883, &prefix, false).await;
    let hook = Webhook::start(false).await;
    let sinks =
        vec!["mqtt://127.0.0.1:1883".parse::<SinkSpec>().unwrap(), hook.url.parse().unwrap()];
    let service = Service::start_with(&tb, RULES, sinks, &prefix, Some(SECRET));
    let alerts_topic = tb.collect(topics::ALERTS.name());
    let predictions_topic = tb.collect(topics::PREDICTIONS.name());
    let bus = tb.bus("test-predictor");

    publish(&bus, "door-1", FRAMES).await;

    let received = mqtt.wait_for(3).await;
    let got: Vec<(&str, &str)> = received
        .iter()
        .map(|(topic, body)| (topic.as_str(), body["episode"].as_str().unwrap()))
        .collect();
    let cat_topic = format!("{prefix}/door-1/cat-seen");
    let marker_topic = format!("{prefix}/door-1/marker");
    assert_eq!(
        got,
        vec![
            (cat_topic.as_str(), "cat-seen/door-1/1"),
            (cat_topic.as_str(), "cat-seen/door-1/8"),
            (marker_topic.as_str(), "marker/door-1/13"),
        ],
        "exactly one alert per episode, in order"
    );
    let first = &received[0].1;
    assert_eq!(
        (first["first_sequence"].as_u64(), first["last_sequence"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(first["label"], "cat");
    assert_eq!(first["source"], "predictions");
    assert_eq!(first["model"], "classifier");

    let requests = hook.wait_for(3).await;
    let episodes: Vec<&str> =
        requests.iter().map(|r| r.headers[webhook::EPISODE_HEADER].to_str().unwrap()).collect();
    assert_eq!(episodes, ["cat-seen/door-1/1", "cat-seen/door-1/8", "marker/door-1/13"]);
    for r in &requests {
        assert_eq!(r.headers["content-type"], "application/json");
        let signed = r.headers[webhook::SIGNATURE_HEADER].to_str().unwrap();
        assert_eq!(signed, webhook::signature(SECRET, &r.body), "the signature covers the body");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["episode"], r.headers[webhook::EPISODE_HEADER].to_str().unwrap());
    }

    // On the bus: the same three alerts, each continuing the trace of the frame that fired it.
    let alerts = alerts_topic.wait_for(3).await;
    let predictions = predictions_topic.wait_for(FRAMES.len()).await;
    let trace_of = |seq: u64| {
        let p = predictions
            .iter()
            .find(|m| m.decode::<Prediction>().unwrap().message.frame_sequence == seq)
            .unwrap();
        p.meta().trace().unwrap().trace_id_hex()
    };
    let decoded: Vec<Alert> = alerts.iter().map(|m| m.decode::<Alert>().unwrap().message).collect();
    assert_eq!(decoded.len(), 3);
    assert_eq!(decoded[1].last_sequence, 10);
    assert_eq!(decoded[1].source, AlertSource::Predictions as i32);
    assert_eq!(decoded[1].trace_id, trace_of(10));
    assert_eq!(alerts[1].meta().trace().unwrap().trace_id_hex(), trace_of(10));

    service.wait_sinks_ready(true).await;
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_outage_delays_alerts_without_losing_them() {
    let tb = TestBus::start();
    tb.create_registry_topics().await;
    let mut broker = Mosquitto::start().await;
    let prefix = mqtt_prefix();
    // A persistent session: the broker keeps the subscription across its restart.
    let mqtt = Subscriber::connect(broker.port, &prefix, true).await;
    let rules = "[[alert]]\nname = \"cat-seen\"\nlabel = \"cat\"\ncooldown = 0\n";
    let sink = format!("mqtt://127.0.0.1:{}", broker.port).parse().unwrap();
    let service = Service::start(&tb, rules, vec![sink], &prefix);
    let alerts_topic = tb.collect(topics::ALERTS.name());
    let bus = tb.bus("test-predictor");

    publish(&bus, "yard", &[(1, "cat"), (2, "dog")]).await;
    let before = mqtt.wait_for(1).await;
    assert_eq!(before[0].1["episode"], "cat-seen/yard/1");

    broker.down();
    publish(&bus, "yard", &[(3, "cat"), (4, "dog"), (5, "cat"), (6, "dog")]).await;
    // The engine fired both, and the sink is failing to deliver them.
    alerts_topic.wait_for(3).await;
    service.wait_sinks_ready(false).await;

    broker.up().await;
    let after = mqtt.wait_for(3).await;
    let episodes: BTreeSet<&str> =
        after.iter().map(|(_, b)| b["episode"].as_str().unwrap()).collect();
    assert_eq!(
        episodes,
        BTreeSet::from(["cat-seen/yard/1", "cat-seen/yard/3", "cat-seen/yard/5"]),
        "every alert arrives after the outage"
    );
    service.wait_sinks_ready(true).await;
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_webhook_gets_the_alert_once_it_answers() {
    let tb = TestBus::start();
    tb.create_registry_topics().await;
    let hook = Webhook::start(true).await;
    let rules = "[[alert]]\nname = \"cat-seen\"\nlabel = \"cat\"\nfor_frames = 2\ncooldown = 0\n";
    let service = Service::start(&tb, rules, vec![hook.url.parse().unwrap()], "unused");
    let bus = tb.bus("test-predictor");

    publish(&bus, "porch", &[(1, "cat"), (2, "cat"), (3, "dog")]).await;
    // Refused twice with 503: offered again each time, never skipped.
    let refused = hook.wait_for(2).await;
    assert!(refused.iter().all(|r| r.status == 503));
    service.wait_sinks_ready(false).await;

    hook.failing.store(false, Ordering::SeqCst);
    publish(&bus, "porch", &[(4, "cat"), (5, "cat")]).await;
    let ok = |r: &&common::Received| r.status == 200;
    let all = hook.wait_until(|all| all.iter().filter(ok).count() >= 2).await;
    let delivered: Vec<&str> = all
        .iter()
        .filter(ok)
        .map(|r| r.headers[webhook::EPISODE_HEADER].to_str().unwrap())
        .collect();
    assert_eq!(delivered, ["cat-seen/porch/1", "cat-seen/porch/4"], "each alert delivered once");
    let failed: BTreeSet<&str> = all
        .iter()
        .filter(|r| r.status == 503)
        .map(|r| r.headers[webhook::EPISODE_HEADER].to_str().unwrap())
        .collect();
    assert_eq!(failed, BTreeSet::from(["cat-seen/porch/1"]), "only the first alert was refused");
    service.wait_sinks_ready(true).await;
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_object_event_alerts_on_arrival() {
    let tb = TestBus::start();
    tb.create_registry_topics().await;
    let hook = Webhook::start(false).await;
    let rules = "[[alert]]\nname = \"car-arrives\"\nclass = \"car\"\nsource = \"changes\"\n";
    let service = Service::start(&tb, rules, vec![hook.url.parse().unwrap()], "unused");
    let changes = tb.bus("test-recorder").publisher(&topics::CHANGES);
    let event = |seq: u64, before: &[&str], now: &[&str]| PredictionChange {
        camera_id: "drive".into(),
        frame_sequence: seq,
        previous: Some(objects::present(before.iter().copied())),
        current: Some(objects::present(now.iter().copied())),
        time: Some(lookout_proto::timestamp_from_millis(common::T0_MS + seq as i64 * 100)),
        ..Default::default()
    };
    // A person arrives (no alert), then the car: one alert, for the car.
    changes.send(&event(3, &[], &["person"])).await.unwrap();
    changes.send(&event(7, &["person"], &["car", "person"])).await.unwrap();

    let requests = hook.wait_for(1).await;
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(body["episode"], "car-arrives/drive/7");
    assert_eq!(body["source"], "changes");
    assert_eq!(body["label"], "car");
    assert!(requests[0].headers.get(webhook::SIGNATURE_HEADER).is_none(), "no secret: unsigned");
    service.stop().await;
}
