//! A TCP proxy that injects network faults: [`FaultProxy`].
//!
//! It sits between a client and a server (a service and the broker, the recorder and
//! Postgres) and forwards bytes both ways until the test tells it otherwise:
//! - [`FaultProxy::cut`]: every live connection is closed, and every new one is accepted and
//!   closed at once (the peer is unreachable);
//! - [`FaultProxy::stall`]: connections stay open, new ones are accepted, but nothing is
//!   forwarded either way (a black hole: packets dropped, no error);
//! - [`FaultProxy::restore`]: forwarding resumes; what was sent into a stalled connection is
//!   delivered then.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
};
use tokio_util::sync::CancellationToken;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards both ways.
    None,
    /// Holds every connection open and forwards nothing.
    Stall,
    /// Closes every connection, old and new.
    Cut,
}

/// Bytes read at a time from one side.
const CHUNK: usize = 64 * 1024;

/// A TCP proxy on an ephemeral port of 127.0.0.1 in front of one upstream address. Stops
/// (closing every connection) when dropped. Must be started inside a tokio runtime, which
/// runs its tasks.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    fault: watch::Sender<Fault>,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (ephemeral port) and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (fault, _) = watch::channel(Fault::None);
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, upstream, fault.clone(), counters.clone(), stop.clone()));
        Ok(Self { addr, upstream, fault, counters, stop })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where connections are forwarded.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Closes every live connection; new ones are closed as soon as they are accepted.
    pub fn cut(&self) {
        self.fault.send_replace(Fault::Cut);
    }

    /// Keeps connections open but forwards nothing, either way, until [`FaultProxy::restore`].
    pub fn stall(&self) {
        self.fault.send_replace(Fault::Stall);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.fault.send_replace(Fault::None);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// Connections accepted since the start (those closed at once by a cut included).
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    /// Connections being forwarded (or held by a stall) right now.
    pub fn open(&self) -> u64 {
        self.counters.open.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.fault.send_replace(Fault::Cut);
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    fault: watch::Sender<Fault>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else { continue };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        if *fault.borrow() == Fault::Cut {
            drop(client);
            continue;
        }
        let fault = fault.subscribe();
        let counters = counters.clone();
        tokio::spawn(async move {
            counters.open.fetch_add(1, Ordering::Relaxed);
            forward(client, upstream, fault).await;
            counters.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Forwards one connection both ways until either side closes it or a cut.
async fn forward(client: TcpStream, upstream: SocketAddr, fault: watch::Receiver<Fault>) {
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(client_read, server_write, fault.clone()),
        pump(server_read, client_write, fault),
    );
}

/// Copies `from` to `to`, reading nothing while stalled and returning on a cut (the halves
/// are dropped: both sockets close once the other direction returns too).
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut fault: watch::Receiver<Fault>) {
    let mut buf = vec![0; CHUNK];
    loop {
        if !forwarding(&mut fault).await {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            // `read` is cancel-safe: nothing read is lost when a fault interrupts it.
            changed = fault.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        // A stall that began while reading holds these bytes until it ends.
        if !forwarding(&mut fault).await {
            return;
        }
        tokio::select! {
            written = to.write_all(&buf[..n]) => if written.is_err() { return },
            _ = fault.wait_for(|f| *f == Fault::Cut) => return,
        }
    }
}

/// Waits out a stall: true when forwarding, false on a cut (or the proxy gone).
async fn forwarding(fault: &mut watch::Receiver<Fault>) -> bool {
    match fault.wait_for(|f| *f != Fault::Stall).await {
        Ok(f) => *f == Fault::None,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An echo server: each connection gets back what it sends.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, text: &[u8]) -> Vec<u8> {
        s.write_all(text).await.unwrap();
        let mut back = vec![0; text.len()];
        s.read_exact(&mut back).await.unwrap();
        back
    }

    /// Whether the peer closed `s` (reads end, or fail with a reset).
    async fn closed(s: &mut TcpStream) -> bool {
        let mut b = [0; 1];
        matches!(s.read(&mut b).await, Ok(0) | Err(_))
    }

    #[tokio::test]
    async fn forwards_both_ways_and_counts_connections() {
        let proxy = FaultProxy::start(echo().await).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut a, b"hello").await, b"hello");
        assert_eq!(round_trip(&mut b, b"again").await, b"again");
        assert_eq!(proxy.accepted(), 2);
        assert_eq!(proxy.open(), 2);
        drop(a);
        drop(b);
        let closed = tokio::time::timeout(crate::EVENT_TIMEOUT, async {
            while proxy.open() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert!(closed.await.is_ok(), "connections closed by clients are let go");
    }

    #[tokio::test]
    async fn a_cut_closes_live_and_new_connections_until_restored() {
        let proxy = FaultProxy::start(echo().await).await.unwrap();
        let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut live, b"before").await, b"before");

        proxy.cut();
        assert!(closed(&mut live).await, "the live connection is closed");
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(closed(&mut new).await, "a new connection is closed at once");
        assert_eq!(proxy.accepted(), 2, "the closed one was accepted, and counted");

        proxy.restore();
        let mut after = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut after, b"after").await, b"after");
        assert_eq!(proxy.accepted(), 3);
    }

    #[tokio::test]
    async fn a_stall_holds_bytes_until_restored() {
        let proxy = FaultProxy::start(echo().await).await.unwrap();
        let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut live, b"before").await, b"before");

        proxy.stall();
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        live.write_all(b"held").await.unwrap();
        new.write_all(b"held too").await.unwrap();
        // Nothing comes back while stalled. (A bounded wait for an absence: it cannot fail
        // when the stall works.)
        let mut b = [0; 1];
        let quiet = tokio::time::timeout(Duration::from_millis(300), live.read(&mut b)).await;
        assert!(quiet.is_err(), "nothing is forwarded during a stall: {quiet:?}");
        assert_eq!(proxy.open(), 2, "stalled connections stay open");

        proxy.restore();
        let mut back = [0; 4];
        live.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"held", "what was sent during the stall arrives after it");
        let mut back = [0; 8];
        new.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"held too");
    }

    #[tokio::test]
    async fn a_cut_during_a_stall_closes_the_held_connections() {
        let proxy = FaultProxy::start(echo().await).await.unwrap();
        let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut live, b"x").await, b"x");
        proxy.stall();
        live.write_all(b"held").await.unwrap();
        proxy.cut();
        assert!(closed(&mut live).await, "the held connection is closed");
        assert_eq!(proxy.fault(), Fault::Cut);
    }
}
