//! The recorder: predictions in, in batches; each batch's decisions committed in one
//! transaction; changes published from the database.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use lookout_bus::{Bus, HandlerError, Incoming, Rejected, topics};
use lookout_proto::v1::{
    self, ModelRef, Prediction, PredictionChange, SkipReason as PredictorSkip,
};
use lookout_service::Readiness;
use tokio::{
    sync::{Mutex, Notify},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};

use crate::{
    RecorderError,
    detector::{Detector, DetectorConfig, Label, Observation, Outcome, SkipReason},
    health::Health,
    metrics as m,
    snapshots::{Missing, Now, Snapshot, SnapshotConfig, Snapshots},
    store::{
        Decision, ErrorKind, NewChange, Store, StoreError, StoredChange, StoredSnapshot, StreamKey,
    },
};

/// Most predictions handed to the handler at once (one partition's, one transaction).
const BATCH_MAX: usize = 500;
/// How often waiting predictions are checked against the window's time limit.
const TICK: Duration = Duration::from_millis(100);
/// How often the database is pinged while nothing else uses it.
const HEALTH_CHECK: Duration = Duration::from_secs(1);
/// How often unpublished changes are looked for without being told.
const OUTBOX_SWEEP: Duration = Duration::from_secs(5);
const OUTBOX_BATCH: i64 = 500;
/// How often old changes are purged.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// How often idle cameras and streams are forgotten.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);
/// Frames are read again from this long before the oldest frame a stream may need: camera
/// clocks (capture times) and the producers' clocks (Kafka timestamps) differ a little.
const FRAME_REPLAY_MARGIN_MS: i64 = 30_000;
/// Frame positions remembered per camera, per frame whose bytes are kept: frames beyond the
/// buffer are fetched again from Kafka when a change needs one.
const INDEX_PER_FRAME: usize = 100;
/// Attempts at a decision whose state another recorder changed meanwhile.
const MAX_CONFLICTS: usize = 5;
/// Longest text (camera id, model name or version, label) accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 256;

/// What the recorder needs besides the bus and the database.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// Change detection.
    pub detector: DetectorConfig,
    /// Frames kept per camera for snapshots.
    pub snapshot_buffer: usize,
    /// Bytes of frames kept over all cameras.
    pub snapshot_memory: usize,
    /// How long a change waits for a frame the frames reader may still bring; also how long a
    /// camera whose frame positions are full waits for its predictions before its oldest go.
    pub snapshot_wait: Duration,
    /// Cameras and streams with no frame and no prediction for this long are dropped from
    /// memory (their state stays in the database).
    pub idle: Duration,
    /// Changes captured longer ago than this are purged; `None` keeps them.
    pub retain: Option<Duration>,
    /// Consumer group on the predictions topic.
    pub group: String,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            detector: DetectorConfig::default(),
            snapshot_buffer: 300,
            snapshot_memory: 256 << 20,
            snapshot_wait: Duration::from_secs(3),
            idle: Duration::from_secs(600),
            retain: Some(Duration::from_secs(30 * 86_400)),
            group: "recorder".into(),
        }
    }
}

/// Counters for tests and benchmarks (the same facts are metrics).
#[derive(Debug, Default)]
struct Stats {
    predictions: AtomicU64,
    reordered: AtomicU64,
    duplicates: AtomicU64,
    decided: AtomicU64,
    changes: AtomicU64,
    published: AtomicU64,
    batches: AtomicU64,
}

/// A reading of [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Predictions handled (committed), duplicates excluded.
    pub predictions: u64,
    /// Of those, predictions that arrived before an earlier one of their started stream and
    /// waited in the window.
    pub reordered: u64,
    /// Re-delivered predictions ignored.
    pub duplicates: u64,
    /// Frames decided.
    pub decided: u64,
    /// Changes committed.
    pub changes: u64,
    /// Changes published.
    pub published: u64,
    /// Transactions committed.
    pub batches: u64,
}

impl Stats {
    /// The current values.
    fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            predictions: self.predictions.load(Ordering::SeqCst),
            reordered: self.reordered.load(Ordering::SeqCst),
            duplicates: self.duplicates.load(Ordering::SeqCst),
            decided: self.decided.load(Ordering::SeqCst),
            changes: self.changes.load(Ordering::SeqCst),
            published: self.published.load(Ordering::SeqCst),
            batches: self.batches.load(Ordering::SeqCst),
        }
    }
}

/// What the recorder holds in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memory {
    /// Streams (camera and model) whose detector is in memory.
    pub streams: usize,
    /// The frame buffer.
    pub snapshots: crate::snapshots::Sizes,
}

