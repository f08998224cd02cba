//! The recorder: predictions in, decisions committed, changes published.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use lookout_bus::{Bus, HandlerError, Incoming, topics};
use lookout_proto::v1::{self, ModelRef, Prediction, PredictionChange};
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
    snapshots::{self, FrameBuffer},
    store::{Decision, NewChange, Store, StoreError, StoredChange, StreamKey},
};

/// How often waiting predictions are checked against the window's time limit.
const TICK: Duration = Duration::from_millis(100);
/// How often the database is pinged while nothing else uses it.
const HEALTH_CHECK: Duration = Duration::from_secs(1);
/// How often unpublished changes are looked for without being told.
const OUTBOX_SWEEP: Duration = Duration::from_secs(5);
const OUTBOX_BATCH: i64 = 100;
/// How often old changes are purged.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// Frames are read again from this long before the oldest frame a stream may need: camera
/// clocks (capture times) and the producers' clocks (Kafka timestamps) differ a little.
const FRAME_REPLAY_MARGIN_MS: i64 = 30_000;
/// Frame positions remembered per camera, per frame whose bytes are kept: frames beyond the
/// buffer are fetched again from Kafka when a change needs one.
const INDEX_PER_FRAME: usize = 100;
/// Attempts at a decision whose state another recorder changed meanwhile.
const MAX_CONFLICTS: usize = 5;
const START_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the recorder needs besides the bus and the database.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// Change detection.
    pub detector: DetectorConfig,
    /// Frames kept per camera for snapshots.
    pub snapshot_buffer: usize,
    /// How long a change waits for its frame, and how long a full frame buffer waits for its
    /// camera's predictions.
    pub snapshot_wait: Duration,
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
            snapshot_wait: Duration::from_secs(3),
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
        }
    }
}

/// One stream's detector and the revision of its stored state.
#[derive(Debug)]
struct Slot {
    detector: Detector,
    revision: i64,
}

