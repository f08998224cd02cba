//! Shared by the shipper's integration tests: a fake Elasticsearch `_bulk` endpoint, records
//! to publish, the shipper run in-process, and readers of topics and group offsets.

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use clap::Parser as _;
use lookout_bus::{Bus, HandlerError, RawHandler, RawMessage, topics};
use lookout_logship::LogshipArgs;
use lookout_proto::v1::{Level, LogRecord};
use lookout_service::Readiness;
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use serde_json::{Value, json};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// Polls `check` until it holds; fails the test after `EVENT_TIMEOUT` (a hang guard).
pub async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A log record of `service` with `message`, at 2026-05-01T12:00:00Z plus `seconds`.
pub fn record(service: &str, message: &str, seq: u64, seconds: i64) -> LogRecord {
    LogRecord {
        time: Some(lookout_proto::Timestamp { seconds: 1_777_636_800 + seconds, nanos: 0 }),
        service: service.into(),
        instance: format!("{service}-1"),
        level: Level::Info as i32,
        target: "lookout_test".into(),
        message: message.into(),
        camera_id: "porch".into(),
        frame_sequence: Some(seq),
        ..Default::default()
    }
}

/// Publishes records on the test's logs topic.
pub async fn publish(t: &TestBus, records: &[LogRecord]) {
    let publisher = t.bus("lookout-test").publisher(&topics::LOGS);
    for r in records {
        publisher.send(r).await.expect("published");
    }
}

/// The shipper's options, parsed like its command line.
pub fn args(extra: &[&str]) -> LogshipArgs {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        logship: LogshipArgs,
    }
    let mut argv = vec!["lookout-logship"];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).expect("valid options").logship
}

/// A shipper running in this process.
pub struct Shipper {
    pub readiness: Readiness,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), lookout_logship::LogshipError>>,
}

impl Shipper {
    pub fn start(t: &TestBus, args: LogshipArgs) -> Self {
        let readiness = Readiness::default();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(lookout_logship::run(
            args,
            t.bus("lookout-logship"),
            readiness.clone(),
            shutdown.clone(),
        ));
        Self { readiness, shutdown, task }
    }

    /// Shuts down and waits for the final commit.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(EVENT_TIMEOUT, self.task).await;
        stopped.expect("the shipper stops").expect("no panic").expect("a clean stop");
    }

    pub fn sinks_ready(&self) -> bool {
        !self.readiness.status().1.contains(&"sinks")
    }
}

/// Committed offset and high watermark of `group` on each partition of the logs topic.
pub async fn committed(t: &TestBus, group: &str) -> Vec<(Option<i64>, i64)> {
    let bus = t.bus("lookout-test");
    let name = bus.topic_name(topics::LOGS.name());
    let described = lookout_bus::admin::describe(&bus).await.expect("described");
    let topic = described.iter().find(|d| d.name == name).expect("the logs topic exists");
    let lag = lookout_bus::admin::group_lag(&bus, group, topic).await.expect("offsets fetched");
    lag.iter().map(|l| (l.committed, l.high)).collect()
}

/// Waits until `group` has committed every message of the logs topic.
pub async fn wait_all_committed(t: &TestBus, group: &str) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let c = committed(t, group).await;
        if c.iter().all(|(committed, high)| committed.unwrap_or(0) == *high) {
            return;
        }
        assert!(Instant::now() < deadline, "offsets were not all committed: {c:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads the dead-letter topic in a group of its own.
pub fn read_dead_letters(bus: &Bus) -> (mpsc::Receiver<RawMessage>, CancellationToken) {
    struct Collect(mpsc::Sender<RawMessage>);
    impl RawHandler for Collect {
        async fn handle(&self, message: &RawMessage) -> Result<(), HandlerError> {
            let _ = self.0.send(message.clone()).await;
            Ok(())
        }
    }
    let (tx, rx) = mpsc::channel(1024);
    let shutdown = CancellationToken::new();
    let dlq = bus.topic_name(topics::DLQ);
    let subscriber = bus.raw_subscriber(&[dlq], "dlq-reader");
    let token = shutdown.clone();
    tokio::spawn(async move { subscriber.run(Collect(tx), token).await });
    (rx, shutdown)
}

/// One `_bulk` request as the fake server saw it.
#[derive(Debug, Clone)]
pub struct BulkRequest {
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    /// (action, document) pairs.
    pub items: Vec<(Value, Value)>,
    /// The per-item statuses answered, or the request's status when it was refused whole.
    pub statuses: Vec<u16>,
    pub whole_status: u16,
}

impl BulkRequest {
    pub fn ids(&self) -> Vec<String> {
        self.items.iter().map(|(a, _)| a["create"]["_id"].as_str().unwrap().to_owned()).collect()
    }
}

/// What the fake server answers for a document: `busy` messages get 429 on their first
/// attempt, `bad` messages 400 `mapper_parsing_exception` always, others are stored (409 when
/// their id is stored already).
#[derive(Debug, Default)]
pub struct EsState {
    /// Answer every request with 503.
    pub unavailable: AtomicBool,
    pub requests: Mutex<Vec<BulkRequest>>,
    /// Stored documents by id.
    pub stored: Mutex<BTreeMap<String, Value>>,
    /// Requests that broke the bulk format, and why.
    pub violations: Mutex<Vec<String>>,
    attempts: Mutex<BTreeMap<String, u32>>,
}

impl EsState {
    pub fn stored_messages(&self) -> BTreeSet<String> {
        let stored = self.stored.lock().unwrap();
        stored.values().map(|d| d["message"].as_str().unwrap().to_owned()).collect()
    }

    pub fn requests(&self) -> Vec<BulkRequest> {
        self.requests.lock().unwrap().clone()
    }
}

/// Starts the fake server on 127.0.0.1:0.
pub async fn fake_elasticsearch() -> (SocketAddr, Arc<EsState>) {
    let state = Arc::new(EsState::default());
    let app = Router::new().route("/_bulk", post(bulk)).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, state)
}

