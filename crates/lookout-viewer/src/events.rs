//! `GET /api/events`: server-sent events, JSON, fanned out from one bounded broadcast channel.
//!
//! Each event is serialised once for every client ([`crate::Event`]). A client too slow to
//! keep up with the channel's buffer skips the events it missed and gets an SSE comment saying
//! how many; it never holds an unbounded queue and never slows the others.

use std::{convert::Infallible, time::SystemTime};

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::{Stream, stream};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use crate::{Event, metrics as m, mjpeg::ClientGuard};

struct Client {
    events: broadcast::Receiver<Event>,
    shutdown: CancellationToken,
    hello: bool,
    _guard: ClientGuard,
}

/// The SSE response body for one client, ending when `shutdown` is cancelled.
pub(crate) fn sse(
    events: broadcast::Receiver<Event>,
    guard: ClientGuard,
    shutdown: CancellationToken,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let client = Client { events, shutdown, hello: true, _guard: guard };
    let stream = stream::unfold(client, |mut client| async move {
        if std::mem::take(&mut client.hello) {
            // The viewer's clock, so the page can measure latency against it.
            let hello =
                format!(r#"{{"server_ms":{}}}"#, lookout_proto::unix_millis(SystemTime::now()));
            return Some((Ok(SseEvent::default().event("hello").data(hello)), client));
        }
        let received = tokio::select! {
            biased;
            () = client.shutdown.cancelled() => return None,
            r = client.events.recv() => r,
        };
        let event = match received {
            Ok(e) => SseEvent::default().event(e.kind).data(&*e.data),
            Err(RecvError::Lagged(n)) => {
                metrics::counter!(m::EVENTS_SKIPPED).increment(n);
                SseEvent::default().comment(format!("skipped {n} events"))
            }
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), client))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
