//! The HTTP server around [`app`](crate::app): HTTP/1.1 and HTTP/2 connections, in the clear
//! or over TLS, with limits a browser never reaches and an idle or hostile client always does.
//!
//! - **Protocols.** In the clear, a connection that starts with HTTP/2's preface is served as
//!   HTTP/2 (h2c with prior knowledge: what a reverse proxy in front speaks), any other as
//!   HTTP/1.1. With TLS ([`TlsConfig`], `--tls-cert`), ALPN chooses: `h2` (what browsers pick,
//!   so one connection carries every camera's stream), else HTTP/1.1.
//! - At most [`ServerLimits::max_connections`] connections are open; a connection beyond that
//!   is closed as soon as it is accepted (and counted), so half-open sockets cannot use up the
//!   process's file descriptors and the ones that are open leave room for new clients.
//! - A client has [`ServerLimits::header_timeout`] to finish the TLS handshake and show which
//!   protocol it speaks; then, over HTTP/1.1, each request's headers must arrive within it,
//!   counted from the end of the previous response (hyper's header-read timeout): a client
//!   that sends half a request, or opens a connection and says nothing, is closed. An HTTP/2
//!   connection is pinged while idle and closed when the pings go unanswered.
//! - Request headers are at most [`MAX_HEADER_BYTES`] (431 beyond) in at most [`MAX_HEADERS`]
//!   fields (HTTP/1.1; HTTP/2 bounds the header list to the same size); an HTTP/2 connection
//!   carries at most [`MAX_STREAMS_PER_CONNECTION`] requests at once. No route reads a request
//!   body.
//! - A write that makes no progress for [`ServerLimits::write_timeout`] (a client that stopped
//!   reading) ends the connection, and with it its streams' client permits.
//!
//! A connection's slot is released before its socket is closed, so a client that sees the
//! connection end can count on the slot being free.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tokio_util::{either::Either, sync::CancellationToken, task::TaskTracker};
use tracing::{debug, warn};

use crate::{metrics as m, tls::TlsConfig};

/// Largest request head (request line and headers) in bytes; larger ones get 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header fields in a request.
pub const MAX_HEADERS: usize = 64;
/// Requests (streams) open at once on one HTTP/2 connection: a page with every camera live
/// uses one per camera, and one for its events.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// Pause after a failed `accept` (out of file descriptors, …) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// What an HTTP/2 connection in the clear starts with (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Limits of the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections open at once; more are closed when accepted.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (and to finish its TLS handshake).
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

/// The two protocols' connection settings, shared by every connection.
#[derive(Debug)]
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    header_timeout: Duration,
}

impl Protocols {
    fn new(limits: ServerLimits) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_header_size(MAX_HEADER_BYTES)
            .max_headers(MAX_HEADERS);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(u32::MAX))
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .keep_alive_interval(limits.write_timeout / 2)
            .keep_alive_timeout(limits.write_timeout);
        Self { http1, http2, header_timeout: limits.header_timeout }
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then waits for the open
/// connections to finish (streams end on `shutdown` too). With `tls`, every connection is
/// TLS.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    tls: Option<TlsConfig>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let protocols = Arc::new(Protocols::new(limits));
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
        let connection = Connection::new(slot, stream, limits.write_timeout);
        connections.spawn(serve_connection(
            connection,
            peer,
            app.clone(),
            Arc::clone(&protocols),
            tls.clone(),
            shutdown.clone(),
        ));
    }
    connections.close();
    connections.wait().await;
}

/// Runs a hyper connection to its end; on `shutdown`, lets it finish the requests it has
/// (streams end on `shutdown` too) and take no more.
macro_rules! drive {
    ($conn:expr, $shutdown:expr) => {{
        let mut conn = std::pin::pin!($conn);
        tokio::select! {
            result = conn.as_mut() => result,
            () = $shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }};
}

/// One connection: the TLS handshake or the protocol sniffed, then its requests.
async fn serve_connection(
    connection: Connection,
    peer: SocketAddr,
    app: Router,
    protocols: Arc<Protocols>,
    tls: Option<TlsConfig>,
    shutdown: CancellationToken,
) {
    let deadline = protocols.header_timeout;
    let opening = async {
        match tls {
            Some(tls) => {
                let stream = tls.acceptor().accept(connection).await.inspect_err(|_| {
                    metrics::counter!(m::TLS_HANDSHAKE_FAILURES).increment(1);
                })?;
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                Ok((Either::Right(Box::new(stream)), h2))
            }
            None => {
                let (stream, h2) = sniff(connection).await?;
                Ok::<_, io::Error>((Either::Left(stream), h2))
            }
        }
    };
    let opened = tokio::select! {
        () = shutdown.cancelled() => return,
        opened = tokio::time::timeout(deadline, opening) => opened,
    };
    let (stream, h2) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => {
            debug!(peer = %peer, error = %e, "connection ended before its first request");
            return;
        }
        Err(_) => {
            debug!(peer = %peer, timeout = ?deadline, "connection said nothing in time; closed");
            return;
        }
    };
    let tls = matches!(stream, Either::Right(_));
    metrics::counter!(
        m::HTTP_CONNECTIONS,
        "protocol" => if h2 { "h2" } else { "http/1.1" },
        "tls" => if tls { "true" } else { "false" },
    )
    .increment(1);
    let service = TowerToHyperService::new(app);
    let io = TokioIo::new(stream);
    let result = if h2 {
        let conn = protocols.http2.serve_connection(io, service);
        drive!(conn, shutdown)
    } else {
        let conn = protocols.http1.serve_connection(io, service);
        drive!(conn, shutdown)
    };
    if let Err(e) = result {
        debug!(peer = %peer, error = %e, timeout = e.is_timeout(), h2, tls, "connection ended");
    }
}

/// Reads until the bytes either differ from HTTP/2's preface (HTTP/1.1) or are all of it
/// (HTTP/2); the bytes read are read again by the protocol.
async fn sniff(mut connection: Connection) -> io::Result<(Prefixed<Connection>, bool)> {
    let mut read = Vec::with_capacity(H2_PREFACE.len());
    let mut chunk = [0_u8; H2_PREFACE.len()];
    loop {
        let n = connection.read(&mut chunk[..H2_PREFACE.len() - read.len()]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        read.extend_from_slice(&chunk[..n]);
        if !H2_PREFACE.starts_with(&read) {
            return Ok((Prefixed { prefix: read, at: 0, inner: connection }, false));
        }
        if read.len() == H2_PREFACE.len() {
            return Ok((Prefixed { prefix: read, at: 0, inner: connection }, true));
        }
    }
}

/// A stream whose first bytes were read already: they are read again first.
#[derive(Debug)]
struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
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
