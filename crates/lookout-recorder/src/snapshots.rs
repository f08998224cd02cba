//! Snapshots: the frames a change may still need, kept per camera in a bounded buffer.
//!
//! The recorder reads the frames topic without a consumer group: it assigns itself every
//! partition and starts, at each start, from the capture time of the oldest frame its streams
//! may still need (read from the database), so a restarted recorder sees again the frames of
//! the predictions it is about to re-handle. A consumer group would not do: its members would
//! share the partitions (each replica seeing only part of each camera's frames, which are
//! spread over all of them), and committed frame offsets say nothing about which predictions
//! are done. A live subscription would start at the newest frame and miss those a restart
//! re-handles.
//!
//! Each camera keeps the frames at or above the lowest sequence its detectors may still record
//! a change at ([`crate::detector::Detector::needed_from`]): the bytes of at most `capacity` of
//! them, and beyond that only their position (partition, offset), from which a change's frame
//! is fetched again when it is needed. So a camera whose predictions lag behind the others'
//! (a replay after a restart or an outage) never holds up the reader. Only when a camera's
//! index is full too does the reader wait for that camera's predictions to move on (this is
//! what keeps the snapshots of a long database outage: predictions stop, so frames stop),
//! unless the camera is stalled (the recorder went on handling other cameras' predictions for
//! the stall time, with the database usable, but none of this camera's); then its oldest
//! positions are dropped.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI32, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use lookout_bus::{Bus, Fetcher, Start};
use lookout_proto::{topics, v1::Frame};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{RecorderError, health::Health, metrics as m, store::StreamKey};

const FULL_WAIT: Duration = Duration::from_millis(10);
const FRAME_POLL: Duration = Duration::from_millis(5);

/// What happened to an offered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Buffered.
    Stored,
    /// The camera's buffer is full: only the frame's position was kept, to fetch it again
    /// from Kafka should a change need it.
    Indexed,
    /// Older than anything the camera's detectors may still need.
    NotNeeded,
    /// The camera's buffer and index are full of frames still needed: offer it again later.
    Full,
}

#[derive(Debug)]
struct CameraFrames {
    frames: BTreeMap<u64, Bytes>,
    /// Frames still needed whose bytes did not fit: (partition, offset) by sequence.
    index: BTreeMap<u64, (i32, i64)>,
    /// Per model stream: the lowest sequence it may still need (`None`: any).
    needed: HashMap<(String, String), Option<u64>>,
    /// Per frames partition: the highest sequence of this camera read there.
    seen: HashMap<i32, u64>,
    /// When this camera's predictions last moved on (or its first frame came).
    last_progress: Instant,
}