/// One stream's detector and the revision of its stored state.
#[derive(Debug)]
struct Slot {
    detector: Detector,
    revision: i64,
    last_used: Instant,
}

/// What a stream's detector is offered.
#[derive(Debug, Clone)]
enum Offer {
    /// A batch's predictions of the stream, in arrival order.
    Predictions(Vec<Observation>),
    /// Only the passing of time (a gap that waited too long).
    Tick,
}

/// One stream's decision, before it is committed.
#[derive(Debug)]
struct Plan {
    /// Index of the stream in the work.
    index: usize,
    /// What to commit; `None` when nothing changed (every prediction was a re-delivery).
    decision: Option<Decision>,
    detector: Detector,
    out: Outcome,
    /// Per offered prediction: "decided", "waiting" or "duplicate"; and whether it arrived
    /// before an earlier one of a started stream.
    outcomes: Vec<(&'static str, bool)>,
    /// Why each change has no snapshot, in the order of `out.changes`.
    missing: Vec<Option<Missing>>,
}

#[derive(Debug)]
struct Inner {
    config: RecorderConfig,
    store: Store,
    bus: Bus,
    health: Health,
    snapshots: Arc<Snapshots>,
    streams: std::sync::Mutex<HashMap<StreamKey, Arc<Mutex<Slot>>>>,
    outbox: Notify,
    stats: Stats,
}

/// Decides label changes from predictions and stores them; see the crate documentation.
#[derive(Debug, Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

impl Recorder {
    /// A recorder on `bus` and `store`; `readiness` gets the `database` check.
    pub fn new(config: RecorderConfig, bus: Bus, store: Store, readiness: Readiness) -> Self {
        let health = Health::new(readiness);
        let snapshots = Arc::new(Snapshots::new(
            SnapshotConfig {
                per_camera: config.snapshot_buffer,
                budget_bytes: config.snapshot_memory,
                index_per_camera: config.snapshot_buffer.saturating_mul(INDEX_PER_FRAME),
                wait: config.snapshot_wait,
                stall: config.snapshot_wait,
                idle: config.idle,
            },
            health.clone(),
        ));
        Self {
            inner: Arc::new(Inner {
                config,
                store,
                bus,
                health,
                snapshots,
                streams: std::sync::Mutex::new(HashMap::new()),
                outbox: Notify::new(),
                stats: Stats::default(),
            }),
        }
    }

    /// Counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// What is held in memory.
    pub fn memory(&self) -> Memory {
        Memory {
            streams: self.inner.streams.lock().expect("not poisoned").len(),
            snapshots: self.inner.snapshots.sizes(),
        }
    }

    /// Whether the database is usable.
    pub fn database_ok(&self) -> bool {
        self.inner.health.database_ok()
    }

    /// Runs until `shutdown` is cancelled (or a task fails, which cancels it).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), RecorderError> {
        let inner = &self.inner;
        let Some(frames_from) = inner.restore(&shutdown).await? else {
            return Ok(());
        };
        // Predictions are handled only once the frames reader is positioned, so a change's
        // frame is always either read already or on its way.
        let reader = inner.snapshots.open_reader(&inner.bus, frames_from, &shutdown).await?;
        let Some(reader) = reader else { return Ok(()) };

        let tasks_stop = shutdown.child_token();
        let mut tasks: JoinSet<Result<(), RecorderError>> = JoinSet::new();
        tasks.spawn(inner.snapshots.clone().read_frames(reader, tasks_stop.clone()));
        tasks.spawn(inner.clone().tick_loop(tasks_stop.clone()));
        tasks.spawn(inner.clone().health_loop(tasks_stop.clone()));
        tasks.spawn(inner.clone().outbox_loop(tasks_stop.clone()));
        tasks.spawn(inner.clone().maintenance_loop(tasks_stop.clone()));
        if let Some(retain) = inner.config.retain {
            tasks.spawn(inner.clone().retention_loop(retain, tasks_stop.clone()));
        }
        // A task that fails stops the service.
        let watchdog = {
            let shutdown = shutdown.clone();
            let (tx, rx) = tokio::sync::oneshot::channel::<RecorderError>();
            let handle = tokio::spawn(async move {
                let mut tasks = tasks;
                let mut tx = Some(tx);
                while let Some(done) = tasks.join_next().await {
                    let failure = match done {
                        Ok(Ok(())) => continue,
                        Ok(Err(e)) => e,
                        Err(e) => RecorderError::Task(e.to_string()),
                    };
                    warn!(error = %failure, "recorder task failed; stopping");
                    shutdown.cancel();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(failure);
                    }
                }
            });
            (handle, rx)
        };

