//! Hostile and broken clients against the real server on real sockets: half-sent requests
//! (slowloris), too many connections, oversized headers, clients that stop reading a stream,
//! requests without the token.

mod common;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use lookout_proto::v1::{Encoding, Frame};
use lookout_test_util::EVENT_TIMEOUT;
use lookout_viewer::{AuthToken, ServerLimits, ViewerConfig};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpSocket, TcpStream},
};
use tokio_util::sync::CancellationToken;

use common::{Server, frame, sample_jpeg};

fn limits(max_connections: usize, header_timeout: Duration) -> ServerLimits {
    ServerLimits { max_connections, header_timeout, ..ServerLimits::default() }
}

/// Sends `request` on a new connection and reads the whole response (the request says
/// `Connection: close`). Returns the status line and the header lines, lower-cased names.
async fn exchange(addr: SocketAddr, request: &str) -> (String, Vec<(String, String)>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(EVENT_TIMEOUT, stream.read_to_end(&mut response))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: viewer\r\nConnection: close\r\n{extra}\r\n")
}

/// Reads until the server closes the connection (an end of stream or a reset); panics if it
/// never does.
async fn until_closed(stream: &mut TcpStream) {
    let mut sink = Vec::new();
    let _closed_or_reset = tokio::time::timeout(EVENT_TIMEOUT, stream.read_to_end(&mut sink))
        .await
        .expect("the server closes the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_and_the_viewer_keeps_answering() {
    let config =
        ViewerConfig { server: limits(8, Duration::from_millis(500)), ..ViewerConfig::default() };
    let s = Server::start(config).await;

    // 40 connections that each send half a request and then nothing: 8 take every slot, the
    // others are closed when accepted.
    let mut attackers = Vec::new();
    for _ in 0..40 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        let _ = c.write_all(b"GET /api/cameras HTTP/1.1\r\nHost: vie").await;
        attackers.push(c);
    }
    // Every one of them is closed by the server: the refused at once, the others when their
    // headers did not arrive in time.
    for c in &mut attackers {
        until_closed(c).await;
    }
    // A slot is released before its socket closes, so the viewer answers at once.
    let (status, _) = exchange(s.addr, &get("/api/cameras", "")).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_and_a_freed_slot_is_reused() {
    let config =
        ViewerConfig { server: limits(3, Duration::from_secs(600)), ..ViewerConfig::default() };
    let s = Server::start(config).await;

    // Three keep-alive clients, each served once (so each surely holds a slot).
    let mut held = Vec::new();
    for _ in 0..3 {
        let c = TcpStream::connect(s.addr).await.unwrap();
        let mut c = BufReader::new(c);
        c.get_mut().write_all(b"GET /api/cameras HTTP/1.1\r\nHost: viewer\r\n\r\n").await.unwrap();
        let mut status = String::new();
        c.read_line(&mut status).await.unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        held.push(c);
    }

    // The fourth is closed without an answer, even with a complete request.
    let mut refused = TcpStream::connect(s.addr).await.unwrap();
    let _ = refused.write_all(get("/api/cameras", "").as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(EVENT_TIMEOUT, refused.read_to_end(&mut answer))
        .await
        .expect("closed at once");
    assert!(answer.is_empty(), "no answer beyond the limit: {}", String::from_utf8_lossy(&answer));

    // One client leaves; once the server has closed its side, its slot is free.
    let mut leaving = held.pop().unwrap().into_inner();
    leaving.shutdown().await.unwrap();
    until_closed(&mut leaving).await;
    let (status, _) = exchange(s.addr, &get("/api/cameras", "")).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    drop(held);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_headers_are_refused() {
    let s = Server::start(ViewerConfig::default()).await;
    let big = format!("X-Padding: {}\r\n", "a".repeat(lookout_viewer::server::MAX_HEADER_BYTES));
    let (status, _) = exchange(s.addr, &get("/api/cameras", &big)).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");

    let many: String =
        (0..=lookout_viewer::server::MAX_HEADERS).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, _) = exchange(s.addr, &get("/api/cameras", &many)).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");

    let (status, _) = exchange(s.addr, &get("/api/cameras", "X-Small: ok\r\n")).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "an ordinary request still works");
    s.stop().await;
}

fn big_frame(sequence: u64) -> Frame {
    let mut data = vec![0xab; 256 * 1024];
    data[..2].copy_from_slice(b"\xff\xd8");
    Frame {
        camera_id: "cam".into(),
        sequence,
        capture_time: None,
        width: 640,
        height: 480,
        encoding: Encoding::Jpeg.into(),
        data: Bytes::from(data),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_stream_is_dropped_and_frees_its_slot() {
    let config = ViewerConfig {
        max_clients: 1,
        server: ServerLimits {
            write_timeout: Duration::from_millis(500),
            ..ServerLimits::default()
        },
        ..ViewerConfig::default()
    };
    let s = Server::start(config).await;
    s.state.on_frame(big_frame(0));

    // A camera that keeps sending large frames.
    let feeding = CancellationToken::new();
    let feeder = {
        let (state, feeding) = (s.state.clone(), feeding.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(20));
            for seq in 1.. {
                tokio::select! {
                    () = feeding.cancelled() => return,
                    _ = ticks.tick() => state.on_frame(big_frame(seq)),
                }
            }
        })
    };

    // The stalled client: a tiny receive buffer, reads the response head, then nothing.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stalled = socket.connect(s.addr).await.unwrap();
    let mut stalled = BufReader::with_capacity(1024, stalled);
    stalled
        .get_mut()
        .write_all(b"GET /cameras/cam/stream.mjpeg HTTP/1.1\r\nHost: viewer\r\n\r\n")
        .await
        .unwrap();
    let mut status = String::new();
    stalled.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    // It holds the only stream slot until the server gives up on it.
    tokio::time::timeout(EVENT_TIMEOUT, s.state.client_slot_free())
        .await
        .expect("the stalled client's slot is freed");
    let (status, _) = exchange(s.addr, &get("/cameras/cam/snapshot.jpg", "")).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let fresh = TcpStream::connect(s.addr).await.unwrap();
    let mut fresh = BufReader::new(fresh);
    fresh
        .get_mut()
        .write_all(b"GET /cameras/cam/stream.mjpeg HTTP/1.1\r\nHost: viewer\r\n\r\n")
        .await
        .unwrap();
    let mut status = String::new();
    fresh.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "a new stream client is admitted: {status}");

    feeding.cancel();
    feeder.await.unwrap();
    drop((stalled, fresh));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_request_needs_it_and_every_response_says_nosniff() {
    let config =
        ViewerConfig { auth_token: AuthToken::new("correct-horse"), ..ViewerConfig::default() };
    let s = Server::start(config).await;
    s.state.on_frame(frame("porch", 1, &sample_jpeg("coffee.png")));

    for path in ["/", "/static/app.js", "/api/cameras", "/cameras/porch/snapshot.jpg", "/nope"] {
        let (status, headers) = exchange(s.addr, &get(path, "")).await;
        assert!(status.starts_with("HTTP/1.1 401"), "{path}: {status}");
        let h = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert!(
            h("www-authenticate").is_some_and(|v| v.starts_with("Basic realm=")),
            "{path}: the browser asks for it"
        );
        assert_eq!(h("x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(h("cross-origin-resource-policy"), Some("same-origin"), "{path}");

        let (status, _) =
            exchange(s.addr, &get(path, "Authorization: Bearer wrong-horse\r\n")).await;
        assert!(status.starts_with("HTTP/1.1 401"), "{path} with a wrong token: {status}");
    }

    let bearer = "Authorization: Bearer correct-horse\r\n";
    // "viewer:correct-horse", as a browser sends what was typed into its sign-in dialog.
    let basic = "Authorization: Basic dmlld2VyOmNvcnJlY3QtaG9yc2U=\r\n";
    for auth in [bearer, basic] {
        for (path, want) in [
            ("/", "200 OK"),
            ("/api/cameras", "200 OK"),
            ("/cameras/porch/snapshot.jpg", "200 OK"),
            ("/nope", "404 Not Found"),
        ] {
            let (status, headers) = exchange(s.addr, &get(path, auth)).await;
            assert_eq!(status, format!("HTTP/1.1 {want}"), "{path}");
            let h = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            assert_eq!(h("x-content-type-options"), Some("nosniff"), "{path}");
            assert_eq!(h("cross-origin-resource-policy"), Some("same-origin"), "{path}");
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_viewer_is_open_and_still_says_nosniff() {
    let s = Server::start(ViewerConfig::default()).await;
    for path in ["/", "/api/cameras", "/nope"] {
        let (status, headers) = exchange(s.addr, &get(path, "")).await;
        assert!(!status.contains("401"), "{path}: {status}");
        let h = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(h("x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(h("cross-origin-resource-policy"), Some("same-origin"), "{path}");
    }
    s.stop().await;
}
