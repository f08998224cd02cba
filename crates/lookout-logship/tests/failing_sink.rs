//! A failing sink loses nothing: while it fails, the group's offsets do not move past what was
//! written, so a shipper stopped meanwhile and started again after the sink recovered delivers
//! every record.

mod common;

use std::{fs, path::Path};

use common::{
    Shipper, args, committed, fake_elasticsearch, publish, record, wait_all_committed, wait_for,
};
use lookout_test_util::TestBus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_elasticsearch_holds_the_offsets_until_it_recovers() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let (addr, es) = fake_elasticsearch().await;
    es.unavailable.store(true, std::sync::atomic::Ordering::SeqCst);
    let records: Vec<_> =
        (0..30u64).map(|i| record(&format!("svc-{}", i % 5), &format!("ok {i}"), i, 0)).collect();
    publish(&t, &records).await;
    let sink = format!("elasticsearch:http://{addr}");

    // A first shipper meets a server that answers 503, retries, and is stopped.
    let first = Shipper::start(&t, args(&["--sink", &sink]));
    wait_for("three refused bulk requests", || {
        es.requests().iter().filter(|r| r.whole_status == 503).count() >= 3
    })
    .await;
    assert!(!first.sinks_ready(), "/readyz reports the failing sink");
    first.stop().await;
    let after_stop = committed(&t, "logship").await;
    assert!(
        after_stop.iter().all(|(c, _)| c.unwrap_or(0) == 0),
        "nothing was written, so nothing was committed: {after_stop:?}"
    );
    assert!(es.stored.lock().unwrap().is_empty());

    // The server recovers; a second shipper of the same group delivers every record.
    es.unavailable.store(false, std::sync::atomic::Ordering::SeqCst);
    let second = Shipper::start(&t, args(&["--sink", &sink]));
    let expected: std::collections::BTreeSet<String> =
        records.iter().map(|r| r.message.clone()).collect();
    wait_for("every record stored", || es.stored_messages() == expected).await;
    wait_for("the sink reported ready", || second.sinks_ready()).await;
    wait_all_committed(&t, "logship").await;
    second.stop().await;
    assert_eq!(es.stored.lock().unwrap().len(), records.len(), "each stored once");
}

/// Complete lines of every JSON-lines file of `dir`.
fn file_lines(dir: &Path) -> Vec<serde_json::Value> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let text = fs::read_to_string(&p).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        out.extend(complete.lines().map(|l| serde_json::from_str(l).expect("JSON lines")));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sink_whose_directory_disappears_holds_the_offsets_until_it_is_back() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("logs");
    let shipper = Shipper::start(&t, args(&["--sink", &format!("file:{}", dir.display())]));

    let first: Vec<_> = (0..10u64).map(|i| record("svc-a", &format!("first {i}"), i, 0)).collect();
    publish(&t, &first).await;
    wait_for("the first records written", || file_lines(&dir).len() == 10).await;
    wait_all_committed(&t, "logship").await;

    // The directory is moved away and a plain file takes its place: every write fails, even
    // as root.
    let aside = root.path().join("aside");
    fs::rename(&dir, &aside).unwrap();
    fs::write(&dir, "in the way").unwrap();
    let second: Vec<_> =
        (10..20u64).map(|i| record("svc-a", &format!("second {i}"), i, 0)).collect();
    publish(&t, &second).await;
    wait_for("the sink reported failing", || !shipper.sinks_ready()).await;
    // Stopping commits every stored offset synchronously: what it commits is what was stored.
    shipper.stop().await;
    let held = committed(&t, "logship").await;
    let total: i64 = held.iter().map(|(c, _)| c.unwrap_or(0)).sum();
    assert_eq!(total, 10, "the offsets stay at what was written: {held:?}");

    fs::remove_file(&dir).unwrap();
    fs::rename(&aside, &dir).unwrap();
    let shipper = Shipper::start(&t, args(&["--sink", &format!("file:{}", dir.display())]));
    wait_for("every record written", || file_lines(&dir).len() >= 20).await;
    wait_all_committed(&t, "logship").await;
    shipper.stop().await;

    let lines = file_lines(&dir);
    let sequences: Vec<u64> = lines.iter().map(|l| l["frame_sequence"].as_u64().unwrap()).collect();
    assert_eq!(sequences, (0..20).collect::<Vec<_>>(), "every record once, in order");
}