        let handler = {
            let inner = inner.clone();
            move |batch: Vec<Incoming<Prediction>>| {
                let inner = inner.clone();
                async move { inner.on_batch(batch).await }
            }
        };
        let subscriber = inner.bus.subscriber(&topics::PREDICTIONS, &inner.config.group);
        let owned = tokio::spawn(
            inner.clone().follow_assignment(subscriber.assignment(), tasks_stop.clone()),
        );
        let consumed =
            subscriber.run_batched(BATCH_MAX, Duration::ZERO, handler, shutdown.clone()).await;
        tasks_stop.cancel();
        let _ = owned.await;
        let (handle, mut failure) = watchdog;
        let _ = handle.await;
        consumed?;
        if let Ok(e) = failure.try_recv() {
            return Err(e);
        }
        Ok(())
    }
}

impl Inner {
    /// Loads every stream's state, waiting for the database if needed. Returns where to read
    /// frames from (`None`: from the oldest retained), or `None` when shut down first.
    async fn restore(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Option<Option<i64>>, RecorderError> {
        let mut backoff =
            lookout_bus::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let stored = loop {
            match self.store.load_streams().await {
                Ok(s) => break s,
                Err(e) if e.is_transient() => {
                    self.database_failed(&e);
                    if !backoff.wait(shutdown).await {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.health.set_database(true, "state loaded");
        let now = self.health.now();
        let mut needed_since: Option<i64> = None;
        let mut waiting = 0;
        let mut streams = self.streams.lock().expect("not poisoned");
        for s in stored {
            let detector = Detector::restore(self.config.detector, s.state, s.window, now);
            self.snapshots.progress(&s.key, detector.needed_from());
            if let Some(t) = detector.needed_since_ms() {
                needed_since = Some(needed_since.map_or(t, |n| n.min(t)));
            }
            waiting += detector.waiting_len();
            let slot = Slot { detector, revision: s.revision, last_used: Instant::now() };
            streams.insert(s.key, Arc::new(Mutex::new(slot)));
        }
        metrics::gauge!(m::STREAMS).set(streams.len() as f64);
        let frames_from = needed_since.map(|t| t.saturating_sub(FRAME_REPLAY_MARGIN_MS));
        info!(
            streams = streams.len(),
            waiting,
            frames_from_ms = frames_from,
            database = %self.store.url(),
            "detector state restored"
        );
        Ok(Some(frames_from))
    }

    /// The slot of each stream, loading from the database those not in memory (new, or
    /// forgotten while idle).
    async fn slots(&self, keys: &[&StreamKey]) -> Result<Vec<Arc<Mutex<Slot>>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let known = self.streams.lock().expect("not poisoned").get(*key).cloned();
            let slot = match known {
                Some(slot) => slot,
                None => {
                    let slot = self.reload(key).await?;
                    let mut streams = self.streams.lock().expect("not poisoned");
                    let slot = streams
                        .entry((*key).clone())
                        .or_insert_with(|| Arc::new(Mutex::new(slot)))
                        .clone();
                    metrics::gauge!(m::STREAMS).set(streams.len() as f64);
                    slot
                }
            };
            out.push(slot);
        }
        Ok(out)
    }

    /// Handles a batch of one partition's predictions: refuses those that can never be
    /// stored, decides the rest per stream, and commits everything in one transaction.
    async fn on_batch(&self, batch: Vec<Incoming<Prediction>>) -> Result<Rejected, HandlerError> {
        let mut rejected = Rejected::none();
        let mut work: BTreeMap<StreamKey, Vec<Observation>> = BTreeMap::new();
        for (i, incoming) in batch.iter().enumerate() {
            match observation(&incoming.message) {
                Ok((key, o)) => work.entry(key).or_default().push(o),
                Err(reason) => rejected.push(i, reason),
            }
        }
        if work.is_empty() {
            return Ok(rejected);
        }
        let first = &batch[0].meta;
        let span = info_span!(
            "predictions",
            partition = first.partition,
            offset = first.offset,
            count = batch.len(),
        );
        let work = work.into_iter().map(|(k, o)| (k, Offer::Predictions(o))).collect();
        match self.decide(work).instrument(span).await {
            Ok(()) => Ok(rejected),
            Err(e) => Err(self.handler_error(&e)),
        }
    }

    /// What a failed decision means for the bus: a database outage pauses the partition; data
    /// the database refuses is dead-lettered (the bus finds the message alone); a
    /// configuration error stops the service.
    fn handler_error(&self, e: &StoreError) -> HandlerError {
        match e.kind() {
            ErrorKind::Transient => {
                self.database_failed(e);
                HandlerError::transient(e)
            }
            ErrorKind::Data => HandlerError::permanent(e),
            ErrorKind::Config => HandlerError::fatal(e),
        }
    }

    /// Offers predictions (or the passing of time) to streams' detectors and commits what
    /// they decided, in one transaction. Streams are locked in key order while deciding and
    /// committing; a change whose frame is not settled yet releases them, waits for its
    /// frame (see [`Snapshots::take`]), and decides again. A detector is replaced only after
    /// its decision committed.
    async fn decide(&self, work: Vec<(StreamKey, Offer)>) -> Result<(), StoreError> {
        debug_assert!(work.windows(2).all(|w| w[0].0 < w[1].0), "sorted, distinct keys");
        let keys: Vec<&StreamKey> = work.iter().map(|(k, _)| k).collect();
        let mut settled: HashMap<(String, u64), Snapshot> = HashMap::new();
        let mut deadline = None;
        let mut conflicts = 0;
        loop {
            let slots = self.slots(&keys).await?;
            let mut guards = Vec::with_capacity(slots.len());
            for slot in &slots {
                guards.push(slot.lock().await);
            }
            let now = self.health.now();
            let now_ms = lookout_proto::unix_millis(SystemTime::now());
            let mut unsettled = Vec::new();
            let plans: Vec<Plan> = work
                .iter()
                .zip(&guards)
                .enumerate()
                .map(|(index, ((key, offer), slot))| {
                    self.plan(index, key, offer, slot, now, now_ms, &settled, &mut unsettled)
                })
                .collect();
            if !unsettled.is_empty() {
                drop(guards);
                let deadline = *deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + self.config.snapshot_wait);
                let taken = self.snapshots.take_all(&unsettled, deadline).await;
                settled.extend(unsettled.into_iter().zip(taken));
                continue;
            }
            let decisions: Vec<Decision> =
                plans.iter().filter_map(|p| p.decision.clone()).collect();
            if decisions.is_empty() {
                self.count(&plans);
                return Ok(());
            }
            let started = Instant::now();
            match self.store.commit(&decisions).await {
                Ok(committed) => {
                    metrics::histogram!(m::COMMIT_DURATION).record(started.elapsed().as_secs_f64());
                    self.health.set_database(true, "commit");
                    self.stats.batches.fetch_add(1, Ordering::SeqCst);
                    let mut committed = committed.into_iter();
                    for plan in &plans {
                        let Some(decision) = &plan.decision else { continue };
                        let c = committed.next().expect("one result per decision");
                        let slot = &mut guards[plan.index];
                        slot.revision = c.revision;
                        slot.detector = plan.detector.clone();
                        slot.last_used = Instant::now();
                        self.snapshots.progress(&decision.key, slot.detector.needed_from());
                        self.committed(plan, decision, &c.change_ids);
                    }
                    self.count(&plans);
                    return Ok(());
                }
                Err(StoreError::Conflict { camera, model }) if conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    metrics::counter!(m::STATE_CONFLICTS).increment(1);
                    warn!(camera = %camera, model = %model, "detector state changed by another recorder; reloading");
                    let conflicting =
                        work.iter().position(|(k, _)| k.camera_id == camera && k.model() == model);
                    if let Some(i) = conflicting {
                        *guards[i] = self.reload(&work[i].0).await?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Inner {
    /// What a stream's detector decides from `offer`, and the decision to commit. Snapshots
    /// come from `settled` or from the buffer; those needing I/O or a wait are listed in
    /// `unsettled` (the caller settles them outside the locks and plans again).
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        index: usize,
        key: &StreamKey,
        offer: &Offer,
        slot: &Slot,
        now: Duration,
        now_ms: i64,
        settled: &HashMap<(String, u64), Snapshot>,
        unsettled: &mut Vec<(String, u64)>,
    ) -> Plan {
        let mut detector = slot.detector.clone();
        let had_waiting = detector.waiting_len() > 0;
        let mut out = Outcome::default();
        let mut outcomes = Vec::new();
        let mut changed = false;
        match offer {
            Offer::Predictions(observations) => {
                for o in observations {
                    let started = detector.state().last_decided.is_some();
                    let one = detector.offer(o.clone(), now);
                    let outcome = match (one.ignored, one.decided) {
                        (Some(_), _) => "duplicate",
                        (None, 0) => "waiting",
                        (None, _) => "decided",
                    };
                    changed |= one.ignored.is_none();
                    outcomes.push((outcome, outcome == "waiting" && started));
                    merge(&mut out, one);
                }
            }
            Offer::Tick => {
                let one = detector.tick(now);
                changed = one.decided > 0;
                merge(&mut out, one);
            }
        }
        let mut changes = Vec::with_capacity(out.changes.len());
        let mut missing = Vec::with_capacity(out.changes.len());
        for change in &out.changes {
            let at = (key.camera_id.clone(), change.sequence);
            let snapshot = match settled.get(&at) {
                Some(s) => s.clone(),
                None => match self.snapshots.take_now(&key.camera_id, change.sequence) {
                    Now::Ready(s) => s,
                    Now::Later => {
                        unsettled.push(at);
                        Snapshot::Missing(Missing::TimedOut)
                    }
                },
            };
            missing.push(match &snapshot {
                Snapshot::Missing(why) => Some(*why),
                Snapshot::Frame(_) => None,
            });
            changes.push(NewChange { change: change.clone(), snapshot: snapshot.into_bytes() });
        }
        let decision = changed.then(|| Decision {
            key: key.clone(),
            revision: slot.revision,
            state: detector.state().clone(),
            insert_waiting: match offer {
                Offer::Predictions(o) => {
                    o.iter().filter(|o| detector.is_waiting(o.sequence)).cloned().collect()
                }
                Offer::Tick => Vec::new(),
            },
            delete_waiting_upto: if had_waiting && out.decided > 0 {
                detector.state().last_decided
            } else {
                None
            },
            changes,
            now_ms,
        });
        Plan { index, decision, detector, out, outcomes, missing }
    }

    /// Counts what the predictions of committed (or unchanged) plans became.
    fn count(&self, plans: &[Plan]) {
        for plan in plans {
            for (outcome, reordered) in &plan.outcomes {
                metrics::counter!(m::PREDICTIONS, "outcome" => *outcome).increment(1);
                let counter = if *outcome == "duplicate" {
                    &self.stats.duplicates
                } else {
                    &self.stats.predictions
                };
                counter.fetch_add(1, Ordering::SeqCst);
                if *reordered {
                    self.stats.reordered.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    /// A stream's slot as the database has it (a new detector when it has none).
    async fn reload(&self, key: &StreamKey) -> Result<Slot, StoreError> {
        let now = self.health.now();
        Ok(match self.store.load_stream(key).await? {
            Some(s) => Slot {
                detector: Detector::restore(self.config.detector, s.state, s.window, now),
                revision: s.revision,
                last_used: Instant::now(),
            },
            None => Slot {
                detector: Detector::new(self.config.detector),
                revision: 0,
                last_used: Instant::now(),
            },
        })
    }

    /// Metrics, logs and the outbox after a commit.
    fn committed(&self, plan: &Plan, decision: &Decision, ids: &[i64]) {
        let key = &decision.key;
        let out = &plan.out;
        self.stats.decided.fetch_add(out.decided as u64, Ordering::SeqCst);
        metrics::counter!(m::FRAMES_DECIDED).increment(out.decided as u64);
        for skip in &out.skips {
            let reason = match skip.reason {
                SkipReason::Timeout => "timeout",
                SkipReason::WindowFull => "window_full",
                SkipReason::Restart => "restart",
            };
            metrics::counter!(m::GAPS_SKIPPED, "reason" => reason).increment(1);
            if skip.reason == SkipReason::Restart {
                warn!(camera = %key.camera_id, from = skip.from, to = skip.to, reason, "sequence went far back: a new run of the camera (restarted with its clock set back, or an earlier sequence was forged); starting again from it");
            } else {
                warn!(camera = %key.camera_id, from = skip.from, to = skip.to, reason, "missing predictions given up on; a change next to them may be missed");
            }
        }
        for ((c, id), missing) in decision.changes.iter().zip(ids).zip(&plan.missing) {
            self.stats.changes.fetch_add(1, Ordering::SeqCst);
            metrics::counter!(m::CHANGES).increment(1);
            if let Some(why) = missing {
                metrics::counter!(m::SNAPSHOTS_MISSING, "reason" => why.as_str()).increment(1);
            }
            let latency = (decision.now_ms - c.change.capture_time_ms).max(0) as f64 / 1000.0;
            metrics::histogram!(m::CHANGE_LATENCY).record(latency);
            info!(
                change_id = id,
                camera = %key.camera_id,
                sequence = c.change.sequence,
                model = %key.model_name,
                previous = c.change.previous.as_ref().map(|l| l.name.as_str()),
                label = %c.change.current.name,
                score = c.change.current.score,
                snapshot_missing = missing.map(Missing::as_str),
                "change recorded"
            );
        }
        if !ids.is_empty() {
            self.outbox.notify_one();
        }
    }

    fn database_failed(&self, e: &StoreError) {
        metrics::counter!(m::DATABASE_ERRORS).increment(1);
        self.health.set_database(false, &e.to_string());
    }

    /// Runs the reorder clock only while this recorder owns partitions of the predictions
    /// topic (see [`crate::health`]).
    async fn follow_assignment(
        self: Arc<Self>,
        mut owned: tokio::sync::watch::Receiver<usize>,
        stop: CancellationToken,
    ) {
        loop {
            let partitions = *owned.borrow_and_update();
            self.health.set_consuming(partitions > 0);
            tokio::select! {
                () = stop.cancelled() => return,
                changed = owned.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Skips gaps that waited too long in streams that receive nothing new.
    async fn tick_loop(self: Arc<Self>, stop: CancellationToken) -> Result<(), RecorderError> {
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(TICK) => {}
            }
            let slots: Vec<(StreamKey, Arc<Mutex<Slot>>)> = {
                let streams = self.streams.lock().expect("not poisoned");
                streams.iter().map(|(k, s)| (k.clone(), s.clone())).collect()
            };
            // Streams busy with predictions decide on their own.
            let mut waiting: Vec<(StreamKey, Offer)> = slots
                .into_iter()
                .filter(|(_, s)| s.try_lock().is_ok_and(|s| s.detector.waiting_len() > 0))
                .map(|(k, _)| (k, Offer::Tick))
                .collect();
            if waiting.is_empty() {
                continue;
            }
            waiting.sort_by(|a, b| a.0.cmp(&b.0));
            if let Err(e) = self.decide(waiting).await {
                if e.is_transient() {
                    self.database_failed(&e);
                } else {
                    warn!(error = %e, "cannot skip a gap");
                }
            }
        }
    }

    /// Keeps the `database` readiness check current while nothing else touches the database.
    async fn health_loop(self: Arc<Self>, stop: CancellationToken) -> Result<(), RecorderError> {
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(HEALTH_CHECK) => {}
            }
            match self.store.ping().await {
                Ok(()) => self.health.set_database(true, "ping"),
                Err(e) => self.database_failed(&e),
            }
        }
    }

    /// Forgets idle cameras' frames and idle streams' detectors (their state is in the
    /// database and is loaded again when a prediction comes), so memory follows the cameras
    /// that are active, not every camera ever seen.
    async fn maintenance_loop(
        self: Arc<Self>,
        stop: CancellationToken,
    ) -> Result<(), RecorderError> {
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(MAINTENANCE_EVERY.min(self.config.idle)) => {}
            }
            self.snapshots.forget_idle();
            let idle = self.config.idle;
            let mut streams = self.streams.lock().expect("not poisoned");
            streams.retain(|_, slot| match slot.try_lock() {
                Ok(s) => s.detector.waiting_len() > 0 || s.last_used.elapsed() < idle,
                Err(_) => true,
            });
            metrics::gauge!(m::STREAMS).set(streams.len() as f64);
        }
    }

    /// Publishes committed changes on the changes topic (transactional outbox: a change is
    /// marked published only after the brokers acknowledged it, so a crash in between
    /// publishes it again; consumers can tell by `change_id`).
    async fn outbox_loop(self: Arc<Self>, stop: CancellationToken) -> Result<(), RecorderError> {
        let publisher = self.bus.publisher(&topics::CHANGES);
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                () = self.outbox.notified() => false,
                () = tokio::time::sleep(OUTBOX_SWEEP) => false,
            };
            loop {
                match self.publish_batch(&publisher).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        metrics::counter!(m::EVENT_ERRORS).increment(1);
                        warn!(error = %e, "cannot publish changes now; will retry");
                        break;
                    }
                }
            }
            if stopping {
                return Ok(());
            }
        }
    }

    async fn publish_batch(
        &self,
        publisher: &lookout_bus::Publisher<PredictionChange>,
    ) -> Result<usize, RecorderError> {
        let batch = self.store.unpublished(OUTBOX_BATCH).await?;
        if batch.is_empty() {
            return Ok(0);
        }
        let mut pending = Vec::with_capacity(batch.len());
        for change in &batch {
            let mut event = change_event(change);
            event.thumbnail = self.thumbnail(change).await?.map(Into::into).unwrap_or_default();
            pending.push(publisher.enqueue(&event, None).await?);
        }
        for p in pending {
            p.wait().await?;
        }
        let ids: Vec<i64> = batch.iter().map(|c| c.change_id).collect();
        self.store.mark_published(&ids).await?;
        metrics::counter!(m::EVENTS_PUBLISHED).increment(ids.len() as u64);
        self.stats.published.fetch_add(ids.len() as u64, Ordering::SeqCst);
        Ok(ids.len())
    }

    /// The thumbnail of a stored change's snapshot; `None` without a snapshot, or when it does
    /// not decode (the change is published without one).
    async fn thumbnail(&self, change: &StoredChange) -> Result<Option<Vec<u8>>, RecorderError> {
        if change.snapshot_missing {
            return Ok(None);
        }
        let StoredSnapshot::Jpeg(jpeg) = self.store.snapshot(change.change_id).await? else {
            return Ok(None);
        };
        let made = tokio::task::spawn_blocking(move || thumbnail(&jpeg)).await;
        match made {
            Ok(Ok(small)) => Ok(Some(small)),
            Ok(Err(e)) => {
                warn!(change_id = change.change_id, error = %e, "the snapshot does not decode; the change is published without a thumbnail");
                Ok(None)
            }
            Err(e) => {
                warn!(change_id = change.change_id, error = %e, "making a thumbnail failed; the change is published without one");
                Ok(None)
            }
        }
    }

    /// Deletes changes older than `retain`, at start and then hourly.
    async fn retention_loop(
        self: Arc<Self>,
        retain: Duration,
        stop: CancellationToken,
    ) -> Result<(), RecorderError> {
        loop {
            let cutoff = lookout_proto::unix_millis(SystemTime::now())
                .saturating_sub(retain.as_millis() as i64);
            match self.store.purge_before(cutoff).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics::counter!(m::PURGED).increment(n);
                    info!(purged = n, cutoff_ms = cutoff, "old changes purged");
                }
                Err(e) => warn!(error = %e, "retention purge failed; will retry"),
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(RETENTION_EVERY) => {}
            }
        }
    }
}

/// Adds one offer's outcome to a batch's.
fn merge(total: &mut Outcome, one: Outcome) {
    total.decided += one.decided;
    total.changes.extend(one.changes);
    total.skips.extend(one.skips);
}

/// Text as it may be stored: at most [`MAX_TEXT_BYTES`] bytes, no control characters.
fn check_text(what: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_TEXT_BYTES {
        return Err(format!("{what} is {} bytes long, over {MAX_TEXT_BYTES}", value.len()));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!("{what} contains the control character {c:?}"));
    }
    Ok(())
}

