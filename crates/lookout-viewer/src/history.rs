//! Each camera's history: the changes the recorder published, with their thumbnails, newest
//! first. The newest [`HISTORY_PER_CAMERA`] of each camera are kept in memory; at start the
//! viewer reads the last `--history` changes back from the changes topic, so the history
//! survives a restart, and older ones are read from the topic when a page scrolls to them.
//! A camera's changes are keyed by its id, so they are all in one partition of the topic, in
//! order: an offset in that partition is a position in the camera's history.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use bytes::Bytes;
use lookout_bus::{Bus, Start, topics};
use lookout_proto::v1::PredictionChange;
use tracing::warn;

use crate::state::ChangeInfo;

/// Changes kept in memory per camera.
pub const HISTORY_PER_CAMERA: usize = 100;
/// Messages of the changes topic read back per step when a page asks for older changes.
const READ_BACK: i64 = 500;
/// Steps a request for older changes may take (so at most this × [`READ_BACK`] messages).
const READ_BACK_STEPS: usize = 8;
/// How long one step may wait for its messages.
const READ_WAIT: Duration = Duration::from_secs(5);

/// A change in a camera's history, with its thumbnail.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) info: ChangeInfo,
    pub(crate) thumbnail: Option<Bytes>,
}

/// The cameras' histories; part of the viewer's state.
#[derive(Debug)]
pub(crate) struct History {
    cameras: Mutex<HashMap<String, VecDeque<Entry>>>,
    max_cameras: usize,
    source: Mutex<Option<Bus>>,
}

impl History {
    pub(crate) fn new(max_cameras: usize) -> Self {
        Self { cameras: Mutex::default(), max_cameras, source: Mutex::default() }
    }

    /// Older changes are read from the changes topic through `bus`.
    pub(crate) fn read_from(&self, bus: Bus) {
        *self.source.lock().expect("not poisoned") = Some(bus);
    }

    /// Keeps a change; one already kept (same camera and offset) is ignored.
    pub(crate) fn insert(&self, info: ChangeInfo, thumbnail: Option<Bytes>) {
        let mut cameras = self.cameras.lock().expect("not poisoned");
        if !cameras.contains_key(&info.camera) && cameras.len() >= self.max_cameras {
            // The camera whose newest change is the oldest makes room.
            let quietest = cameras
                .iter()
                .min_by_key(|(_, h)| h.back().and_then(|e| e.info.time_ms).unwrap_or(i64::MIN))
                .map(|(id, _)| id.clone());
            if let Some(id) = quietest {
                cameras.remove(&id);
            }
        }
        let history = cameras.entry(info.camera.clone()).or_default();
        // Offsets only grow within a partition; a re-read one goes where it belongs.
        let at = history.partition_point(|e| e.info.offset < info.offset);
        if history.get(at).is_some_and(|e| e.info.offset == info.offset) {
            return;
        }
        history.insert(at, Entry { info, thumbnail });
        while history.len() > HISTORY_PER_CAMERA {
            history.pop_front();
        }
    }

    /// Up to `limit` changes of `camera` before offset `before` (all when `None`), newest
    /// first: from memory, then from the changes topic when memory has too few.
    pub(crate) async fn page(
        &self,
        camera: &str,
        before: Option<i64>,
        limit: usize,
    ) -> (Vec<ChangeInfo>, bool) {
        let (mut out, oldest) = {
            let cameras = self.cameras.lock().expect("not poisoned");
            let Some(history) = cameras.get(camera) else { return (Vec::new(), false) };
            let out: Vec<ChangeInfo> = history
                .iter()
                .rev()
                .filter(|e| before.is_none_or(|b| e.info.offset < b))
                .take(limit)
                .map(|e| e.info.clone())
                .collect();
            (out, history.front().map(|e| (e.info.partition, e.info.offset)))
        };
        let Some((partition, oldest)) = oldest else { return (out, false) };
        if out.len() < limit {
            let from = out.last().map_or(before.unwrap_or(oldest).min(oldest), |c| c.offset);
            let (older, more) = self.read_back(camera, partition, from, limit - out.len()).await;
            out.extend(older.into_iter().map(|e| e.info));
            return (out, more);
        }
        let more = out.last().is_some_and(|c| c.offset > 0);
        (out, more)
    }

    /// The thumbnail of `camera`'s change at `offset` of `partition`: from memory, else read
    /// from the changes topic.
    pub(crate) async fn thumbnail(
        &self,
        camera: &str,
        partition: i32,
        offset: i64,
    ) -> Option<Bytes> {
        {
            let cameras = self.cameras.lock().expect("not poisoned");
            if let Some(e) = cameras.get(camera).and_then(|h| {
                h.iter().find(|e| e.info.partition == partition && e.info.offset == offset)
            }) {
                return e.thumbnail.clone();
            }
        }
        let bus = self.source.lock().expect("not poisoned").clone()?;
        let topic = bus.topic_name(topics::CHANGES.name());
        let raw = bus.fetcher(&topic).fetch(partition, offset).await.ok()??;
        let change = raw.decode::<PredictionChange>().ok()?.message;
        (change.camera_id == camera && !change.thumbnail.is_empty()).then_some(change.thumbnail)
    }

    /// Changes of `camera` before `before` in `partition`, newest first, read from the topic
    /// backwards, and whether older ones may exist.
    async fn read_back(
        &self,
        camera: &str,
        partition: i32,
        before: i64,
        limit: usize,
    ) -> (Vec<Entry>, bool) {
        let Some(bus) = self.source.lock().expect("not poisoned").clone() else {
            return (Vec::new(), false);
        };
        let topic = bus.topic_name(topics::CHANGES.name());
        let mut out = Vec::new();
        let mut end = before;
        for _ in 0..READ_BACK_STEPS {
            if end <= 0 || out.len() >= limit {
                break;
            }
            let start = (end - READ_BACK).max(0);
            let reader = bus
                .reader(&topic)
                .partitions([partition])
                .start(Start::Offset(start))
                .open(&tokio_util::sync::CancellationToken::new())
                .await;
            let reader = match reader {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "cannot read older changes");
                    break;
                }
            };
            // The partition may have dropped old messages: read from where it starts.
            let first = reader.starts().first().map_or(start, |s| s.offset);
            let mut step = Vec::new();
            let mut at = first;
            while at < end {
                let Ok(Ok(raw)) = tokio::time::timeout(READ_WAIT, reader.recv()).await else {
                    break;
                };
                at = raw.offset + 1;
                if raw.offset >= end {
                    break;
                }
                let Ok(incoming) = raw.decode::<PredictionChange>() else { continue };
                if incoming.message.camera_id == camera {
                    let thumbnail =
                        Some(incoming.message.thumbnail.clone()).filter(|t: &Bytes| !t.is_empty());
                    let info = ChangeInfo::of(&incoming.message, raw.partition, raw.offset);
                    step.push(Entry { info, thumbnail });
                }
            }
            step.reverse();
            out.extend(step);
            // At the partition's start (or past what it still holds) there is nothing older.
            if first == 0 || first > start {
                end = 0;
                break;
            }
            end = first;
        }
        // Older ones exist when the read stopped before the partition's start, or found more
        // than asked for.
        let more = end > 0 || out.len() > limit;
        out.truncate(limit);
        (out, more)
    }
}
