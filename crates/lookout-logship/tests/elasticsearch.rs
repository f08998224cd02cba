//! The Elasticsearch sink against a server in the test that checks the `_bulk` format and
//! answers with partial failures: items answered 429 are retried, and only they; items answered
//! 400 `mapper_parsing_exception` go to the dead-letter topic with the reason; every offset is
//! committed in the end.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{Shipper, args, fake_elasticsearch, publish, read_dead_letters, record, wait_for};
use lookout_bus::{headers, topics};
use lookout_logship::record::{ECS_VERSION, dotted_day};
use lookout_proto::v1::LogRecord;
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use time::OffsetDateTime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_bulk_failures_are_retried_or_dead_lettered_item_by_item() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let (addr, es) = fake_elasticsearch().await;

    // Four services spread over the partitions; two days, so two daily indices.
    let mut records = Vec::new();
    for i in 0..24u64 {
        let kind = match i % 6 {
            1 => "busy",
            4 => "bad",
            _ => "ok",
        };
        let day_offset = if i < 12 { 0 } else { 86_400 };
        records.push(record(
            &format!("svc-{}", i % 4),
            &format!("{kind} {i}"),
            i,
            day_offset + i as i64,
        ));
    }
    publish(&t, &records).await;

    let url = format!("elasticsearch:http://elastic:changeme@{addr}");
    let shipper = Shipper::start(&t, args(&["--sink", &url, "--batch-size", "50"]));
    let (mut dead, stop_dlq) = read_dead_letters(&t.bus("lookout-test"));

    let bad: Vec<&LogRecord> = records.iter().filter(|r| r.message.starts_with("bad")).collect();
    let good = records.len() - bad.len();
    wait_for("every acceptable record stored", || es.stored.lock().unwrap().len() == good).await;
    let mut dead_letters = Vec::new();
    while dead_letters.len() < bad.len() {
        let m =
            tokio::time::timeout(EVENT_TIMEOUT, dead.recv()).await.expect("dead letters arrive");
        dead_letters.push(m.expect("the reader runs"));
    }
    common::wait_all_committed(&t, "logship").await;
    shipper.stop().await;

    // The request format.
    assert!(es.violations.lock().unwrap().is_empty(), "{:?}", es.violations.lock().unwrap());
    let requests = es.requests();
    for r in &requests {
        assert_eq!(r.content_type.as_deref(), Some("application/x-ndjson"));
        assert_eq!(
            r.authorization.as_deref(),
            Some("Basic ZWxhc3RpYzpjaGFuZ2VtZQ=="),
            "credentials of the URL are sent as basic auth"
        );
        for (action, doc) in &r.items {
            let ts = doc["@timestamp"].as_str().unwrap();
            let day = OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                .unwrap()
                .date();
            assert_eq!(action["create"]["_index"], format!("lookout-logs-{}", dotted_day(day)));
            assert_eq!(doc["ecs"]["version"], ECS_VERSION);
            assert_eq!(doc["log"]["level"], "info");
            assert_eq!(doc["labels"]["camera_id"], "porch");
            assert!(doc["service"]["name"].as_str().unwrap().starts_with("svc-"));
        }
    }
    let indices: std::collections::BTreeSet<String> = requests
        .iter()
        .flat_map(|r| {
            r.items.iter().map(|(a, _)| a["create"]["_index"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        indices.into_iter().collect::<Vec<_>>(),
        ["lookout-logs-2026.05.01", "lookout-logs-2026.05.02"]
    );

    // Each document was sent as often as its failures require, no more.
    let mut sent: BTreeMap<String, u32> = BTreeMap::new();
    let mut message_of: BTreeMap<String, String> = BTreeMap::new();
    for r in &requests {
        for (action, doc) in &r.items {
            let id = action["create"]["_id"].as_str().unwrap().to_owned();
            *sent.entry(id.clone()).or_default() += 1;
            message_of.insert(id, doc["message"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(sent.len(), records.len(), "every record was sent");
    for (id, n) in &sent {
        let message = &message_of[id];
        let expected = if message.starts_with("busy") { 2 } else { 1 };
        assert_eq!(*n, expected, "{message} was sent {n} times");
    }
    // A request that got 429 items is followed by one with exactly those items.
    for pair in requests.windows(2) {
        let retried: Vec<String> = pair[0]
            .ids()
            .into_iter()
            .zip(&pair[0].statuses)
            .filter(|(_, s)| **s == 429)
            .map(|(id, _)| id)
            .collect();
        if !retried.is_empty() {
            assert_eq!(pair[1].ids(), retried, "only the items answered 429 are sent again");
        }
    }
    let expected: Vec<String> = records
        .iter()
        .filter(|r| !r.message.starts_with("bad"))
        .map(|r| r.message.clone())
        .collect();
    assert_eq!(es.stored_messages(), expected.into_iter().collect());

    // The refused items, and only they, are in the dead-letter topic with the reason.
    let mut dead_messages = Vec::new();
    for m in &dead_letters {
        let h: BTreeMap<String, String> = m.headers.to_strings().into_iter().collect();
        assert_eq!(h[headers::DLQ_TOPIC], t.bus("x").topic_name(topics::LOGS.name()));
        assert_eq!(h[headers::DLQ_GROUP], "logship");
        assert!(
            h[headers::DLQ_ERROR].contains("mapper_parsing_exception"),
            "{}",
            h[headers::DLQ_ERROR]
        );
        assert!(h[headers::DLQ_ERROR].contains("elasticsearch:http://127.0.0.1"), "names the sink");
        assert!(!h[headers::DLQ_ERROR].contains("changeme"), "never the credentials");
        assert_eq!(
            h[headers::CONTENT_TYPE],
            topics::LOGS.content_type(),
            "the original producer's headers are kept"
        );
        assert!(h.contains_key(headers::TRACEPARENT));
        let r = topics::LOGS.decode(m.payload.as_deref().unwrap()).unwrap();
        assert_eq!(m.key.as_deref(), Some(r.service.as_bytes()));
        dead_messages.push(r.message);
    }
    dead_messages.sort();
    let mut bad_messages: Vec<String> = bad.iter().map(|r| r.message.clone()).collect();
    bad_messages.sort();
    assert_eq!(dead_messages, bad_messages);

    // Nothing more arrives in the dead-letter topic afterwards.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(dead.try_recv().is_err());
    stop_dlq.cancel();
}
