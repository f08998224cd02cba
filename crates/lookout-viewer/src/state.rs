//! The viewer's in-memory state, fed by the three live subscriptions and read by every client.
//!
//! - Per camera a [`watch`] slot holds the newest frame: a client that falls behind skips to
//!   whatever is newest when it is ready again, nothing queues per client, and the JPEG bytes
//!   are shared (`Bytes`), never copied per client.
//! - Per camera and model the current prediction is the one with the highest frame sequence
//!   seen; predictions of replicas arrive out of order and an older one never replaces a newer
//!   one. Models are kept apart: a classifier gives the camera's label, a detector its objects
//!   (boxes), each model ordered on its own.
//! - Sequences are compared within a camera *run*: a frame or prediction more than
//!   [`REORDER_WINDOW`] behind the newest is not late but the start of a new run (a camera
//!   restarted with its clock set back, or a sequence forged far ahead before it), so it is
//!   taken and later ones are compared with it; a tile never freezes on one bad sequence.
//! - A camera that sent nothing for [`ViewerConfig::camera_idle`] is forgotten (its streams
//!   end), so ids that come and go, forged or not, cannot hold the camera limit for good.
//! - Recent prediction changes are kept in a bounded ring for `/api/changes`.
//! - Events for `/api/events` are serialised once and fanned out over a bounded
//!   [`broadcast`] channel; a lagging event client skips what it missed.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use lookout_proto::{
    objects,
    v1::{Encoding, Frame, Label, ModelKind, Prediction, PredictionChange},
};
use serde::Serialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{auth::AuthToken, history::History, metrics as m, server::ServerLimits};

/// Prediction changes kept for `/api/changes`.
pub const RECENT_CHANGES: usize = 50;
/// Events buffered per event client before it skips ahead.
const EVENT_BUFFER: usize = 256;
/// At most this many `frame` events per camera and second (every 250 ms).
const FRAME_EVENT_INTERVAL: Duration = Duration::from_millis(250);
/// The frame rate is measured over this window.
const FPS_WINDOW: Duration = Duration::from_secs(2);
/// Bound on the arrival times kept for the frame rate (1000 fps over the window).
const FPS_SAMPLES: usize = 2000;
/// How far behind a camera's newest sequence a frame or prediction may be and still be a late
/// one of the same run (dropped); further behind, it starts a new run (taken).
pub const REORDER_WINDOW: u64 = 1000;

/// Whether `sequence` comes after `newest` in a camera's stream: higher, or so far below that
/// it belongs to a new run.
fn supersedes(sequence: u64, newest: u64) -> bool {
    sequence > newest || newest - sequence > REORDER_WINDOW
}

/// Limits and defaults of a viewer.
#[derive(Debug, Clone)]
pub struct ViewerConfig {
    /// Concurrent MJPEG and event streams; more are refused with 503.
    pub max_clients: usize,
    /// Cameras tracked; frames of further cameras are dropped and counted.
    pub max_cameras: usize,
    /// Whether streams carry the label overlay unless the client asks `?overlay=0`.
    pub overlay_default: bool,
    /// JPEG quality of overlay frames (1–100).
    pub overlay_quality: u8,
    /// A camera that sent nothing (frame or prediction) for this long is forgotten.
    pub camera_idle: Duration,
    /// Changes read back from the changes topic at start (the history).
    pub history: u64,
    /// Every request must carry this token, when set.
    pub auth_token: Option<AuthToken>,
    /// Connection limits and timeouts of the HTTP server.
    pub server: ServerLimits,
    /// HTTPS (and HTTP/2 for browsers), when set.
    pub tls: Option<crate::TlsConfig>,
}

impl Default for ViewerConfig {
    fn default() -> Self {
        Self {
            max_clients: 64,
            max_cameras: 256,
            overlay_default: false,
            overlay_quality: 80,
            camera_idle: Duration::from_secs(120),
            history: 1000,
            auth_token: None,
            server: ServerLimits::default(),
            tls: None,
        }
    }
}

/// One frame as clients see it: the JPEG bytes exactly as the camera sent them (or, in an
/// overlay slot, as rendered once for every overlay client).
#[derive(Debug)]
pub(crate) struct ShownFrame {
    pub(crate) sequence: u64,
    /// Counts the frames this camera's slot accepted, so a client can count what it skipped.
    pub(crate) index: u64,
    pub(crate) captured: Option<SystemTime>,
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) jpeg: Bytes,
}

/// The latest frame of a camera, or nothing yet.
pub(crate) type Slot = Option<Arc<ShownFrame>>;

/// An event for `/api/events`, serialised once for every client.
#[derive(Debug, Clone)]
pub struct Event {
    /// The SSE event name: `frame`, `prediction` or `change`.
    pub kind: &'static str,
    /// The JSON payload.
    pub data: Arc<str>,
}

/// The current label of a camera.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurrentLabel {
    /// The frame sequence the label was predicted for.
    pub sequence: u64,
    /// The top class.
    pub name: String,
    /// Its score in [0, 1].
    pub score: f32,
    /// The model's name.
    pub model: String,
    /// Capture time of the labelled frame, Unix milliseconds.
    pub capture_ms: Option<i64>,
}