/// The stream and observation of a prediction, or why it can never be handled.
pub fn observation(p: &Prediction) -> Result<(StreamKey, Observation), String> {
    if p.camera_id.is_empty() {
        return Err("prediction without camera id".into());
    }
    check_text("camera id", &p.camera_id)?;
    if i64::try_from(p.frame_sequence).is_err() {
        return Err(format!("frame sequence {} is out of range", p.frame_sequence));
    }
    let model = p.model.clone().unwrap_or_default();
    check_text("model name", &model.name)?;
    check_text("model version", &model.version)?;
    let skipped = p.skipped() != PredictorSkip::Unspecified;
    let top1 = if model.kind() == v1::ModelKind::Detection {
        // A detector's "label" is the set of classes present (empty: nothing is there), so a
        // change is an object event: a class appeared or left.
        let names = p.detections.iter().filter_map(|d| d.label.as_ref()).map(|l| l.name.as_str());
        let set = lookout_proto::objects::present(names);
        Some(Label { class_id: set.class_id, name: set.name, score: set.score })
    } else {
        p.top_k
            .iter()
            .reduce(|best, l| if l.score > best.score { l } else { best })
            .map(|l| Label { class_id: l.class_id, name: l.name.clone(), score: l.score })
    };
    if let Some(l) = &top1 {
        check_text("label", &l.name)?;
    }
    let key = StreamKey {
        camera_id: p.camera_id.clone(),
        model_name: model.name,
        model_version: model.version,
    };
    let capture_time_ms = p.capture_time.as_ref().map_or(0, lookout_proto::timestamp_millis);
    let top1 = if skipped { None } else { top1 };
    Ok((key, Observation { sequence: p.frame_sequence, capture_time_ms, top1, skipped }))
}

