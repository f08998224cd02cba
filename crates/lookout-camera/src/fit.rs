//! Frames that fit the producer's message limit.
//!
//! A frame whose JPEG would make a message larger than the producer's `message.max.bytes`
//! (ordinary 12-megapixel photos are 1–5 MB; librdkafka's default limit is 1 MB) is encoded
//! again, smaller, by [`jpeg::shrink`]: lower quality first, then scaled down. The first such
//! frame of a run is logged as a warning, later ones at debug level; each is counted in
//! [`FRAMES_SHRUNK`](crate::metrics::FRAMES_SHRUNK). Only a frame that cannot fit even at
//! [`jpeg::MIN_SHRUNK_SIDE`] pixels (or that does not decode) is dropped, with a warning and
//! a count by reason.
//!
//! Shrinking runs on the blocking pool. The last frame's result is kept, so a slideshow that
//! sends one photo again and again shrinks it once.

use std::sync::Arc;

use bytes::Bytes;
use tracing::{debug, warn};

use crate::{
    jpeg::{self, Jpeg, Shrunk},
    metrics::{DropReason, Stats},
    publish::Throttle,
    source::Captured,
};

/// Bytes of a frame message that are not the JPEG, plus the record's key and headers (which
/// librdkafka counts against `message.max.bytes` too), with room to spare: the camera id
/// comes on top, twice (in the message and as the key).
pub const MESSAGE_OVERHEAD: usize = 512;

/// What became of the last frame shrunk: its JPEG as captured, and the result.
#[derive(Debug)]
struct Last {
    input: Bytes,
    output: Option<Jpeg>,
}

/// Makes each frame fit the producer's message limit, or drops it.
#[derive(Debug)]
pub(crate) struct Fitter {
    camera: String,
    limit: usize,
    budget: usize,
    quality: u8,
    stats: Arc<Stats>,
    warned: bool,
    drops: Throttle,
    last: Option<Last>,
}

impl Fitter {
    /// A fitter for messages of at most `limit` bytes (the producer's `message.max.bytes`),
    /// shrinking from `quality` (`--jpeg-quality`) down.
    pub(crate) fn new(camera: &str, limit: usize, quality: u8, stats: Arc<Stats>) -> Self {
        Self {
            camera: camera.to_owned(),
            limit,
            budget: jpeg_budget(limit, camera),
            quality,
            stats,
            warned: false,
            drops: Throttle::default(),
            last: None,
        }
    }

    /// The frame, shrunk if it has to be; `None` when it cannot fit (counted and logged).
    pub(crate) async fn fit(&mut self, frame: Captured) -> Option<Captured> {
        if frame.jpeg.len() <= self.budget {
            return Some(frame);
        }
        let repeated = self.last.as_ref().is_some_and(|l| same(&l.input, &frame.jpeg));
        if !repeated {
            let output = self.shrink(&frame).await;
            self.last = Some(Last { input: frame.jpeg.clone(), output });
        }
        let output = self.last.as_ref().and_then(|l| l.output.clone());
        match output {
            Some(jpeg) => {
                self.stats.shrunk();
                Some(Captured::new(jpeg, frame.mark))
            }
            None => {
                self.stats.dropped(DropReason::TooLarge);
                None
            }
        }
    }

    /// Shrinks one frame on the blocking pool and logs what happened.
    async fn shrink(&mut self, frame: &Captured) -> Option<Jpeg> {
        let (data, budget, quality) = (frame.jpeg.clone(), self.budget, self.quality);
        let shrunk = tokio::task::spawn_blocking(move || jpeg::shrink(&data, budget, quality))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let (camera, limit, size) = (&self.camera, self.limit, frame.jpeg.len());
        let (width, height) = (frame.width, frame.height);
        match shrunk {
            Ok(Shrunk::Fits { jpeg, quality }) => {
                let (new_width, new_height, new_size) = (jpeg.width, jpeg.height, jpeg.data.len());
                if std::mem::replace(&mut self.warned, true) {
                    debug!(camera_id = %camera, size, limit, width, height, new_size, new_width, new_height, quality, "frame shrunk to fit the message limit");
                } else {
                    warn!(
                        camera_id = %camera,
                        size,
                        limit,
                        width,
                        height,
                        new_size,
                        new_width,
                        new_height,
                        quality,
                        "frames are larger than the producer's message.max.bytes allows; \
                         encoding them again at a lower quality or size (logged once; set \
                         --jpeg-quality or --max-width/--max-height to choose how)",
                    );
                }
                Some(jpeg)
            }
            Ok(Shrunk::CannotFit { smallest }) => {
                if let Some(also_dropped) = self.drops.ready() {
                    warn!(camera_id = %camera, size, limit, smallest, width, height, also_dropped, "frame does not fit the message limit even at the smallest size tried and was dropped: raise message.max.bytes on the producer and the brokers");
                }
                None
            }
            Err(error) => {
                if let Some(also_dropped) = self.drops.ready() {
                    warn!(camera_id = %camera, size, limit, error = %error, also_dropped, "frame over the message limit could not be decoded to shrink it and was dropped");
                }
                None
            }
        }
    }
}

/// The JPEG bytes a frame of `camera` may have for its message to stay within `limit`.
pub(crate) fn jpeg_budget(limit: usize, camera: &str) -> usize {
    limit.saturating_sub(MESSAGE_OVERHEAD + 2 * camera.len())
}

/// Whether two frames are the same bytes (a slideshow sends one buffer again and again).
fn same(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_room_for_the_rest_of_the_message() {
        assert_eq!(jpeg_budget(1_000_000, "cam"), 1_000_000 - 512 - 6);
        assert_eq!(jpeg_budget(100, "cam"), 0);
    }
}
