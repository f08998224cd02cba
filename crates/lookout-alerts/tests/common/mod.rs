//! Fixtures: the alerts service on a test bus, real predictions, an MQTT subscriber, a
//! private Mosquitto that a test stops and starts, and a webhook server that can fail.

#![allow(dead_code, unreachable_pub)]

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use lookout_alerts::{AlertsArgs, Rules, SinkSpec, Stage, Start};
use lookout_bus::{Bus, topics};
use lookout_proto::v1::{Label, ModelKind, ModelRef, Prediction};
use lookout_service::Readiness;
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// Capture time of frame 0.
pub const T0_MS: i64 = 1_780_000_000_000;

/// A classifier's prediction of `label` for frame `seq` of `camera`, 100 ms a frame.
pub fn prediction(camera: &str, seq: u64, label: &str, score: f32) -> Prediction {
    Prediction {
        camera_id: camera.into(),
        frame_sequence: seq,
        capture_time: Some(lookout_proto::timestamp_from_millis(T0_MS + seq as i64 * 100)),
        model: Some(ModelRef {
            name: "classifier".into(),
            version: "1".into(),
            kind: ModelKind::Classification as i32,
        }),
        top_k: vec![Label { class_id: 1, name: label.into(), score }],
        predicted_time: Some(lookout_proto::timestamp(SystemTime::now())),
        ..Default::default()
    }
}

/// Publishes predictions `(seq, label)` of `camera` in order, each acknowledged.
pub async fn publish(bus: &Bus, camera: &str, frames: &[(u64, &str)]) {
    let predictions = bus.publisher(&topics::PREDICTIONS);
    for &(seq, label) in frames {
        predictions.send(&prediction(camera, seq, label, 0.9)).await.expect("prediction sent");
    }
}

/// The alerts service running in the test process.
pub struct Service {
    pub readiness: Readiness,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), lookout_alerts::AlertsError>>,
}

impl Service {
    pub fn start(tb: &TestBus, rules: &str, sinks: Vec<SinkSpec>, mqtt_prefix: &str) -> Self {
        Self::start_with(tb, rules, sinks, mqtt_prefix, None)
    }

    pub fn start_with(
        tb: &TestBus,
        rules: &str,
        sinks: Vec<SinkSpec>,
        mqtt_prefix: &str,
        secret: Option<&str>,
    ) -> Self {
        let rules = Rules::parse(rules, "test.toml").expect("valid rules");
        let args = AlertsArgs {
            config: PathBuf::from("test.toml"),
            sinks,
            stage: Stage::All,
            // The test publishes before the service's groups have joined.
            start: Start::Earliest,
            group: "alerts".into(),
            mqtt_topic_prefix: mqtt_prefix.into(),
            mqtt_client_id: Some(format!("lookout-alerts-{}", uuid::Uuid::new_v4().simple())),
            webhook_secret: secret.map(str::to_owned),
            sink_timeout: Duration::from_secs(5),
        };
        let readiness = Readiness::default();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(lookout_alerts::run(
            args,
            rules,
            tb.bus("lookout-alerts"),
            readiness.clone(),
            shutdown.clone(),
        ));
        Self { readiness, shutdown, task }
    }