/// One object a detector found, in normalised frame coordinates (fractions of the frame's
/// width and height, from its top-left corner).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectView {
    /// Class id, for a colour per class.
    pub class_id: u32,
    /// Class name.
    pub name: String,
    /// Score in [0, 1].
    pub score: f32,
    /// Left edge.
    pub x: f32,
    /// Top edge.
    pub y: f32,
    /// Width.
    pub width: f32,
    /// Height.
    pub height: f32,
}

/// The objects a detector found in a camera's newest frame it labelled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurrentObjects {
    /// The frame sequence the objects were found in.
    pub sequence: u64,
    /// The detector's name.
    pub model: String,
    /// Capture time of that frame, Unix milliseconds.
    pub capture_ms: Option<i64>,
    /// The objects, best first; empty when nothing was found.
    pub objects: Vec<ObjectView>,
}

/// What `/api/cameras` says about a camera.
#[derive(Debug, Clone, Serialize)]
pub struct CameraInfo {
    /// Camera id.
    pub id: String,
    /// Frames per second received over the last two seconds.
    pub fps: f64,
    /// Sequence of the newest frame, if any arrived.
    pub sequence: Option<u64>,
    /// Capture time of the newest frame, Unix milliseconds.
    pub capture_ms: Option<i64>,
    /// When the newest frame arrived here, Unix milliseconds.
    pub received_ms: Option<i64>,
    /// Frame width in pixels, as the frame header says.
    pub width: Option<u32>,
    /// Frame height in pixels.
    pub height: Option<u32>,
    /// The classifier's label with the highest frame sequence seen (of the first classifier
    /// by name, when several label this camera).
    pub label: Option<CurrentLabel>,
    /// The label of every classifier, by model name.
    pub labels: Vec<CurrentLabel>,
    /// The objects of every detector, by model name.
    pub detections: Vec<CurrentObjects>,
}

/// A label in a change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelView {
    /// Class name.
    pub name: String,
    /// Score in [0, 1].
    pub score: f32,
}

/// What `/api/changes` and the `change` event say about a prediction change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeInfo {
    /// Camera id.
    pub camera: String,
    /// Frame where the new label started.
    pub sequence: u64,
    /// Capture time of that frame, Unix milliseconds.
    pub time_ms: Option<i64>,
    /// The label before, unset for a camera's first label.
    pub previous: Option<LabelView>,
    /// The new label.
    pub current: Option<LabelView>,
    /// Model name.
    pub model: String,
    /// Id of the stored change.
    pub change_id: i64,
    /// A detector's object event in words (`+person -car`), when the change is one: the set of
    /// classes present changed.
    pub objects: Option<String>,
    /// Partition of the changes topic holding it (all of a camera's changes are in one).
    pub partition: i32,
    /// Its offset there: its place in the camera's history.
    pub offset: i64,
    /// Whether it has a thumbnail (at `/api/cameras/{camera}/history/{partition}/{offset}.jpg`).
    pub thumbnail: bool,
}

impl ChangeInfo {
    /// What is shown of `change`, read at `offset` of `partition` of the changes topic.
    pub fn of(change: &PredictionChange, partition: i32, offset: i64) -> Self {
        Self {
            camera: change.camera_id.clone(),
            sequence: change.frame_sequence,
            time_ms: change
                .time
                .as_ref()
                .and_then(lookout_proto::system_time)
                .map(lookout_proto::unix_millis),
            previous: change.previous.as_ref().map(label_view),
            current: change.current.as_ref().map(label_view),
            model: change.model.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            change_id: change.change_id,
            objects: change.current.as_ref().filter(|c| objects::is_present(c)).map(|c| {
                objects::describe(change.previous.as_ref().map(|p| p.name.as_str()), &c.name)
            }),
            partition,
            offset,
            thumbnail: !change.thumbnail.is_empty(),
        }
    }
}

#[derive(Serialize)]
struct FrameEvent<'a> {
    camera: &'a str,
    sequence: u64,
    capture_ms: Option<i64>,
    fps: f64,
    width: u32,
    height: u32,
    /// When the viewer sent the event, so a page can relate its clock to the viewer's.
    sent_ms: i64,
}

#[derive(Serialize)]
struct ObjectsEvent<'a> {
    camera: &'a str,
    #[serde(flatten)]
    objects: &'a CurrentObjects,
}

#[derive(Serialize)]
struct PredictionEvent<'a> {
    camera: &'a str,
    sequence: u64,
    label: &'a str,
    score: f32,
    model: &'a str,
    capture_ms: Option<i64>,
    top: Vec<LabelView>,
}

/// The viewer's shared state; clones share it.
#[derive(Debug, Clone)]
pub struct ViewerState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ViewerConfig,
    cameras: RwLock<BTreeMap<String, Arc<Camera>>>,
    camera_limit_warned: AtomicBool,
    changes: Mutex<VecDeque<ChangeInfo>>,
    history: History,
    events: broadcast::Sender<Event>,
    clients: Arc<Semaphore>,
    shutdown: CancellationToken,
}