async fn bulk(State(state): State<Arc<EsState>>, headers: HeaderMap, body: String) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut request = BulkRequest {
        content_type: header("content-type"),
        authorization: header("authorization"),
        items: Vec::new(),
        statuses: Vec::new(),
        whole_status: 200,
    };
    match parse_ndjson(&body) {
        Ok(items) => request.items = items,
        Err(why) => {
            state.violations.lock().unwrap().push(why.clone());
            request.whole_status = 400;
            state.requests.lock().unwrap().push(request);
            return (StatusCode::BAD_REQUEST, why).into_response();
        }
    }
    if state.unavailable.load(Ordering::SeqCst) {
        request.whole_status = 503;
        state.requests.lock().unwrap().push(request);
        let error = json!({"error": {"type": "cluster_block_exception", "reason": "unavailable"}, "status": 503});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(error)).into_response();
    }
    let mut answers = Vec::new();
    for (action, doc) in &request.items {
        let id = action["create"]["_id"].as_str().unwrap().to_owned();
        let index = action["create"]["_index"].clone();
        let message = doc["message"].as_str().unwrap_or("");
        let attempt = {
            let mut attempts = state.attempts.lock().unwrap();
            let a = attempts.entry(id.clone()).or_default();
            *a += 1;
            *a
        };
        let (status, error) = if message.contains("bad") {
            (
                400,
                Some((
                    "mapper_parsing_exception",
                    "failed to parse field [labels.frame_sequence] of type [long]",
                )),
            )
        } else if message.contains("busy") && attempt == 1 {
            (
                429,
                Some((
                    "es_rejected_execution_exception",
                    "rejected execution of coordinating operation",
                )),
            )
        } else {
            let mut stored = state.stored.lock().unwrap();
            if stored.contains_key(&id) {
                (409, Some(("version_conflict_engine_exception", "document already exists")))
            } else {
                stored.insert(id.clone(), doc.clone());
                (201, None)
            }
        };
        request.statuses.push(status);
        let mut item = json!({"_index": index, "_id": id, "status": status});
        if let Some((kind, reason)) = error {
            item["error"] = json!({"type": kind, "reason": reason});
        } else {
            item["result"] = json!("created");
        }
        answers.push(json!({ "create": item }));
    }
    let errors = request.statuses.iter().any(|s| *s >= 300);
    state.requests.lock().unwrap().push(request);
    Json(json!({"took": 3, "errors": errors, "items": answers})).into_response()
}

/// Checks the bulk format strictly: NDJSON ending with a newline, action and document lines in
/// pairs, each action a `create` with an `_index` and an `_id`.
fn parse_ndjson(body: &str) -> Result<Vec<(Value, Value)>, String> {
    let Some(body) = body.strip_suffix('\n') else {
        return Err("the body does not end with a newline".into());
    };
    let lines: Vec<&str> = body.split('\n').collect();
    if !lines.len().is_multiple_of(2) {
        return Err(format!("{} lines: actions and documents do not pair up", lines.len()));
    }
    lines
        .chunks(2)
        .map(|pair| {
            let action: Value =
                serde_json::from_str(pair[0]).map_err(|e| format!("action: {e}"))?;
            let doc: Value = serde_json::from_str(pair[1]).map_err(|e| format!("document: {e}"))?;
            let create = action.as_object().filter(|o| o.len() == 1).and_then(|o| o.get("create"));
            let Some(create) = create else {
                return Err(format!("not a create action: {action}"));
            };
            if !create["_index"].is_string() || !create["_id"].is_string() {
                return Err(format!("an action without _index or _id: {action}"));
            }
            if !doc.is_object() {
                return Err(format!("not a document: {doc}"));
            }
            Ok((action, doc))
        })
        .collect()
}
