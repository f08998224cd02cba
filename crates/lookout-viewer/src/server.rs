//! The HTTP server around [`app`](crate::app): HTTP/1.1 connections with limits a browser never
//! reaches and an idle or hostile client always does.
//!
//! - At most [`ServerLimits::max_connections`] connections are open; a connection beyond that
//!   is closed as soon as it is accepted (and counted), so half-open sockets cannot use up the
//!   process's file descriptors and the ones that are open leave room for new clients.
//! - A request's headers must arrive within [`ServerLimits::header_timeout`], counted from
//!   the connection's start or the end of its previous response (hyper's header-read timeout):
//!   a client that sends half a request, or opens a connection and says nothing, is closed.
//! - Request headers are at most [`MAX_HEADER_BYTES`] (431 beyond) in at most [`MAX_HEADERS`]
//!   fields; no route reads a request body.
//! - A write that makes no progress for [`ServerLimits::write_timeout`] (a client that stopped
//!   reading a stream) ends the connection, and with it the stream's client permit.
//!
//! A connection's slot is released before its socket is closed, so a client that sees the
//! connection end can count on the slot being free.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, warn};

use crate::metrics as m;

/// Largest request head (request line and headers) in bytes; larger ones get 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header fields in a request.
pub const MAX_HEADERS: usize = 64;
/// Pause after a failed `accept` (out of file descriptors, …) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Limits of the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections open at once; more are closed when accepted.
    pub max_connections: usize,
    /// Time a client has to send a request's headers.
    pub header_timeout: Duration,
    /// Time a write may wait for a client to take bytes.
    pub write_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(20),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then waits for the open
/// connections to finish (streams end on `shutdown` too).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    let mut refused_warned = false;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "cannot accept a connection; retrying shortly");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics::counter!(m::CONNECTIONS_REFUSED).increment(1);
            if !std::mem::replace(&mut refused_warned, true) {
                warn!(peer = %peer, max_connections = limits.max_connections, "connection limit reached; further connections are closed when accepted (logged once)");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(Connection::new(slot, stream, limits.write_timeout));
        let conn = http.serve_connection(io, TowerToHyperService::new(app.clone()));
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(peer = %peer, error = %e, timeout = e.is_timeout(), "connection ended");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// An accepted connection: the socket, its slot, and the write timeout.
#[derive(Debug)]
struct Connection {
    /// Released when the connection is shut down or dropped, before the socket closes
    /// (declared first, so dropped first).
    slot: Option<OwnedSemaphorePermit>,
    stream: TcpStream,
    write_timeout: Duration,
    /// Armed while a write waits for the client.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Connection {
    fn new(slot: OwnedSemaphorePermit, stream: TcpStream, write_timeout: Duration) -> Self {
        metrics::gauge!(m::OPEN_CONNECTIONS).increment(1.0);
        Self { slot: Some(slot), stream, write_timeout, stalled: None }
    }

    /// Turns a write that is still pending after the timeout into an error.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.write_timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stalled.as_mut().poll(cx));
        metrics::counter!(m::WRITE_TIMEOUTS).increment(1);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took no bytes for {timeout:?}"),
        )))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        metrics::gauge!(m::OPEN_CONNECTIONS).decrement(1.0);
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.slot = None;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}