    /// Waits until the `sinks` readiness check is `ok`.
    pub async fn wait_sinks_ready(&self, ok: bool) {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let (_, failing) = self.readiness.status();
            let ready = !failing.contains(&lookout_alerts::READINESS_CHECK);
            if ready == ok {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "sinks never became ready={ok}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("no panic").expect("the service stops cleanly");
    }
}

/// A unique MQTT topic prefix for one test.
pub fn mqtt_prefix() -> String {
    format!("lookout-test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// An MQTT subscriber to `<prefix>/#` with QoS 1 that collects what it receives; with
/// `persistent`, its session (subscription and queued messages) outlives a disconnection.
pub struct Subscriber {
    received: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    count: watch::Sender<usize>,
    stop: CancellationToken,
}

impl Subscriber {
    pub async fn connect(port: u16, prefix: &str, persistent: bool) -> Self {
        let id = format!("test-sub-{}", uuid::Uuid::new_v4().simple());
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5)).set_clean_session(!persistent);
        let (client, mut events) = AsyncClient::new(options, 16);
        let filter = format!("{prefix}/#");
        client.subscribe(&filter, QoS::AtLeastOnce).await.expect("subscribe queued");
        let received = Arc::new(Mutex::new(Vec::new()));
        let (count, _) = watch::channel(0usize);
        let (subscribed, mut suback) = watch::channel(false);
        let stop = CancellationToken::new();
        let (r, c, s) = (received.clone(), count.clone(), stop.clone());
        tokio::spawn(async move {
            let _client = client;
            loop {
                let event = tokio::select! {
                    () = s.cancelled() => return,
                    e = events.poll() => e,
                };
                match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subscribed.send_replace(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let body = serde_json::from_slice(&p.payload).expect("JSON payload");
                        let n = {
                            let mut all = r.lock().unwrap();
                            all.push((p.topic.clone(), body));
                            all.len()
                        };
                        c.send_replace(n);
                    }
                    Ok(_) => {}
                    // The broker is away: try again shortly (rumqttc reconnects on the next poll).
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let acked = tokio::time::timeout(EVENT_TIMEOUT, suback.wait_for(|s| *s)).await;
        assert!(
            acked.is_ok(),
            "no MQTT broker answers on 127.0.0.1:{port} (the tests need Mosquitto: apt-get install mosquitto)"
        );
        Self { received, count, stop }
    }

    /// Waits until at least `n` messages arrived; returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<(String, serde_json::Value)> {
        wait_until(&self.count, &self.received, |all| all.len() >= n, "MQTT messages").await
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Waits until what a background task collected in `items` (counted in `count`) satisfies
/// `done`; returns it all. Fails the test after [`EVENT_TIMEOUT`].
async fn wait_until<T: Clone + std::fmt::Debug>(
    count: &watch::Sender<usize>,
    items: &Mutex<Vec<T>>,
    done: impl Fn(&[T]) -> bool,
    what: &str,
) -> Vec<T> {
    let mut rx = count.subscribe();
    let check = |_: &usize| done(&items.lock().unwrap());
    let waited = tokio::time::timeout(EVENT_TIMEOUT, rx.wait_for(check)).await;
    let all = items.lock().unwrap().clone();
    assert!(waited.is_ok(), "timed out waiting for {what}; got {all:?}");
    all
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A Mosquitto of the test's own, with persistence, that the test stops and starts.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\nlog_dest none\nuser root\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config).unwrap();
        let mut m = Self { port, dir, child: None };
        m.up().await;
        m
    }

    /// Starts the broker and waits until it accepts connections. Its messages go to
    /// `mosquitto.log` in its folder (as root it warns that it should not run as root).
    pub async fn up(&mut self) {
        let log_path = self.dir.path().join("mosquitto.log");
        let log = std::fs::File::options().create(true).append(true).open(&log_path).unwrap();
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start /usr/sbin/mosquitto ({e}): apt-get install mosquitto")
            });
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("mosquitto exited at start: {status}: {log}");
            }
            assert!(tokio::time::Instant::now() < deadline, "mosquitto did not start listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the broker with SIGTERM (it saves its sessions) and waits for it to exit.
    pub fn down(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -TERM mosquitto");
        child.wait().expect("mosquitto exits");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A request the webhook server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A webhook receiver that answers 503 while `failing` is set.
pub struct Webhook {
    pub url: String,
    pub failing: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<Received>>>,
    count: watch::Sender<usize>,
    stop: CancellationToken,
}

#[derive(Clone)]
struct HookState {
    failing: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<Received>>>,
    count: watch::Sender<usize>,
}

async fn hook(State(s): State<HookState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = if s.failing.load(Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let n = {
        let mut all = s.received.lock().unwrap();
        all.push(Received { status: status.as_u16(), headers, body });
        all.len()
    };
    s.count.send_replace(n);
    status
}

impl Webhook {
    pub async fn start(failing: bool) -> Self {
        let failing = Arc::new(AtomicBool::new(failing));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (count, _) = watch::channel(0usize);
        let state = HookState {
            failing: failing.clone(),
            received: received.clone(),
            count: count.clone(),
        };
        let app = Router::new().route("/hook", post(hook)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(s.cancelled_owned()).await
        });
        Self { url, failing, received, count, stop }
    }

    /// Waits until at least `n` requests arrived; returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        self.wait_until(|all| all.len() >= n).await
    }

    /// Waits until the requests received so far satisfy `done`; returns them all.
    pub async fn wait_until(&self, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        wait_until(&self.count, &self.received, done, "webhook requests").await
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