/// The event published for a stored change.
/// Widest thumbnail published with a change.
pub const THUMBNAIL_WIDTH: u32 = 160;
/// JPEG quality of thumbnails.
const THUMBNAIL_QUALITY: u8 = 70;

/// A JPEG at most [`THUMBNAIL_WIDTH`] wide (and as high, for a tall frame) of a snapshot.
pub fn thumbnail(jpeg: &[u8]) -> Result<Vec<u8>, image::ImageError> {
    let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)?;
    let small = img.thumbnail(THUMBNAIL_WIDTH, THUMBNAIL_WIDTH).into_rgb8();
    let mut out = Vec::with_capacity(8 * 1024);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, THUMBNAIL_QUALITY)
        .encode_image(&small)?;
    Ok(out)
}

pub fn change_event(c: &StoredChange) -> PredictionChange {
    let label =
        |l: &Label| v1::Label { class_id: l.class_id, name: l.name.clone(), score: l.score };
    PredictionChange {
        camera_id: c.key.camera_id.clone(),
        frame_sequence: c.frame_sequence,
        previous: c.previous.as_ref().map(label),
        current: Some(label(&c.current)),
        model: Some(ModelRef {
            name: c.key.model_name.clone(),
            version: c.key.model_version.clone(),
            ..ModelRef::default()
        }),
        time: Some(lookout_proto::timestamp_from_millis(c.capture_time_ms)),
        change_id: c.change_id,
        snapshot_missing: c.snapshot_missing,
        thumbnail: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prediction_becomes_an_observation() {
        let p = Prediction {
            camera_id: "lobby".into(),
            frame_sequence: 42,
            capture_time: Some(lookout_proto::timestamp_from_millis(1_700_000_000_123)),
            model: Some(ModelRef { name: "m".into(), version: "2".into(), ..Default::default() }),
            top_k: vec![
                v1::Label { class_id: 1, name: "cat".into(), score: 0.4 },
                v1::Label { class_id: 2, name: "dog".into(), score: 0.5 },
            ],
            ..Default::default()
        };
        let (key, o) = observation(&p).unwrap();
        assert_eq!(key.model_version, "2");
        assert_eq!(o.capture_time_ms, 1_700_000_000_123);
        assert_eq!(o.top1.unwrap().name, "dog", "the best score wins even if listed second");
        assert!(observation(&Prediction::default()).is_err());
        let huge = Prediction { camera_id: "x".into(), frame_sequence: u64::MAX, ..p.clone() };
        assert!(observation(&huge).is_err());
        let skipped = Prediction { skipped: PredictorSkip::TooOld.into(), ..p.clone() };
        let (_, o) = observation(&skipped).unwrap();
        assert!(o.skipped && o.top1.is_none(), "no evidence");
    }

    #[test]
    fn a_detector_prediction_is_the_set_of_classes_present() {
        let found = |names: &[&str]| Prediction {
            camera_id: "lobby".into(),
            frame_sequence: 7,
            model: Some(ModelRef {
                name: "d".into(),
                version: "1".into(),
                kind: v1::ModelKind::Detection.into(),
            }),
            detections: names
                .iter()
                .map(|n| v1::Detection {
                    r#box: Some(v1::BoundingBox { x: 0.1, y: 0.1, width: 0.2, height: 0.2 }),
                    label: Some(v1::Label { class_id: 1, name: (*n).into(), score: 0.6 }),
                })
                .collect(),
            ..Default::default()
        };
        let (_, o) = observation(&found(&["person", "car", "person"])).unwrap();
        let set = o.top1.unwrap();
        assert_eq!((set.name.as_str(), set.class_id), ("car, person", u32::MAX));
        let (_, o) = observation(&found(&[])).unwrap();
        assert_eq!(o.top1.unwrap().name, "", "nothing there is a state too: the car left");
        let skipped = Prediction { skipped: PredictorSkip::TooOld.into(), ..found(&["car"]) };
        assert!(observation(&skipped).unwrap().1.top1.is_none(), "no evidence");
        let nul = observation(&found(&["ca\0r"])).unwrap_err();
        assert!(nul.contains("control"), "{nul}");
    }

    #[test]
    fn text_that_cannot_be_stored_is_refused_where_it_enters() {
        let p = |camera: &str, label: &str| Prediction {
            camera_id: camera.into(),
            frame_sequence: 1,
            top_k: vec![v1::Label { class_id: 1, name: label.into(), score: 0.9 }],
            ..Default::default()
        };
        assert!(observation(&p("porch", "cat")).is_ok());
        let nul = observation(&p("por\0ch", "cat")).unwrap_err();
        assert!(nul.contains("camera id") && nul.contains("control"), "{nul}");
        let long = observation(&p("porch", &"x".repeat(10_000))).unwrap_err();
        assert!(long.contains("label is 10000 bytes"), "{long}");
    }
}