impl CameraFrames {
    fn new(now: Instant) -> Self {
        Self {
            frames: BTreeMap::new(),
            index: BTreeMap::new(),
            needed: HashMap::new(),
            seen: HashMap::new(),
            last_progress: now,
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

    fn evict_unneeded(&mut self) -> usize {
        let from = self.needed_from();
        let keep = self.frames.split_off(&from);
        let evicted = self.frames.len();
        self.frames = keep;
        self.index = self.index.split_off(&from);
        evicted
    }
}

#[derive(Debug)]
struct Cameras {
    by_id: HashMap<String, CameraFrames>,
    /// When any stream's predictions last moved on.
    last_activity: Instant,
    /// Since when the reader has been positioned on the frames topic.
    reading_since: Option<Instant>,
    /// Per frames partition: when the reader last took a frame from it.
    last_read: HashMap<i32, Instant>,
}

/// Where the reader stands relative to a frame not (or no longer) buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whereabouts {
    /// The reader has not started yet.
    NotReading,
    /// The reader read past it: it will not come.
    Passed,
    /// Not read yet; the frame's partition gave nothing new for this long.
    Ahead { idle: Duration },
}

/// Recent frames per camera, by sequence.
#[derive(Debug)]
pub struct FrameBuffer {
    cameras: Mutex<Cameras>,
    capacity: usize,
    index_capacity: usize,
    fetcher: std::sync::OnceLock<Arc<Fetcher>>,
    stall: Duration,
    partitions: AtomicI32,
    health: Health,
}

impl FrameBuffer {
    /// A buffer of at most `capacity` frames per camera, and the positions of at most
    /// `index_capacity` more; a stalled camera loses its oldest positions first.
    pub(crate) fn new(
        capacity: usize,
        index_capacity: usize,
        stall: Duration,
        health: Health,
    ) -> Self {
        Self {
            cameras: Mutex::new(Cameras {
                by_id: HashMap::new(),
                last_activity: Instant::now(),
                reading_since: None,
                last_read: HashMap::new(),
            }),
            capacity: capacity.max(1),
            index_capacity,
            fetcher: std::sync::OnceLock::new(),
            stall,
            partitions: AtomicI32::new(0),
            health,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cameras> {
        self.cameras.lock().expect("not poisoned")
    }

    /// Offers a frame read at `offset` of `partition` of the frames topic.
    pub fn offer(&self, frame: &Frame, partition: i32, offset: i64) -> Offered {
        let now = Instant::now();
        let mut cameras = self.lock();
        let last_activity = cameras.last_activity;
        let camera =
            cameras.by_id.entry(frame.camera_id.clone()).or_insert_with(|| CameraFrames::new(now));
        let outcome = if frame.sequence < camera.needed_from() {
            Offered::NotNeeded
        } else if camera.frames.contains_key(&frame.sequence)
            || camera.index.contains_key(&frame.sequence)
        {
            Offered::Stored
        } else if camera.frames.len() < self.capacity {
            camera.frames.insert(frame.sequence, frame.data.clone());
            Offered::Stored
        } else {
            if camera.index.len() >= self.index_capacity {
                // Stalled: the recorder went on handling other streams' predictions for the
                // stall time, but not this camera's. (While nothing is handled at all, during
                // a rebalance, a restart or a database outage, nothing is stalled.)
                let stalled = self.health.database_ok()
                    && last_activity.saturating_duration_since(camera.last_progress) >= self.stall;
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
        cameras.last_read.insert(partition, now);
        outcome
    }

    /// Records that a stream's predictions moved on: frames below `needed_from` are dropped.
    pub(crate) fn progress(&self, key: &StreamKey, needed_from: Option<u64>) {
        let now = Instant::now();
        let mut cameras = self.lock();
        cameras.last_activity = now;
        let camera =
            cameras.by_id.entry(key.camera_id.clone()).or_insert_with(|| CameraFrames::new(now));
        camera.needed.insert((key.model_name.clone(), key.model_version.clone()), needed_from);
        camera.last_progress = now;
        let evicted = camera.evict_unneeded();
        if evicted > 0 {
            metrics::counter!(m::FRAMES_RELEASED).increment(evicted as u64);
        }
    }

    /// The frame, when buffered.
    pub fn get(&self, camera: &str, sequence: u64) -> Option<Bytes> {
        self.lock().by_id.get(camera).and_then(|c| c.frames.get(&sequence).cloned())
    }

    /// Where a frame read but not kept is in the frames topic: (partition, offset).
    pub fn position(&self, camera: &str, sequence: u64) -> Option<(i32, i64)> {
        self.lock().by_id.get(camera).and_then(|c| c.index.get(&sequence).copied())
    }

    /// Fetches a frame read but not kept again from Kafka, if it is still there and is the
    /// one expected.
    async fn fetch(
        &self,
        camera: &str,
        sequence: u64,
        (partition, offset): (i32, i64),
    ) -> Option<Bytes> {
        let fetcher = self.fetcher.get()?.clone();
        let fetched = match fetcher.fetch(partition, offset).await {
            Ok(m) => m?,
            Err(e) => {
                debug!(partition, offset, error = %e, "cannot fetch a frame again");
                return None;
            }
        };
        let frame = fetched.decode::<Frame>().ok()?.message;
        if frame.camera_id != camera || frame.sequence != sequence {
            return None;
        }
        metrics::counter!(m::FRAMES_FETCHED).increment(1);
        Some(frame.data)
    }

    /// Where the reader stands relative to a frame.
    fn whereabouts(&self, camera: &str, sequence: u64) -> Whereabouts {
        let partitions = self.partitions.load(Ordering::Relaxed);
        let probe = Frame { camera_id: camera.to_owned(), sequence, ..Default::default() };
        let cameras = self.lock();
        let (Some(since), Some(partition)) =
            (cameras.reading_since, topics::FRAMES.partition_for(&probe, partitions))
        else {
            return Whereabouts::NotReading;
        };
        // One camera's frames are in sequence order within a partition.
        let seen = cameras.by_id.get(camera).and_then(|c| c.seen.get(&partition));
        if seen.is_some_and(|seen| *seen >= sequence) {
            return Whereabouts::Passed;
        }
        let last = cameras.last_read.get(&partition).copied().unwrap_or(since);
        Whereabouts::Ahead { idle: last.elapsed() }
    }

    /// Whether the reader has gone past where the frame would be, so it will not come.
    pub fn passed(&self, camera: &str, sequence: u64) -> bool {
        self.whereabouts(camera, sequence) == Whereabouts::Passed
    }

    /// Waits for a frame that is not buffered yet while the reader may still bring it: until
    /// the reader has gone past it, or the frame's partition brought nothing for `timeout`
    /// (the reader is at its end), or at most `4 × timeout` of reading (the reader is stuck).
    /// A reader that has not started yet is still finding where to start, which takes seconds
    /// after a restart on a loaded machine: that is waited for up to `20 × timeout`. `None`
    /// when the frame did not come.
    pub async fn wait_for(&self, camera: &str, sequence: u64, timeout: Duration) -> Option<Bytes> {
        let start_cap = Instant::now() + timeout * 20;
        let mut reading_cap = None;
        loop {
            if let Some(frame) = self.get(camera, sequence) {
                return Some(frame);
            }
            if let Some(at) = self.position(camera, sequence) {
                return self.fetch(camera, sequence, at).await;
            }
            let cap = match self.whereabouts(camera, sequence) {
                Whereabouts::Passed => return None,
                Whereabouts::Ahead { idle } if idle >= timeout => return None,
                Whereabouts::Ahead { .. } => {
                    *reading_cap.get_or_insert_with(|| Instant::now() + timeout * 4)
                }
                Whereabouts::NotReading => start_cap,
            };
            if Instant::now() >= cap {
                return None;
            }
            tokio::time::sleep(FRAME_POLL).await;
        }
    }

    /// Frames buffered over all cameras.
    pub fn len(&self) -> usize {
        self.lock().by_id.values().map(|c| c.frames.len()).sum()
    }

    /// Whether no frame is buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The reader is positioned on a frames topic of `n` partitions.
    fn reading(&self, n: i32) {
        self.partitions.store(n, Ordering::Relaxed);
        self.lock().reading_since = Some(Instant::now());
    }
}

/// Reads the frames topic into `buffer` from `start_ms` (Kafka timestamp, Unix milliseconds;
/// `None`: the oldest retained frame) until `shutdown`.
pub(crate) async fn read_frames(
    bus: Bus,
    buffer: Arc<FrameBuffer>,
    start_ms: Option<i64>,
    shutdown: CancellationToken,
) -> Result<(), RecorderError> {
    let name = bus.topic_name(topics::FRAMES.name());
    let start = start_ms.map_or(Start::Beginning, Start::Time);
    let reader = bus
        .reader(&name)
        .start(start)
        .wait_for_topic()
        // Small fetches keep the partitions' reading positions close to one another.
        .with_opt("max.partition.fetch.bytes", "262144")
        .open(&shutdown)
        .await?;
    let Some(reader) = reader else { return Ok(()) };
    let partitions = reader.starts().len() as i32;
    let _ = buffer.fetcher.set(Arc::new(bus.fetcher(&name)));
    buffer.reading(partitions);
    info!(topic = %name, partitions, start_ms, "reading frames for snapshots");

    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            r = reader.recv() => r,
        };
        let message = match received {
            Ok(m) => m,
            Err(e) => {
                warn!(topic = %name, error = %e, "frames reader error; librdkafka retries");
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
            match buffer.offer(&frame, partition, offset) {
                Offered::Stored => {
                    metrics::counter!(m::FRAMES, "outcome" => "buffered").increment(1);
                    break;
                }
                Offered::Indexed => {
                    metrics::counter!(m::FRAMES, "outcome" => "indexed").increment(1);
                    break;
                }
                Offered::NotNeeded => {
                    metrics::counter!(m::FRAMES, "outcome" => "not_needed").increment(1);
                    break;
                }
                Offered::Full => {
                    if !waited {
                        metrics::counter!(m::FRAME_BUFFER_WAITS).increment(1);
                        waited = true;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(FULL_WAIT) => {}
                    }
                }
            }
        }
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

    #[test]
    fn frames_below_what_is_needed_are_dropped() {
        let b = FrameBuffer::new(4, 4, Duration::from_secs(60), Health::for_tests(true));
        b.progress(&key("a"), Some(10));
        assert_eq!(b.offer(&frame("a", 9), 0, 0), Offered::NotNeeded);
        assert_eq!(b.offer(&frame("a", 10), 1, 0), Offered::Stored);
        assert!(b.get("a", 10).is_some());
        b.progress(&key("a"), Some(11));
        assert!(b.get("a", 10).is_none(), "released once no change can start there");
    }

    #[test]
    fn beyond_the_buffer_only_positions_are_kept() {
        let b = FrameBuffer::new(2, 100, Duration::from_secs(60), Health::for_tests(true));
        b.progress(&key("a"), Some(0));
        assert_eq!(b.offer(&frame("a", 1), 0, 10), Offered::Stored);
        assert_eq!(b.offer(&frame("a", 2), 1, 11), Offered::Stored);
        assert_eq!(b.offer(&frame("a", 3), 2, 12), Offered::Indexed);
        assert!(b.get("a", 3).is_none());
        assert_eq!(b.position("a", 3), Some((2, 12)));
        b.progress(&key("a"), Some(4));
        assert_eq!(b.position("a", 3), None, "released with the frames");
    }

    #[test]
    fn a_full_index_waits_for_predictions_unless_they_stalled() {
        let b = FrameBuffer::new(1, 1, Duration::from_millis(50), Health::for_tests(true));
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
        assert_eq!(b.position("a", 2), None);
        assert!(b.get("a", 1).is_some());
    }

    #[test]
    fn a_full_index_keeps_waiting_while_the_database_is_down() {
        let health = Health::for_tests(false);
        let b = FrameBuffer::new(1, 0, Duration::ZERO, health.clone());
        assert_eq!(b.offer(&frame("a", 1), 0, 0), Offered::Stored);
        b.progress(&key("b"), Some(0));
        assert_eq!(b.offer(&frame("a", 2), 0, 1), Offered::Full);
        health.set_database(true, "test");
        assert_eq!(b.offer(&frame("a", 2), 0, 1), Offered::Indexed);
    }

    #[tokio::test]
    async fn waiting_for_a_frame_lasts_while_the_reader_may_bring_it() {
        let b = FrameBuffer::new(8, 8, Duration::from_secs(60), Health::for_tests(true));
        let wait = Duration::from_millis(100);
        // Not reading yet (still finding where to start): waits up to 20 times the timeout.
        let started = Instant::now();
        assert_eq!(b.wait_for("a", 7, wait).await, None);
        assert!(started.elapsed() >= wait * 20);
        // Reading, and the frame comes.
        b.reading(6);
        let (got, ()) = tokio::join!(b.wait_for("a", 7, wait), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            b.offer(&frame("a", 7), 3, 0);
        });
        assert!(got.is_some());
        // Reading, its partition idle: gives up after the timeout.
        let started = Instant::now();
        assert_eq!(b.wait_for("a", 8, wait).await, None);
        assert!(started.elapsed() < wait * 4);
    }

    #[test]
    fn a_frame_is_known_gone_once_its_partition_went_past_it() {
        let b = FrameBuffer::new(8, 8, Duration::from_secs(60), Health::for_tests(true));
        b.reading(6);
        b.progress(&key("a"), Some(100));
        // Frames 100..112 are spread over 6 partitions; frame 103 never arrives.
        let p = |s: u64| topics::FRAMES.partition_for(&frame("a", s), 6).unwrap();
        assert!(!b.passed("a", 103));
        b.offer(&frame("a", 104), p(104), 0);
        assert!(!b.passed("a", 103), "another partition says nothing about 103");
        b.offer(&frame("a", 109), p(109), 1);
        assert_eq!(p(109), p(103));
        assert!(b.passed("a", 103), "its partition went on to 109");
    }
}