/// One camera: its frame slots and what is known about it.
#[derive(Debug)]
pub(crate) struct Camera {
    pub(crate) id: String,
    /// The newest frame, as sent by the camera.
    pub(crate) frames: watch::Sender<Slot>,
    /// The newest frame with the label burned in; filled only while someone watches it.
    pub(crate) overlay: watch::Sender<Slot>,
    /// Wakes the overlay renderer when an overlay client arrives.
    pub(crate) overlay_wanted: Notify,
    /// Bumped when the top label's name or the classes of the objects found change, so the
    /// overlay is redrawn at once.
    pub(crate) label_names: watch::Sender<u64>,
    pub(crate) renderer_started: AtomicBool,
    pub(crate) overlay_renders: AtomicU64,
    /// Cancelled when the camera is forgotten: its overlay renderer stops.
    pub(crate) forgotten: CancellationToken,
    stats: Mutex<Stats>,
}

#[derive(Debug)]
struct Stats {
    /// When a frame or prediction of the camera last arrived.
    last_seen: Instant,
    arrivals: VecDeque<Instant>,
    received: Option<SystemTime>,
    last_frame_event: Option<Instant>,
    /// Per classifier (model name), its current label.
    labels: BTreeMap<String, CurrentLabel>,
    /// Per detector (model name), its current objects.
    detections: BTreeMap<String, CurrentObjects>,
}

impl Stats {
    fn new(now: Instant) -> Self {
        Self {
            last_seen: now,
            arrivals: VecDeque::new(),
            received: None,
            last_frame_event: None,
            labels: BTreeMap::new(),
            detections: BTreeMap::new(),
        }
    }
}

impl Camera {
    fn new(id: &str, now: Instant) -> Self {
        Self {
            id: id.to_owned(),
            frames: watch::Sender::new(None),
            overlay: watch::Sender::new(None),
            overlay_wanted: Notify::new(),
            label_names: watch::Sender::new(0),
            renderer_started: AtomicBool::new(false),
            overlay_renders: AtomicU64::new(0),
            forgotten: CancellationToken::new(),
            stats: Mutex::new(Stats::new(now)),
        }
    }

    /// The newest frame, if any.
    pub(crate) fn latest(&self) -> Slot {
        self.frames.borrow().clone()
    }

    /// The current label (of the first classifier by name), if any.
    pub(crate) fn label(&self) -> Option<CurrentLabel> {
        self.stats.lock().expect("not poisoned").labels.values().next().cloned()
    }

    /// The current objects of every detector.
    pub(crate) fn detections(&self) -> Vec<CurrentObjects> {
        self.stats.lock().expect("not poisoned").detections.values().cloned().collect()
    }

    /// Puts `frame` in the slot unless it is a late frame of the run there (see
    /// [`REORDER_WINDOW`]). Returns the slot's new frame.
    fn offer(&self, frame: Frame, captured: Option<SystemTime>) -> Option<Arc<ShownFrame>> {
        let mut shown = None;
        self.frames.send_if_modified(|slot| {
            let index = match slot {
                Some(current) if !supersedes(frame.sequence, current.sequence) => return false,
                Some(current) => current.index + 1,
                None => 0,
            };
            let new = Arc::new(ShownFrame {
                sequence: frame.sequence,
                index,
                captured,
                width: frame.width,
                height: frame.height,
                jpeg: frame.data.clone(),
            });
            shown = Some(new.clone());
            *slot = Some(new);
            true
        });
        shown
    }

    fn info(&self) -> CameraInfo {
        let frame = self.latest();
        let mut stats = self.stats.lock().expect("not poisoned");
        let fps = stats.fps(Instant::now());
        CameraInfo {
            id: self.id.clone(),
            fps,
            sequence: frame.as_ref().map(|f| f.sequence),
            capture_ms: frame.as_ref().and_then(|f| f.captured).map(lookout_proto::unix_millis),
            received_ms: stats.received.map(lookout_proto::unix_millis),
            width: frame.as_ref().map(|f| f.width),
            height: frame.as_ref().map(|f| f.height),
            label: stats.labels.values().next().cloned(),
            labels: stats.labels.values().cloned().collect(),
            detections: stats.detections.values().cloned().collect(),
        }
    }
}

impl Stats {
    /// Frames per second over the last [`FPS_WINDOW`].
    fn fps(&mut self, now: Instant) -> f64 {
        while self.arrivals.front().is_some_and(|t| now.duration_since(*t) > FPS_WINDOW) {
            self.arrivals.pop_front();
        }
        match (self.arrivals.front(), self.arrivals.back()) {
            (Some(first), Some(last)) if self.arrivals.len() >= 2 => {
                let span = last.duration_since(*first).as_secs_f64();
                if span > 0.0 { (self.arrivals.len() - 1) as f64 / span } else { 0.0 }
            }
            _ => 0.0,
        }
    }
}

