//! `multipart/x-mixed-replace` bodies: one JPEG per part, from a camera's `watch` slot.
//!
//! The body is polled by the HTTP server only when the client's connection can take more
//! bytes, and each poll takes whatever frame is newest: a slow client skips ahead (moonfire-nvr
//! style), holds no queue, and costs the other clients nothing. The JPEG bytes are the shared
//! `Bytes` of the slot, never copied. Each part is followed at once by the next boundary, so
//! browsers show a frame as soon as it arrived instead of when the next one starts.

use std::{convert::Infallible, sync::Arc, time::SystemTime};

use axum::body::Body;
use bytes::Bytes;
use futures_util::{StreamExt as _, stream};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics as m,
    state::{ShownFrame, Slot},
};

/// The `Content-Type` of a stream.
pub(crate) const CONTENT_TYPE: &str = "multipart/x-mixed-replace; boundary=lookoutframe";
const OPENING: &[u8] = b"--lookoutframe\r\n";
const CLOSING: &[u8] = b"\r\n--lookoutframe\r\n";

/// Counts a connected client for as long as it lives.
#[derive(Debug)]
pub(crate) struct ClientGuard {
    kind: &'static str,
    _permit: OwnedSemaphorePermit,
}

impl ClientGuard {
    pub(crate) fn new(kind: &'static str, permit: OwnedSemaphorePermit) -> Self {
        metrics::counter!(m::CONNECTIONS, "kind" => kind).increment(1);
        metrics::gauge!(m::CLIENTS, "kind" => kind).increment(1.0);
        Self { kind, _permit: permit }
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        metrics::gauge!(m::CLIENTS, "kind" => self.kind).decrement(1.0);
    }
}

struct Client {
    frames: watch::Receiver<Slot>,
    shutdown: CancellationToken,
    first: bool,
    last_index: Option<u64>,
    guard: ClientGuard,
}

impl Client {
    /// The next frame to send, or `None` when the stream ends (shutdown, camera gone).
    async fn next_frame(&mut self) -> Option<Arc<ShownFrame>> {
        if std::mem::take(&mut self.first) {
            let current = self.frames.borrow_and_update().clone();
            if current.is_some() {
                return current;
            }
        }
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                changed = self.frames.changed() => changed.ok()?,
            }
            let current = self.frames.borrow_and_update().clone();
            if current.is_some() {
                return current;
            }
        }
    }

    fn account(&mut self, frame: &ShownFrame) {
        let kind = self.guard.kind;
        if let Some(last) = self.last_index {
            let skipped = frame.index.saturating_sub(last + 1);
            if skipped > 0 {
                metrics::counter!(m::FRAMES_SKIPPED, "kind" => kind).increment(skipped);
            }
        }
        self.last_index = Some(frame.index);
        metrics::counter!(m::PARTS_SENT, "kind" => kind).increment(1);
        if let Some(at) = frame.captured {
            let latency = SystemTime::now().duration_since(at).unwrap_or_default();
            metrics::histogram!(m::CAPTURE_TO_SHOWN_SECONDS).record(latency.as_secs_f64());
        }
    }
}

/// The part header of a frame.
fn part_header(frame: &ShownFrame) -> Bytes {
    Bytes::from(format!(
        "Content-Type: image/jpeg\r\nContent-Length: {}\r\nX-Lookout-Sequence: {}\r\n\r\n",
        frame.jpeg.len(),
        frame.sequence
    ))
}

/// A stream body of the frames `frames` receives, until `shutdown`. The client holds
/// `guard` (its admission permit) for as long as the body lives.
pub(crate) fn body(
    frames: watch::Receiver<Slot>,
    guard: ClientGuard,
    shutdown: CancellationToken,
) -> Body {
    let client = Client { frames, shutdown, first: true, last_index: None, guard };
    let parts = stream::unfold(client, |mut client| async move {
        let frame = client.next_frame().await?;
        client.account(&frame);
        Some((frame, client))
    })
    .flat_map(|frame| {
        stream::iter([
            Ok::<_, Infallible>(part_header(&frame)),
            Ok(frame.jpeg.clone()),
            Ok(Bytes::from_static(CLOSING)),
        ])
    });
    let opening = stream::iter([Ok::<_, Infallible>(Bytes::from_static(OPENING))]);
    Body::from_stream(opening.chain(parts))
}