#[derive(Debug)]
struct Inner {
    config: RecorderConfig,
    store: Store,
    bus: Bus,
    health: Health,
    frames: Arc<FrameBuffer>,
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
        let frames = Arc::new(FrameBuffer::new(
            config.snapshot_buffer,
            config.snapshot_buffer.saturating_mul(INDEX_PER_FRAME),
            config.snapshot_wait,
            health.clone(),
        ));
        Self {
            inner: Arc::new(Inner {
                config,
                store,
                bus,
                health,
                frames,
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

        let tasks_stop = shutdown.child_token();
        let mut tasks: JoinSet<Result<(), RecorderError>> = JoinSet::new();
        tasks.spawn(snapshots::read_frames(
            inner.bus.clone(),
            inner.frames.clone(),
            frames_from,
            tasks_stop.clone(),
        ));
        tasks.spawn(inner.clone().tick_loop(tasks_stop.clone()));
        tasks.spawn(inner.clone().health_loop(tasks_stop.clone()));
        tasks.spawn(inner.clone().outbox_loop(tasks_stop.clone()));
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
            move |incoming: Incoming<Prediction>| {
                let inner = inner.clone();
                async move { inner.on_prediction(incoming).await }
            }
        };
        let subscriber = inner.bus.subscriber(&topics::PREDICTIONS, &inner.config.group);
        let owned = tokio::spawn(
            inner.clone().follow_assignment(subscriber.assignment(), tasks_stop.clone()),
        );
        let consumed = subscriber.run(handler, shutdown.clone()).await;
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
    /// frames from, or `None` when shut down first.
    async fn restore(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Option<Option<i64>>, RecorderError> {
        let mut backoff = Duration::from_millis(100);
        let stored = loop {
            match self.store.load_streams().await {
                Ok(s) => break s,
                Err(e) if e.is_transient() => {
                    self.database_failed(&e);
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(None),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(START_BACKOFF_MAX);
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
            self.frames.progress(&s.key, detector.needed_from());
            if let Some(t) = detector.needed_since_ms() {
                needed_since = Some(needed_since.map_or(t, |n| n.min(t)));
            }
            waiting += detector.waiting_len();
            streams.insert(s.key, Arc::new(Mutex::new(Slot { detector, revision: s.revision })));
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

    fn slot(&self, key: &StreamKey) -> Arc<Mutex<Slot>> {
        let mut streams = self.streams.lock().expect("not poisoned");
        if let Some(slot) = streams.get(key) {
            return slot.clone();
        }
        let slot = Arc::new(Mutex::new(Slot {
            detector: Detector::new(self.config.detector),
            revision: 0,
        }));
        streams.insert(key.clone(), slot.clone());
        metrics::gauge!(m::STREAMS).set(streams.len() as f64);
        slot
    }

    async fn on_prediction(&self, incoming: Incoming<Prediction>) -> Result<(), HandlerError> {
        let (key, observation) = observation(&incoming.message).map_err(HandlerError::Permanent)?;
        let span = info_span!(
            "prediction",
            camera = %key.camera_id,
            sequence = observation.sequence,
            partition = incoming.meta.partition,
            offset = incoming.meta.offset,
        );
        async {
            let slot = self.slot(&key);
            let mut slot = slot.lock().await;
            let started = slot.detector.state().last_decided.is_some();
            match self.decide(&key, &mut slot, Some(observation)).await {
                Ok(out) => {
                    let outcome = match (out.ignored, out.decided) {
                        (Some(_), _) => "duplicate",
                        (None, 0) => "waiting",
                        (None, _) => "decided",
                    };
                    metrics::counter!(m::PREDICTIONS, "outcome" => outcome).increment(1);
                    let counter = if out.ignored.is_some() {
                        &self.stats.duplicates
                    } else {
                        &self.stats.predictions
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    if outcome == "waiting" && started {
                        self.stats.reordered.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(())
                }
                Err(e) => {
                    self.database_failed(&e);
                    Err(HandlerError::Transient(e.to_string()))
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Offers a prediction (or just lets time pass, with `None`) to a stream's detector and
    /// commits what it decided. The detector in `slot` is replaced only after the commit.
    async fn decide(
        &self,
        key: &StreamKey,
        slot: &mut Slot,
        offered: Option<Observation>,
    ) -> Result<Outcome, StoreError> {
        let mut attempt = 0;
        loop {
            let mut detector = slot.detector.clone();
            let had_waiting = detector.waiting_len() > 0;
            let now = self.health.now();
            let out = match &offered {
                Some(o) => detector.offer(o.clone(), now),
                None => detector.tick(now),
            };
            if out.ignored.is_some() || (offered.is_none() && out.decided == 0) {
                return Ok(out);
            }
            let mut changes = Vec::with_capacity(out.changes.len());
            for change in &out.changes {
                let snapshot = self
                    .frames
                    .wait_for(&key.camera_id, change.sequence, self.config.snapshot_wait)
                    .await;
                changes.push(NewChange { change: change.clone(), snapshot });
            }
            let now_ms = lookout_proto::unix_millis(SystemTime::now());
            let decision = Decision {
                key,
                revision: slot.revision,
                state: detector.state(),
                insert_waiting: offered.as_ref().filter(|o| detector.is_waiting(o.sequence)),
                delete_waiting_upto: if had_waiting && out.decided > 0 {
                    detector.state().last_decided
                } else {
                    None
                },
                changes: &changes,
                now_ms,
            };
            let started = Instant::now();
            match self.store.commit(&decision).await {
                Ok(committed) => {
                    metrics::histogram!(m::COMMIT_DURATION).record(started.elapsed().as_secs_f64());
                    self.health.set_database(true, "commit");
                    slot.revision = committed.revision;
                    slot.detector = detector;
                    self.frames.progress(key, slot.detector.needed_from());
                    self.committed(key, &out, &changes, &committed.change_ids, now_ms);
                    return Ok(out);
                }
                Err(StoreError::Conflict { .. }) if attempt < MAX_CONFLICTS => {
                    attempt += 1;
                    metrics::counter!(m::STATE_CONFLICTS).increment(1);
                    warn!(camera = %key.camera_id, model = %key.model_name, "detector state changed by another recorder; reloading");
                    self.reload(key, slot).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn reload(&self, key: &StreamKey, slot: &mut Slot) -> Result<(), StoreError> {
        let now = self.health.now();
        *slot = match self.store.load_stream(key).await? {
            Some(s) => Slot {
                detector: Detector::restore(self.config.detector, s.state, s.window, now),
                revision: s.revision,
            },
            None => Slot { detector: Detector::new(self.config.detector), revision: 0 },
        };
        Ok(())
    }

    /// Metrics, logs and the outbox after a commit.
    fn committed(
        &self,
        key: &StreamKey,
        out: &Outcome,
        changes: &[NewChange],
        ids: &[i64],
        now_ms: i64,
    ) {
        self.stats.decided.fetch_add(out.decided as u64, Ordering::SeqCst);
        metrics::counter!(m::FRAMES_DECIDED).increment(out.decided as u64);
        for skip in &out.skips {
            let reason = match skip.reason {
                SkipReason::Timeout => "timeout",
                SkipReason::WindowFull => "window_full",
            };
            metrics::counter!(m::GAPS_SKIPPED, "reason" => reason).increment(1);
            warn!(camera = %key.camera_id, from = skip.from, to = skip.to, reason, "missing predictions given up on; a change next to them may be missed");
        }
        for (c, id) in changes.iter().zip(ids) {
            self.stats.changes.fetch_add(1, Ordering::SeqCst);
            metrics::counter!(m::CHANGES).increment(1);
            if c.snapshot.is_none() {
                metrics::counter!(m::SNAPSHOTS_MISSING).increment(1);
            }
            let latency = (now_ms - c.change.capture_time_ms).max(0) as f64 / 1000.0;
            metrics::histogram!(m::CHANGE_LATENCY).record(latency);
            info!(
                change_id = id,
                camera = %key.camera_id,
                sequence = c.change.sequence,
                model = %key.model_name,
                previous = c.change.previous.as_ref().map(|l| l.name.as_str()),
                label = %c.change.current.name,
                score = c.change.current.score,
                snapshot_missing = c.snapshot.is_none(),
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

    /// Skips gaps that waited too long in streams that receive nothing new.
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
            for (key, slot) in slots {
                // A stream busy with a prediction decides on its own.
                let Ok(mut slot) = slot.try_lock() else { continue };
                if slot.detector.waiting_len() == 0 {
                    continue;
                }
                if let Err(e) = self.decide(&key, &mut slot, None).await {
                    self.database_failed(&e);
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
            pending.push(publisher.enqueue(&change_event(change), None).await?);
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

/// The stream and observation of a prediction, or why it can never be handled.
pub fn observation(p: &Prediction) -> Result<(StreamKey, Observation), String> {
    if p.camera_id.is_empty() {
        return Err("prediction without camera id".into());
    }
    if i64::try_from(p.frame_sequence).is_err() {
        return Err(format!("frame sequence {} is out of range", p.frame_sequence));
    }
    let model = p.model.clone().unwrap_or_default();
    let top1 = p
        .top_k
        .iter()
        .reduce(|best, l| if l.score > best.score { l } else { best })
        .map(|l| Label { class_id: l.class_id, name: l.name.clone(), score: l.score });
    let key = StreamKey {
        camera_id: p.camera_id.clone(),
        model_name: model.name,
        model_version: model.version,
    };
    let capture_time_ms = p.capture_time.as_ref().map_or(0, lookout_proto::timestamp_millis);
    Ok((key, Observation { sequence: p.frame_sequence, capture_time_ms, top1 }))
}

/// The event published for a stored change.
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
        }),
        time: Some(lookout_proto::timestamp_from_millis(c.capture_time_ms)),
        change_id: c.change_id,
        snapshot_missing: c.snapshot_missing,
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
            model: Some(ModelRef { name: "m".into(), version: "2".into() }),
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
        let huge = Prediction { camera_id: "x".into(), frame_sequence: u64::MAX, ..p };
        assert!(observation(&huge).is_err());
    }
}
