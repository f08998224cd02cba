//! Snapshots: the JPEG stored with each change, and the whole rule for when a change is
//! stored without one.
//!
//! **Where frames come from.** The recorder reads the frames topic without a consumer group,
//! through the bus's reader by position: every partition, from the capture time of the oldest
//! frame its streams may still need (read from the database at start, less a margin), so a
//! restarted recorder sees again the frames of the predictions it is about to handle again. A
//! consumer group would not do: its members would share the partitions (each replica seeing
//! only part of each camera's frames, which are spread over all of them). The recorder starts
//! consuming predictions only once this reader is positioned.
//!
//! **What is kept.** Per camera, the frames at or above the lowest sequence its streams may
//! still record a change at ([`crate::detector::Detector::needed_from`]): the bytes of at most
//! `per_camera` of them, within a byte budget over all cameras; beyond that only their
//! position (partition, offset), at most `index_per_camera`. When a camera's positions are full
//! of frames still needed, the reader waits for that camera's predictions to move on (woken by
//! them), unless the camera is stalled (other cameras' predictions moved on for the stall time
//! with the database usable, but not this camera's): then its oldest positions go. A camera
//! with no frame and no prediction for `idle` is forgotten.
//!
//! **The rule** ([`Snapshots::take`]). A change's snapshot is the frame it starts at:
//! 1. in the buffer: taken;
//! 2. read but not kept: fetched again from Kafka by its position;
//! 3. not read yet, while the reader may still bring it (it has not read past the frame's
//!    place in its partition): waited for, woken by the reader, never polling and never
//!    holding a stream, until `--snapshot-wait` after the change was decided;
//! 4. otherwise the change is stored without it (`snapshot_missing`), and why is counted
//!    (`lookout_recorder_snapshots_missing_total{reason}`) and logged: the reader went past the
//!    frame's place (the frame was never published, or retention dropped it), the wait ran
//!    out, or the fetch found nothing.
//!
//! One camera's frames are in sequence order within a partition, and a frame's partition is a
//! function of its camera and sequence ([`topics::FRAMES`]), so "the reader went past it" is
//! exact: the reader took a later frame of the camera from that partition.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use bytes::Bytes;
use lookout_bus::{Bus, Fetcher, Start};
use lookout_proto::{topics, v1::Frame};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{RecorderError, health::Health, metrics as m, store::StreamKey};

/// Limits of the frame buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Frames whose bytes are kept per camera.
    pub per_camera: usize,
    /// Bytes of frames kept over all cameras.
    pub budget_bytes: usize,
    /// Positions of frames not kept, per camera.
    pub index_per_camera: usize,
    /// How long a change waits for a frame the reader may still bring.
    pub wait: Duration,
    /// A camera whose predictions did not move on for this long, while others' did, is stalled.
    pub stall: Duration,
    /// A camera with no frame and no prediction for this long is forgotten.
    pub idle: Duration,
}

/// A change's snapshot, or why it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshot {
    /// The frame's JPEG.
    Frame(Bytes),
    /// No frame, for this reason.
    Missing(Missing),
}

impl Snapshot {
    /// The JPEG, if there is one.
    pub fn into_bytes(self) -> Option<Bytes> {
        match self {
            Self::Frame(b) => Some(b),
            Self::Missing(_) => None,
        }
    }
}

/// Why a change has no snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// The reader took a later frame of the camera from the frame's partition: it was never
    /// published, or retention dropped it before it was read.
    Passed,
    /// The reader did not bring it within `--snapshot-wait`.
    TimedOut,
    /// Its position was known but fetching it again found nothing (retention, or an error).
    NotFetched,
}

impl Missing {
    /// The metric label and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::TimedOut => "timed_out",
            Self::NotFetched => "not_fetched",
        }
    }
}

/// What the buffer can say without waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Now {
    /// Settled: the frame, or why there is none.
    Ready(Snapshot),
    /// Needs I/O or waiting: [`Snapshots::take`] will settle it.
    Later,
}

/// What happened to an offered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Buffered.
    Stored,
    /// Only the frame's position was kept, to fetch it again should a change need it.
    Indexed,
    /// Older than anything the camera's streams may still need.
    NotNeeded,
    /// The camera's buffer and positions are full of frames still needed: offer it again after
    /// its predictions moved on.
    Full,
}