impl ViewerState {
    /// Empty state; streams and event clients end when `shutdown` is cancelled.
    pub fn new(config: ViewerConfig, shutdown: CancellationToken) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let clients = Arc::new(Semaphore::new(config.max_clients));
        let history = History::new(config.max_cameras);
        Self {
            inner: Arc::new(Inner {
                config,
                cameras: RwLock::new(BTreeMap::new()),
                camera_limit_warned: AtomicBool::new(false),
                changes: Mutex::new(VecDeque::with_capacity(RECENT_CHANGES)),
                history,
                events,
                clients,
                shutdown,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ViewerConfig {
        &self.inner.config
    }

    /// Cancelled when the viewer shuts down.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Takes a frame from the frames topic. Late frames (older than the camera's newest, by at
    /// most [`REORDER_WINDOW`]) are dropped: frames are spread over partitions, so they arrive
    /// slightly out of order.
    pub fn on_frame(&self, frame: Frame) {
        self.on_frame_at(frame, Instant::now());
    }

    fn on_frame_at(&self, frame: Frame, now: Instant) {
        if frame.encoding() != Encoding::Jpeg || frame.data.is_empty() {
            metrics::counter!(m::FRAMES_RECEIVED, "outcome" => "bad_frame").increment(1);
            debug!(camera_id = %frame.camera_id, sequence = frame.sequence, encoding = frame.encoding, "not a JPEG frame; skipped");
            return;
        }
        let Some(camera) = self.camera_or_insert(&frame.camera_id, now) else {
            metrics::counter!(m::FRAMES_RECEIVED, "outcome" => "too_many_cameras").increment(1);
            return;
        };
        camera.stats.lock().expect("not poisoned").last_seen = now;
        let captured = frame.capture_time.as_ref().and_then(lookout_proto::system_time);
        let Some(shown) = camera.offer(frame, captured) else {
            metrics::counter!(m::FRAMES_RECEIVED, "outcome" => "out_of_order").increment(1);
            return;
        };
        metrics::counter!(m::FRAMES_RECEIVED, "outcome" => "shown").increment(1);

        let mut stats = camera.stats.lock().expect("not poisoned");
        stats.received = Some(SystemTime::now());
        if stats.arrivals.len() >= FPS_SAMPLES {
            stats.arrivals.pop_front();
        }
        stats.arrivals.push_back(now);
        // Frame events are throttled per camera: pages need the fps and latency, not every frame.
        if stats.last_frame_event.is_some_and(|t| now.duration_since(t) < FRAME_EVENT_INTERVAL) {
            return;
        }
        stats.last_frame_event = Some(now);
        let fps = stats.fps(now);
        drop(stats);
        let event = FrameEvent {
            camera: &camera.id,
            sequence: shown.sequence,
            capture_ms: shown.captured.map(lookout_proto::unix_millis),
            fps: (fps * 10.0).round() / 10.0,
            width: shown.width,
            height: shown.height,
            sent_ms: lookout_proto::unix_millis(SystemTime::now()),
        };
        self.publish("frame", &event);
    }

    /// Takes a prediction. Returns whether it became its model's current prediction for the
    /// camera: only a labelled (not skipped) prediction for a higher frame sequence than the
    /// current one of the same model (or one that starts a new run, see [`REORDER_WINDOW`])
    /// does. A classifier's gives the camera's label, a detector's its objects (none, when it
    /// found nothing).
    pub fn on_prediction(&self, prediction: &Prediction) -> bool {
        self.on_prediction_at(prediction, Instant::now())
    }

    fn on_prediction_at(&self, prediction: &Prediction, now: Instant) -> bool {
        // A skipped frame's prediction (too old, undecodable, …) has no label to show.
        let labelled = prediction.skipped() == lookout_proto::v1::SkipReason::Unspecified;
        let detector = prediction.model.as_ref().is_some_and(|m| m.kind() == ModelKind::Detection);
        if labelled && detector {
            return self.on_detections(prediction, now);
        }
        let Some(top) = prediction.top_k.first().filter(|_| labelled) else {
            metrics::counter!(m::PREDICTIONS_RECEIVED, "outcome" => "empty").increment(1);
            return false;
        };
        let Some(camera) = self.camera_or_insert(&prediction.camera_id, now) else {
            return false;
        };
        let model = prediction.model.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let label = CurrentLabel {
            sequence: prediction.frame_sequence,
            name: top.name.clone(),
            score: top.score,
            model,
            capture_ms: prediction
                .capture_time
                .as_ref()
                .and_then(lookout_proto::system_time)
                .map(lookout_proto::unix_millis),
        };
        let renamed = {
            let mut stats = camera.stats.lock().expect("not poisoned");
            stats.last_seen = now;
            let current = stats.labels.get(&label.model);
            if current.is_some_and(|l| !supersedes(label.sequence, l.sequence)) {
                metrics::counter!(m::PREDICTIONS_RECEIVED, "outcome" => "stale").increment(1);
                return false;
            }
            let renamed = current.is_none_or(|l| l.name != label.name);
            stats.labels.insert(label.model.clone(), label.clone());
            renamed
        };
        if renamed {
            camera.label_names.send_modify(|n| *n += 1);
        }
        metrics::counter!(m::PREDICTIONS_RECEIVED, "outcome" => "applied").increment(1);
        let event = PredictionEvent {
            camera: &camera.id,
            sequence: label.sequence,
            label: &label.name,
            score: label.score,
            model: &label.model,
            capture_ms: label.capture_ms,
            top: prediction.top_k.iter().take(3).map(label_view).collect(),
        };
        self.publish("prediction", &event);
        true
    }

    /// A detector's prediction: its objects replace the camera's current ones of that model.
    fn on_detections(&self, prediction: &Prediction, now: Instant) -> bool {
        let Some(camera) = self.camera_or_insert(&prediction.camera_id, now) else {
            return false;
        };
        let current = CurrentObjects {
            sequence: prediction.frame_sequence,
            model: prediction.model.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            capture_ms: prediction
                .capture_time
                .as_ref()
                .and_then(lookout_proto::system_time)
                .map(lookout_proto::unix_millis),
            objects: prediction
                .detections
                .iter()
                .filter_map(|d| {
                    let (b, l) = (d.r#box.as_ref()?, d.label.as_ref()?);
                    Some(ObjectView {
                        class_id: l.class_id,
                        name: l.name.clone(),
                        score: l.score,
                        x: b.x,
                        y: b.y,
                        width: b.width,
                        height: b.height,
                    })
                })
                .collect(),
        };
        let classes = |o: &CurrentObjects| {
            let mut names: Vec<&str> = o.objects.iter().map(|o| o.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            names.join("\n")
        };
        let renamed = {
            let mut stats = camera.stats.lock().expect("not poisoned");
            stats.last_seen = now;
            let before = stats.detections.get(&current.model);
            if before.is_some_and(|o| !supersedes(current.sequence, o.sequence)) {
                metrics::counter!(m::PREDICTIONS_RECEIVED, "outcome" => "stale").increment(1);
                return false;
            }
            let renamed = before.is_none_or(|o| classes(o) != classes(&current));
            stats.detections.insert(current.model.clone(), current.clone());
            renamed
        };
        if renamed {
            camera.label_names.send_modify(|n| *n += 1);
        }
        metrics::counter!(m::PREDICTIONS_RECEIVED, "outcome" => "applied").increment(1);
        self.publish("objects", &ObjectsEvent { camera: &camera.id, objects: &current });
        true
    }

    /// Takes a prediction change (stored by the recorder) that has no place in the changes
    /// topic (tests): it is kept in the recent feed only.
    pub fn on_change(&self, change: &PredictionChange) {
        self.keep_change(ChangeInfo::of(change, 0, -1));
    }

    /// Takes a prediction change read at `offset` of `partition` of the changes topic: the
    /// recent feed and its camera's history keep it. A change already kept is ignored.
    pub fn on_change_at(&self, change: &PredictionChange, partition: i32, offset: i64) {
        let info = ChangeInfo::of(change, partition, offset);
        let thumbnail = Some(change.thumbnail.clone()).filter(|t| !t.is_empty());
        self.inner.history.insert(info.clone(), thumbnail);
        self.keep_change(info);
    }

    /// The cameras' histories.
    pub(crate) fn history(&self) -> &History {
        &self.inner.history
    }

    /// Older changes are read back from the changes topic through `bus`.
    pub fn read_history_from(&self, bus: lookout_bus::Bus) {
        self.inner.history.read_from(bus);
    }

    fn keep_change(&self, info: ChangeInfo) {
        {
            let mut changes = self.inner.changes.lock().expect("not poisoned");
            if changes.iter().any(|c| c.camera == info.camera && c.sequence == info.sequence) {
                return;
            }
            if changes.len() >= RECENT_CHANGES {
                changes.pop_front();
            }
            changes.push_back(info.clone());
        }
        metrics::counter!(m::CHANGES_RECEIVED).increment(1);
        self.publish("change", &info);
    }

    /// Every camera seen, by id.
    pub fn cameras(&self) -> Vec<CameraInfo> {
        let cameras: Vec<Arc<Camera>> =
            self.inner.cameras.read().expect("not poisoned").values().cloned().collect();
        cameras.iter().map(|c| c.info()).collect()
    }

    /// The ids of every camera seen.
    pub fn camera_ids(&self) -> Vec<String> {
        self.inner.cameras.read().expect("not poisoned").keys().cloned().collect()
    }

    /// The recent prediction changes, newest first.
    pub fn changes(&self) -> Vec<ChangeInfo> {
        self.inner.changes.lock().expect("not poisoned").iter().rev().cloned().collect()
    }

    /// The current label of a camera (of the first classifier by name).
    pub fn label(&self, camera: &str) -> Option<CurrentLabel> {
        self.camera(camera)?.label()
    }

    /// The current objects of a camera, per detector.
    pub fn detections(&self, camera: &str) -> Vec<CurrentObjects> {
        self.camera(camera).map(|c| c.detections()).unwrap_or_default()
    }

    /// How many overlay frames were rendered for a camera (once per frame, whatever the
    /// number of overlay clients).
    pub fn overlay_renders(&self, camera: &str) -> Option<u64> {
        Some(self.camera(camera)?.overlay_renders.load(Ordering::Relaxed))
    }

    /// A receiver of every event from now on.
    pub fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Returns once a stream client would be admitted (fewer than `max_clients` are open).
    pub async fn client_slot_free(&self) {
        let _ = self.inner.clients.acquire().await;
    }

    /// A permit for one more stream client, or `None` at the limit.
    pub(crate) fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        self.inner.clients.clone().try_acquire_owned().ok()
    }

    pub(crate) fn camera(&self, id: &str) -> Option<Arc<Camera>> {
        self.inner.cameras.read().expect("not poisoned").get(id).cloned()
    }

    /// Forgets the cameras that sent nothing for [`ViewerConfig::camera_idle`] before `now`;
    /// their streams end. Returns how many were forgotten.
    pub fn forget_idle(&self, now: Instant) -> usize {
        let mut cameras = self.inner.cameras.write().expect("not poisoned");
        self.forget_idle_locked(&mut cameras, now)
    }

    fn forget_idle_locked(
        &self,
        cameras: &mut BTreeMap<String, Arc<Camera>>,
        now: Instant,
    ) -> usize {
        let idle = self.inner.config.camera_idle;
        let before = cameras.len();
        cameras.retain(|id, camera| {
            let last_seen = camera.stats.lock().expect("not poisoned").last_seen;
            let keep = now.saturating_duration_since(last_seen) <= idle;
            if !keep {
                camera.forgotten.cancel();
                info!(camera_id = %id, idle_seconds = idle.as_secs(), "camera forgotten: nothing received from it for a while");
            }
            keep
        });
        let forgotten = before - cameras.len();
        if forgotten > 0 {
            metrics::counter!(m::CAMERAS_FORGOTTEN).increment(forgotten as u64);
            self.inner.camera_limit_warned.store(false, Ordering::Relaxed);
        }
        forgotten
    }

    fn camera_or_insert(&self, id: &str, now: Instant) -> Option<Arc<Camera>> {
        if let Some(c) = self.camera(id) {
            return Some(c);
        }
        let mut cameras = self.inner.cameras.write().expect("not poisoned");
        if let Some(c) = cameras.get(id) {
            return Some(c.clone());
        }
        if cameras.len() >= self.inner.config.max_cameras {
            self.forget_idle_locked(&mut cameras, now);
        }
        if cameras.len() >= self.inner.config.max_cameras {
            if !self.inner.camera_limit_warned.swap(true, Ordering::Relaxed) {
                warn!(camera_id = %id, max_cameras = self.inner.config.max_cameras, "camera limit reached; frames of further cameras are dropped until a camera is idle for --camera-idle");
            }
            return None;
        }
        debug!(camera_id = %id, "new camera");
        let camera = Arc::new(Camera::new(id, now));
        cameras.insert(id.to_owned(), camera.clone());
        Some(camera)
    }

    fn publish(&self, kind: &'static str, payload: &impl Serialize) {
        if self.inner.events.receiver_count() == 0 {
            return;
        }
        match serde_json::to_string(payload) {
            Ok(json) => {
                let _ = self.inner.events.send(Event { kind, data: json.into() });
            }
            Err(e) => warn!(kind, error = %e, "cannot serialise an event"),
        }
    }
}

fn label_view(label: &Label) -> LabelView {
    LabelView { name: label.name.clone(), score: label.score }
}

#[cfg(test)]
mod tests {
    use lookout_proto::v1::ModelRef;

    use super::*;

    fn frame(camera: &str, sequence: u64) -> Frame {
        Frame {
            camera_id: camera.into(),
            sequence,
            capture_time: Some(lookout_proto::timestamp(SystemTime::now())),
            width: 4,
            height: 3,
            encoding: Encoding::Jpeg.into(),
            data: Bytes::from_static(b"\xff\xd8 jpeg"),
        }
    }

    fn prediction(camera: &str, sequence: u64, label: &str) -> Prediction {
        Prediction {
            camera_id: camera.into(),
            frame_sequence: sequence,
            model: Some(ModelRef { name: "m".into(), version: "1".into(), ..Default::default() }),
            top_k: vec![Label { class_id: 1, name: label.into(), score: 0.5 }],
            ..Default::default()
        }
    }

    fn state() -> ViewerState {
        ViewerState::new(ViewerConfig::default(), CancellationToken::new())
    }

    #[test]
    fn the_slot_keeps_the_newest_frame_and_shares_its_bytes() {
        let s = state();
        let f = frame("cam", 5);
        let data = f.data.clone();
        s.on_frame(f);
        s.on_frame(frame("cam", 3));
        let latest = s.camera("cam").unwrap().latest().unwrap();
        assert_eq!(latest.sequence, 5, "an older frame never replaces a newer one");
        assert_eq!(latest.jpeg.as_ptr(), data.as_ptr(), "the JPEG bytes are not copied");
        s.on_frame(frame("cam", 6));
        let latest = s.camera("cam").unwrap().latest().unwrap();
        assert_eq!((latest.sequence, latest.index), (6, 1));
    }

    #[test]
    fn labels_never_step_back() {
        let s = state();
        assert!(s.on_prediction(&prediction("cam", 10, "espresso")));
        assert!(!s.on_prediction(&prediction("cam", 8, "tabby")));
        assert!(!s.on_prediction(&prediction("cam", 10, "tabby")), "a duplicate is ignored");
        assert_eq!(s.label("cam").unwrap().name, "espresso");
        assert!(s.on_prediction(&prediction("cam", 11, "tabby")));
        assert_eq!(s.label("cam").unwrap().name, "tabby");
    }

    #[test]
    fn skipped_predictions_leave_the_label_alone() {
        let s = state();
        assert!(s.on_prediction(&prediction("cam", 10, "espresso")));
        let mut skipped = Prediction { top_k: Vec::new(), ..prediction("cam", 11, "") };
        skipped.set_skipped(lookout_proto::v1::SkipReason::TooOld);
        assert!(!s.on_prediction(&skipped));
        assert_eq!(s.label("cam").unwrap().name, "espresso");
        assert!(s.on_prediction(&prediction("cam", 12, "tabby")), "later frames still count");
    }

    fn detected(camera: &str, sequence: u64, objects: &[&str]) -> Prediction {
        use lookout_proto::v1::{BoundingBox, Detection};
        Prediction {
            camera_id: camera.into(),
            frame_sequence: sequence,
            model: Some(ModelRef {
                name: "detector".into(),
                version: "1".into(),
                kind: ModelKind::Detection.into(),
            }),
            top_k: objects
                .iter()
                .map(|name| Label { class_id: 17, name: (*name).into(), score: 0.9 })
                .collect(),
            detections: objects
                .iter()
                .map(|name| Detection {
                    r#box: Some(BoundingBox { x: 0.1, y: 0.2, width: 0.5, height: 0.6 }),
                    label: Some(Label { class_id: 17, name: (*name).into(), score: 0.9 }),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_detector_gives_objects_and_leaves_the_classifier_label_alone() {
        let s = state();
        assert!(s.on_prediction(&prediction("cam", 10, "tabby")));
        assert!(s.on_prediction(&detected("cam", 11, &["cat"])));
        assert_eq!(s.label("cam").unwrap().name, "tabby", "the classifier's label stays");
        let found = s.detections("cam");
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].model.as_str(), found[0].sequence), ("detector", 11));
        let cat = &found[0].objects[0];
        assert_eq!(
            (cat.name.as_str(), cat.x, cat.y, cat.width, cat.height),
            ("cat", 0.1, 0.2, 0.5, 0.6)
        );
        // Each model is ordered on its own: the classifier's frame 10 is not older than the
        // detector's 11.
        assert!(s.on_prediction(&prediction("cam", 11, "tiger cat")));
        assert!(!s.on_prediction(&detected("cam", 9, &["dog"])), "objects never step back");
        assert_eq!(s.detections("cam")[0].objects[0].name, "cat");
        // Nothing found: the boxes go.
        assert!(s.on_prediction(&detected("cam", 12, &[])));
        assert!(s.detections("cam")[0].objects.is_empty());
        assert_eq!(s.label("cam").unwrap().name, "tiger cat");
        let info = &s.cameras()[0];
        assert_eq!((info.labels.len(), info.detections.len()), (1, 1));
    }

    #[test]
    fn non_jpeg_frames_and_cameras_beyond_the_limit_are_dropped() {
        let s = ViewerState::new(
            ViewerConfig { max_cameras: 1, ..ViewerConfig::default() },
            CancellationToken::new(),
        );
        let mut png = frame("a", 1);
        png.encoding = Encoding::Unspecified.into();
        s.on_frame(png);
        assert!(s.camera_ids().is_empty());
        s.on_frame(frame("a", 1));
        s.on_frame(frame("b", 1));
        assert_eq!(s.camera_ids(), vec!["a".to_owned()]);
    }

    #[test]
    fn a_sequence_far_behind_starts_a_new_run_instead_of_freezing_the_tile() {
        let s = state();
        let shown = |s: &ViewerState| s.camera("cam").unwrap().latest().unwrap().sequence;
        s.on_frame(frame("cam", 5_000_000));
        s.on_frame(frame("cam", 5_000_000 - REORDER_WINDOW));
        assert_eq!(shown(&s), 5_000_000, "a late frame within the window is dropped");
        // The camera restarts with its clock set back: its sequences are far lower.
        s.on_frame(frame("cam", 10));
        assert_eq!(shown(&s), 10, "a new run");
        s.on_frame(frame("cam", 11));
        assert_eq!(shown(&s), 11, "and the run goes on");
        // One forged frame far ahead holds the tile for one frame only.
        s.on_frame(frame("cam", u64::MAX));
        assert_eq!(shown(&s), u64::MAX);
        s.on_frame(frame("cam", 12));
        assert_eq!(shown(&s), 12);
        s.on_frame(frame("cam", 13));
        assert_eq!(shown(&s), 13);
    }

    #[test]
    fn labels_follow_a_new_run_too() {
        let s = state();
        assert!(s.on_prediction(&prediction("cam", u64::MAX, "forged")));
        assert!(!s.on_prediction(&prediction("cam", u64::MAX - 3, "late")));
        assert!(s.on_prediction(&prediction("cam", 20, "espresso")));
        assert!(s.on_prediction(&prediction("cam", 21, "tabby")));
        assert_eq!(s.label("cam").unwrap().name, "tabby");
    }

    #[test]
    fn idle_cameras_are_forgotten_and_free_the_camera_limit() {
        let idle = Duration::from_secs(60);
        let s = ViewerState::new(
            ViewerConfig { max_cameras: 2, camera_idle: idle, ..ViewerConfig::default() },
            CancellationToken::new(),
        );
        let t0 = Instant::now();
        s.on_frame_at(frame("forged-1", 1), t0);
        s.on_frame_at(frame("real", 1), t0);
        let real = s.camera("real").unwrap();
        s.on_frame_at(frame("forged-2", 1), t0 + idle);
        assert_eq!(s.camera_ids(), ["forged-1", "real"], "at the limit, nobody idle yet");

        // `real` keeps sending; `forged-1` went quiet.
        s.on_frame_at(frame("real", 2), t0 + idle);
        s.on_frame_at(frame("new", 1), t0 + idle + Duration::from_secs(1));
        assert_eq!(s.camera_ids(), ["new", "real"], "the idle camera made room");
        assert!(!real.forgotten.is_cancelled());

        assert_eq!(s.forget_idle(t0 + 3 * idle), 2);
        assert!(s.camera_ids().is_empty());
        assert!(real.forgotten.is_cancelled(), "its overlay renderer stops");
        s.on_prediction_at(&prediction("real", 3, "espresso"), t0 + 3 * idle);
        assert_eq!(s.camera_ids(), ["real"], "a camera that comes back is a new camera");
    }

    #[test]
    fn changes_are_a_bounded_ring_newest_first_without_duplicates() {
        let s = state();
        for seq in 0..(RECENT_CHANGES as u64 + 10) {
            let change = PredictionChange {
                camera_id: "cam".into(),
                frame_sequence: seq,
                current: Some(Label { class_id: 0, name: format!("l{seq}"), score: 1.0 }),
                ..Default::default()
            };
            s.on_change(&change);
            s.on_change(&change);
        }
        let changes = s.changes();
        assert_eq!(changes.len(), RECENT_CHANGES);
        assert_eq!(changes[0].sequence, RECENT_CHANGES as u64 + 9);
        assert_eq!(changes.last().unwrap().sequence, 10);
    }

    #[test]
    fn an_object_event_is_told_in_words() {
        let s = state();
        s.on_change(&PredictionChange {
            camera_id: "drive".into(),
            frame_sequence: 3,
            previous: Some(objects::present(["car"])),
            current: Some(objects::present(["person"])),
            ..Default::default()
        });
        assert_eq!(s.changes()[0].objects.as_deref(), Some("+person -car"));
    }

    #[test]
    fn fps_counts_arrivals_in_the_window() {
        let mut stats = Stats::new(Instant::now());
        let start = Instant::now();
        for i in 0..21 {
            stats.arrivals.push_back(start + Duration::from_millis(50 * i));
        }
        let fps = stats.fps(start + Duration::from_secs(1));
        assert!((fps - 20.0).abs() < 0.01, "{fps}");
        assert_eq!(stats.fps(start + Duration::from_secs(10)), 0.0, "a silent camera has 0 fps");
    }

    #[tokio::test]
    async fn events_are_throttled_per_camera_and_serialised_once() {
        let s = state();
        let mut events = s.subscribe_events();
        for seq in 1..=20 {
            s.on_frame(frame("cam", seq));
        }
        s.on_prediction(&prediction("cam", 20, "espresso"));
        let first = events.recv().await.unwrap();
        assert_eq!(first.kind, "frame");
        let v: serde_json::Value = serde_json::from_str(&first.data).unwrap();
        assert_eq!(v["sequence"], 1);
        let second = events.recv().await.unwrap();
        assert_eq!(second.kind, "prediction", "frames within 250 ms send no more frame events");
        let v: serde_json::Value = serde_json::from_str(&second.data).unwrap();
        assert_eq!(v["label"], "espresso");
        s.on_prediction(&detected("cam", 20, &["cup"]));
        let third = events.recv().await.unwrap();
        assert_eq!(third.kind, "objects");
        let v: serde_json::Value = serde_json::from_str(&third.data).unwrap();
        assert_eq!((v["camera"].as_str(), v["model"].as_str()), (Some("cam"), Some("detector")));
        assert_eq!(v["objects"][0]["name"], "cup");
        assert_eq!(v["objects"][0]["width"], 0.5);
    }
}