/// Sizes, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sizes {
    /// Cameras known.
    pub cameras: usize,
    /// Frames whose bytes are kept.
    pub frames: usize,
    /// Their bytes.
    pub bytes: usize,
    /// Positions kept.
    pub positions: usize,
}

#[derive(Debug)]
struct Camera {
    frames: BTreeMap<u64, Bytes>,
    /// Frames still needed whose bytes were not kept: (partition, offset) by sequence.
    index: BTreeMap<u64, (i32, i64)>,
    /// Per model stream: the lowest sequence it may still need (`None`: any).
    needed: HashMap<(String, String), Option<u64>>,
    /// Per frames partition: the highest sequence of this camera read there.
    seen: HashMap<i32, u64>,
    /// When this camera's predictions last moved on (or its first frame came).
    last_progress: Instant,
    /// When a frame or a prediction of this camera last came.
    last_seen: Instant,
}

impl Camera {
    fn new(now: Instant) -> Self {
        Self {
            frames: BTreeMap::new(),
            index: BTreeMap::new(),
            needed: HashMap::new(),
            seen: HashMap::new(),
            last_progress: now,
            last_seen: now,
        }
    }

    fn needed_from(&self) -> u64 {
        let mut lowest = None;
        for n in self.needed.values() {
            match n {
                None => return 0,
                Some(n) => lowest = Some(lowest.map_or(*n, |l: u64| l.min(*n))),
            }
        }
        lowest.unwrap_or(0)
    }

    fn bytes(&self) -> usize {
        self.frames.values().map(Bytes::len).sum()
    }
}

#[derive(Debug)]
struct State {
    cameras: HashMap<String, Camera>,
    /// Bytes of frames kept over all cameras.
    bytes: usize,
    /// When any stream's predictions last moved on.
    last_activity: Instant,
    /// Partitions of the frames topic; 0 until the reader is positioned.
    partitions: i32,
}

/// Recent frames per camera, and the snapshot rule.
#[derive(Debug)]
pub struct Snapshots {
    config: SnapshotConfig,
    state: Mutex<State>,
    /// Bumped each time the reader takes a frame: what waiting changes wait on.
    read: watch::Sender<u64>,
    /// Notified each time predictions move on: what a reader waiting on a full camera waits on.
    progressed: Notify,
    fetcher: OnceLock<Fetcher>,
    health: Health,
}

impl Snapshots {
    /// An empty buffer.
    pub fn new(config: SnapshotConfig, health: Health) -> Self {
        Self {
            config: SnapshotConfig { per_camera: config.per_camera.max(1), ..config },
            state: Mutex::new(State {
                cameras: HashMap::new(),
                bytes: 0,
                last_activity: Instant::now(),
                partitions: 0,
            }),
            read: watch::Sender::new(0),
            progressed: Notify::new(),
            fetcher: OnceLock::new(),
            health,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }

    /// The limits.
    pub fn config(&self) -> &SnapshotConfig {
        &self.config
    }

    /// Offers a frame read at `offset` of `partition` of the frames topic.
    pub fn offer(&self, frame: &Frame, partition: i32, offset: i64) -> Offered {
        let now = Instant::now();
        let mut state = self.lock();
        let State { cameras, bytes, last_activity, .. } = &mut *state;
        let camera = cameras.entry(frame.camera_id.clone()).or_insert_with(|| Camera::new(now));
        camera.last_seen = now;
        let outcome = if frame.sequence < camera.needed_from() {
            Offered::NotNeeded
        } else if camera.frames.contains_key(&frame.sequence)
            || camera.index.contains_key(&frame.sequence)
        {
            Offered::Stored
        } else if camera.frames.len() < self.config.per_camera
            && *bytes + frame.data.len() <= self.config.budget_bytes
        {
            *bytes += frame.data.len();
            camera.frames.insert(frame.sequence, frame.data.clone());
            Offered::Stored
        } else {
            if camera.index.len() >= self.config.index_per_camera {
                // Stalled: other streams' predictions moved on for the stall time, but not
                // this camera's. (While nothing is handled at all, during a rebalance, a
                // restart or a database outage, nothing is stalled.)
                let stalled = self.health.database_ok()
                    && last_activity.saturating_duration_since(camera.last_progress)
                        >= self.config.stall;
                if !stalled {
                    return Offered::Full;
                }
                camera.index.pop_first();
                metrics::counter!(m::FRAMES_EVICTED).increment(1);
            }
            camera.index.insert(frame.sequence, (partition, offset));
            Offered::Indexed
        };
        let seen = camera.seen.entry(partition).or_insert(frame.sequence);
        *seen = (*seen).max(frame.sequence);
        drop(state);
        self.read.send_modify(|n| *n = n.wrapping_add(1));
        outcome
    }

    /// Records that a stream's predictions moved on: frames below `needed_from` are dropped.
    pub(crate) fn progress(&self, key: &StreamKey, needed_from: Option<u64>) {
        let now = Instant::now();
        let mut state = self.lock();
        state.last_activity = now;
        let State { cameras, bytes, .. } = &mut *state;
        let camera = cameras.entry(key.camera_id.clone()).or_insert_with(|| Camera::new(now));
        camera.needed.insert((key.model_name.clone(), key.model_version.clone()), needed_from);
        camera.last_progress = now;
        camera.last_seen = now;
        let from = camera.needed_from();
        let keep = camera.frames.split_off(&from);
        let released: usize = camera.frames.values().map(Bytes::len).sum();
        let evicted = camera.frames.len();
        camera.frames = keep;
        camera.index = camera.index.split_off(&from);
        *bytes -= released;
        drop(state);
        if evicted > 0 {
            metrics::counter!(m::FRAMES_RELEASED).increment(evicted as u64);
        }
        self.progressed.notify_waiters();
    }

    /// Forgets cameras with no frame and no prediction for the idle time; returns how many.
    pub fn forget_idle(&self) -> usize {
        let now = Instant::now();
        let mut state = self.lock();
        let idle = self.config.idle;
        let mut released = 0;
        let before = state.cameras.len();
        state.cameras.retain(|_, c| {
            let keep = now.saturating_duration_since(c.last_seen) < idle;
            if !keep {
                released += c.bytes();
            }
            keep
        });
        state.bytes -= released;
        before - state.cameras.len()
    }

    /// How much is kept.
    pub fn sizes(&self) -> Sizes {
        let state = self.lock();
        Sizes {
            cameras: state.cameras.len(),
            frames: state.cameras.values().map(|c| c.frames.len()).sum(),
            bytes: state.bytes,
            positions: state.cameras.values().map(|c| c.index.len()).sum(),
        }
    }

    /// What the buffer says of a frame without waiting or fetching.
    pub fn take_now(&self, camera: &str, sequence: u64) -> Now {
        let state = self.lock();
        let Some(c) = state.cameras.get(camera) else {
            return self.whereabouts(&state, camera, sequence);
        };
        if let Some(frame) = c.frames.get(&sequence) {
            return Now::Ready(Snapshot::Frame(frame.clone()));
        }
        if c.index.contains_key(&sequence) {
            return Now::Later;
        }
        self.whereabouts(&state, camera, sequence)
    }

    /// Whether a frame neither kept nor indexed may still come.
    fn whereabouts(&self, state: &State, camera: &str, sequence: u64) -> Now {
        let probe = Frame { camera_id: camera.to_owned(), sequence, ..Default::default() };
        let Some(partition) = topics::FRAMES.partition_for(&probe, state.partitions) else {
            return Now::Later;
        };
        let seen = state.cameras.get(camera).and_then(|c| c.seen.get(&partition));
        if seen.is_some_and(|seen| *seen >= sequence) {
            Now::Ready(Snapshot::Missing(Missing::Passed))
        } else {
            Now::Later
        }
    }

    /// The snapshot rule (see the module documentation): the frame from the buffer, fetched
    /// again by position, or waited for until `deadline` while the reader may still bring it.
    pub async fn take(
        &self,
        camera: &str,
        sequence: u64,
        deadline: tokio::time::Instant,
    ) -> Snapshot {
        let mut read = self.read.subscribe();
        loop {
            read.borrow_and_update();
            let position = {
                let state = self.lock();
                state.cameras.get(camera).and_then(|c| c.index.get(&sequence).copied())
            };
            if let Some((partition, offset)) = position {
                return self.fetch(camera, sequence, partition, offset).await;
            }
            if let Now::Ready(snapshot) = self.take_now(camera, sequence) {
                return snapshot;
            }
            tokio::select! {
                changed = read.changed() => if changed.is_err() {
                    return Snapshot::Missing(Missing::TimedOut);
                },
                () = tokio::time::sleep_until(deadline) => {
                    return Snapshot::Missing(Missing::TimedOut);
                }
            }
        }
    }

    /// [`Snapshots::take`] for several frames at once: those whose positions are known are
    /// fetched together (each partition read once), the others waited for side by side.
    pub async fn take_all(
        &self,
        wanted: &[(String, u64)],
        deadline: tokio::time::Instant,
    ) -> Vec<Snapshot> {
        let positions: Vec<Option<(i32, i64)>> = {
            let state = self.lock();
            wanted
                .iter()
                .map(|(camera, seq)| {
                    state.cameras.get(camera).and_then(|c| c.index.get(seq).copied())
                })
                .collect()
        };
        let known: Vec<(i32, i64)> = positions.iter().flatten().copied().collect();
        let mut fetched = match (self.fetcher.get(), known.is_empty()) {
            (Some(fetcher), false) => fetcher.fetch_many(&known).await.unwrap_or_else(|e| {
                debug!(error = %e, "cannot fetch frames again");
                HashMap::new()
            }),
            _ => HashMap::new(),
        };
        let mut out: Vec<Option<Snapshot>> = positions
            .iter()
            .zip(wanted)
            .map(|(position, (camera, sequence))| {
                let at = (*position)?;
                let frame = fetched.remove(&at).and_then(|m| m.decode::<Frame>().ok());
                Some(match frame {
                    Some(f)
                        if f.message.camera_id == *camera && f.message.sequence == *sequence =>
                    {
                        metrics::counter!(m::FRAMES_FETCHED).increment(1);
                        Snapshot::Frame(f.message.data)
                    }
                    _ => Snapshot::Missing(Missing::NotFetched),
                })
            })
            .collect();
        let waits = out
            .iter()
            .zip(wanted)
            .filter(|(s, _)| s.is_none())
            .map(|(_, (camera, seq))| self.take(camera, *seq, deadline));
        let mut waited = futures_util::future::join_all(waits).await.into_iter();
        for s in &mut out {
            if s.is_none() {
                *s = waited.next();
            }
        }
        out.into_iter().map(|s| s.unwrap_or(Snapshot::Missing(Missing::NotFetched))).collect()
    }

    /// Fetches a frame read but not kept again from Kafka, if it is still there and is the
    /// one expected.
    async fn fetch(&self, camera: &str, sequence: u64, partition: i32, offset: i64) -> Snapshot {
        let Some(fetcher) = self.fetcher.get() else {
            return Snapshot::Missing(Missing::NotFetched);
        };
        let fetched = match fetcher.fetch(partition, offset).await {
            Ok(Some(m)) => m,
            Ok(None) => return Snapshot::Missing(Missing::NotFetched),
            Err(e) => {
                debug!(partition, offset, error = %e, "cannot fetch a frame again");
                return Snapshot::Missing(Missing::NotFetched);
            }
        };
        match fetched.decode::<Frame>() {
            Ok(f) if f.message.camera_id == camera && f.message.sequence == sequence => {
                metrics::counter!(m::FRAMES_FETCHED).increment(1);
                Snapshot::Frame(f.message.data)
            }
            _ => Snapshot::Missing(Missing::NotFetched),
        }
    }

    /// Positions a reader on the frames topic from `start_ms` (Kafka timestamp, Unix ms;
    /// `None`: the oldest retained frame), waiting for the topic. `None` when shut down first.
    pub(crate) async fn open_reader(
        self: &Arc<Self>,
        bus: &Bus,
        start_ms: Option<i64>,
        shutdown: &CancellationToken,
    ) -> Result<Option<lookout_bus::Reader>, RecorderError> {
        let name = bus.topic_name(topics::FRAMES.name());
        let start = start_ms.map_or(Start::Beginning, Start::Time);
        let reader = bus
            .reader(&name)
            .start(start)
            .wait_for_topic()
            // Small fetches keep the partitions' reading positions close to one another.
            .with_opt("max.partition.fetch.bytes", "262144")
            .open(shutdown)
            .await?;
        let Some(reader) = reader else { return Ok(None) };
        let partitions = reader.starts().len() as i32;
        let _ = self.fetcher.set(bus.fetcher(&name));
        self.lock().partitions = partitions;
        info!(topic = %name, partitions, start_ms, "reading frames for snapshots");
        Ok(Some(reader))
    }

    /// Reads frames into the buffer until `shutdown`.
    pub(crate) async fn read_frames(
        self: Arc<Self>,
        reader: lookout_bus::Reader,
        shutdown: CancellationToken,
    ) -> Result<(), RecorderError> {
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                r = reader.recv() => r,
            };
            let message = match received {
                Ok(m) => m,
                Err(e) => {
                    warn!(topic = %reader.topic(), error = %e, "frames reader error; librdkafka retries");
                    continue;
                }
            };
            let Ok(frame) = message.decode::<Frame>().map(|i| i.message) else {
                metrics::counter!(m::FRAMES, "outcome" => "undecodable").increment(1);
                continue;
            };
            let (partition, offset) = (message.partition, message.offset);
            drop(message);
            let mut waited = false;
            loop {
                // Registered before offering, so progress made in between is not missed.
                let progressed = self.progressed.notified();
                let outcome = match self.offer(&frame, partition, offset) {
                    Offered::Stored => "buffered",
                    Offered::Indexed => "indexed",
                    Offered::NotNeeded => "not_needed",
                    Offered::Full => {
                        if !waited {
                            metrics::counter!(m::FRAME_BUFFER_WAITS).increment(1);
                            waited = true;
                        }
                        // Predictions moving on wake the reader; the stall time lets it evict.
                        tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            () = progressed => {}
                            () = tokio::time::sleep(self.config.stall) => {}
                        }
                        continue;
                    }
                };
                metrics::counter!(m::FRAMES, "outcome" => outcome).increment(1);
                break;
            }
        }
    }

    /// Marks the reader positioned on `n` partitions (tests).
    #[cfg(test)]
    fn reading(&self, n: i32) {
        self.lock().partitions = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(camera: &str, sequence: u64) -> Frame {
        Frame {
            camera_id: camera.into(),
            sequence,
            data: Bytes::from(sequence.to_le_bytes().to_vec()),
            ..Default::default()
        }
    }

    fn key(camera: &str) -> StreamKey {
        StreamKey { camera_id: camera.into(), model_name: "m".into(), model_version: "1".into() }
    }

    fn config(per_camera: usize, index_per_camera: usize, stall: Duration) -> SnapshotConfig {
        SnapshotConfig {
            per_camera,
            budget_bytes: 1 << 20,
            index_per_camera,
            wait: Duration::from_millis(100),
            stall,
            idle: Duration::from_secs(600),
        }
    }

    fn buffer(per_camera: usize, index_per_camera: usize, stall: Duration) -> Snapshots {
        Snapshots::new(config(per_camera, index_per_camera, stall), Health::for_tests(true))
    }

    fn got(s: &Snapshots, camera: &str, sequence: u64) -> Option<Bytes> {
        match s.take_now(camera, sequence) {
            Now::Ready(Snapshot::Frame(b)) => Some(b),
            _ => None,
        }
    }

    #[test]
    fn frames_below_what_is_needed_are_dropped() {
        let b = buffer(4, 4, Duration::from_secs(60));
        b.progress(&key("a"), Some(10));
        assert_eq!(b.offer(&frame("a", 9), 0, 0), Offered::NotNeeded);
        assert_eq!(b.offer(&frame("a", 10), 1, 0), Offered::Stored);
        assert!(got(&b, "a", 10).is_some());
        assert_eq!(b.sizes().bytes, 8);
        b.progress(&key("a"), Some(11));
        assert!(got(&b, "a", 10).is_none(), "released once no change can start there");
        assert_eq!(b.sizes(), Sizes { cameras: 1, frames: 0, bytes: 0, positions: 0 });
    }

    #[test]
    fn beyond_the_buffer_or_the_budget_only_positions_are_kept() {
        let b = buffer(2, 100, Duration::from_secs(60));
        b.progress(&key("a"), Some(0));
        assert_eq!(b.offer(&frame("a", 1), 0, 10), Offered::Stored);
        assert_eq!(b.offer(&frame("a", 2), 1, 11), Offered::Stored);
        assert_eq!(b.offer(&frame("a", 3), 2, 12), Offered::Indexed);
        assert_eq!(b.take_now("a", 3), Now::Later, "to be fetched");
        b.progress(&key("a"), Some(4));
        assert_eq!(b.sizes().positions, 0, "released with the frames");

        let tight = Snapshots::new(
            SnapshotConfig { budget_bytes: 16, ..config(100, 100, Duration::from_secs(60)) },
            Health::for_tests(true),
        );
        for (camera, seq) in [("a", 1), ("b", 1), ("c", 1)] {
            tight.offer(&frame(camera, seq), 0, seq as i64);
        }
        let sizes = tight.sizes();
        assert_eq!((sizes.frames, sizes.bytes, sizes.positions), (2, 16, 1), "the budget holds");
    }

    #[test]
    fn a_full_index_waits_for_predictions_unless_they_stalled() {
        let b = buffer(1, 1, Duration::from_millis(50));
        b.progress(&key("a"), Some(0));
        assert_eq!(b.offer(&frame("a", 1), 0, 0), Offered::Stored);
        assert_eq!(b.offer(&frame("a", 2), 0, 1), Offered::Indexed);
        assert_eq!(b.offer(&frame("a", 3), 0, 2), Offered::Full);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            b.offer(&frame("a", 3), 0, 2),
            Offered::Full,
            "nothing handled at all: not stalled"
        );
        b.progress(&key("b"), Some(0));
        assert_eq!(
            b.offer(&frame("a", 3), 0, 2),
            Offered::Indexed,
            "others went on: the oldest goes"
        );
        assert!(got(&b, "a", 1).is_some());
    }

    #[test]
    fn a_full_index_keeps_waiting_while_the_database_is_down() {
        let health = Health::for_tests(false);
        let b = Snapshots::new(config(1, 0, Duration::ZERO), health.clone());
        assert_eq!(b.offer(&frame("a", 1), 0, 0), Offered::Stored);
        b.progress(&key("b"), Some(0));
        assert_eq!(b.offer(&frame("a", 2), 0, 1), Offered::Full);
        health.set_database(true, "test");
        assert_eq!(b.offer(&frame("a", 2), 0, 1), Offered::Indexed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_waits_for_its_frame_until_the_reader_brings_it_or_passes_it() {
        let b = Arc::new(buffer(8, 8, Duration::from_secs(60)));
        b.reading(6);
        let deadline = || tokio::time::Instant::now() + Duration::from_secs(3);
        // The frame comes while the change waits: woken by the reader.
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.take("a", 7, deadline()).await }
        });
        tokio::task::yield_now().await;
        b.offer(&frame("a", 7), 3, 0);
        assert_eq!(waiting.await.unwrap(), Snapshot::Frame(frame("a", 7).data));
        // The reader goes past its place: missing at once, without waiting out the deadline.
        let p = |s: u64| topics::FRAMES.partition_for(&frame("a", s), 6).unwrap();
        let started = tokio::time::Instant::now();
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.take("a", 103, deadline()).await }
        });
        tokio::task::yield_now().await;
        b.offer(&frame("a", 104), p(104), 1);
        assert_eq!(p(109), p(103));
        b.offer(&frame("a", 109), p(109), 2);
        assert_eq!(waiting.await.unwrap(), Snapshot::Missing(Missing::Passed));
        assert_eq!(tokio::time::Instant::now(), started, "no time passed");
        // Nothing comes: the wait ends at the deadline.
        let started = tokio::time::Instant::now();
        assert_eq!(b.take("a", 200, deadline()).await, Snapshot::Missing(Missing::TimedOut));
        assert_eq!(tokio::time::Instant::now() - started, Duration::from_secs(3));
    }

    #[test]
    fn idle_cameras_are_forgotten() {
        let b = Snapshots::new(
            SnapshotConfig { idle: Duration::ZERO, ..config(8, 8, Duration::from_secs(60)) },
            Health::for_tests(true),
        );
        b.offer(&frame("a", 1), 0, 0);
        assert_eq!(b.sizes().cameras, 1);
        assert_eq!(b.forget_idle(), 1);
        assert_eq!(b.sizes(), Sizes::default());
    }
}
