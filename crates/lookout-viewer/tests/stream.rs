//! The viewer on a socket: MJPEG parts, slow clients, events and graceful shutdown.

mod common;

use std::{net::SocketAddr, time::SystemTime};

use bytes::Bytes;
use image::ImageFormat;
use lookout_proto::v1::{Encoding, Frame};
use lookout_test_util::EVENT_TIMEOUT;
use lookout_viewer::ViewerConfig;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpSocket,
};

use common::{Multipart, Server, StreamClient, frame, prediction, sample_jpeg};

async fn server() -> Server {
    Server::start(ViewerConfig::default()).await
}

async fn mjpeg(addr: SocketAddr, path: &str) -> (StreamClient, Multipart) {
    let client = StreamClient::get(addr, path).await;
    assert_eq!(client.status, 200);
    let parser = Multipart::new(&client.headers["content-type"]);
    assert!(client.headers["content-type"].starts_with("multipart/x-mixed-replace; boundary="));
    (client, parser)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mjpeg_parts_are_the_cameras_jpegs() {
    let s = server().await;
    let photos = [sample_jpeg("chelsea.png"), sample_jpeg("coffee.png"), sample_jpeg("rocket.jpg")];
    s.state.on_frame(frame("cam", 100, &photos[0]));
    let (mut client, mut parser) = mjpeg(s.addr, "/cameras/cam/stream.mjpeg").await;

    for (i, seq) in (100..106).enumerate() {
        let photo = &photos[i % photos.len()];
        if seq > 100 {
            s.state.on_frame(frame("cam", seq, photo));
        }
        let parts = client.parts_until(&mut parser, |p| p.sequence() == seq).await;
        let part = parts.last().unwrap();
        assert_eq!(part.headers["content-type"], "image/jpeg");
        assert_eq!(part.headers["content-length"], photo.0.len().to_string());
        assert_eq!(part.body, photo.0, "passed through untouched");
        let img = image::load_from_memory_with_format(&part.body, ImageFormat::Jpeg)
            .expect("each part is a JPEG");
        assert_eq!((img.width(), img.height()), (photo.1, photo.2));
    }
    s.shutdown.cancel();
    s.task.await.unwrap().unwrap();
}

fn big_frame(sequence: u64) -> Frame {
    // The stream passes bytes through without decoding them: a large payload fills socket
    // buffers quickly.
    let mut data = vec![0xab; 512 * 1024];
    data[..2].copy_from_slice(b"\xff\xd8");
    Frame {
        camera_id: "cam".into(),
        sequence,
        capture_time: Some(lookout_proto::timestamp(SystemTime::now())),
        width: 640,
        height: 480,
        encoding: Encoding::Jpeg.into(),
        data: Bytes::from(data),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_skips_ahead_and_does_not_slow_a_fast_one() {
    let s = server().await;
    s.state.on_frame(big_frame(0));

    // The slow client: a tiny receive buffer, reads the response head, then nothing more.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let slow = socket.connect(s.addr).await.unwrap();
    let mut slow = BufReader::with_capacity(1024, slow);
    slow.get_mut()
        .write_all(b"GET /cameras/cam/stream.mjpeg HTTP/1.1\r\nHost: viewer\r\n\r\n")
        .await
        .unwrap();
    let mut status = String::new();
    slow.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    let (mut fast, mut parser) = mjpeg(s.addr, "/cameras/cam/stream.mjpeg").await;
    fast.parts_until(&mut parser, |p| p.sequence() == 0).await;

    const FRAMES: u64 = 40; // 20 MiB: far more than the slow client's socket buffers hold
    let mut received = Vec::new();
    for seq in 1..=FRAMES {
        s.state.on_frame(big_frame(seq));
        let parts = fast.parts_until(&mut parser, |p| p.sequence() == seq).await;
        received.extend(parts.iter().map(|p| p.sequence()));
    }
    assert_eq!(
        received,
        (1..=FRAMES).collect::<Vec<_>>(),
        "the fast client got every frame while the slow one read nothing"
    );

    // Now the slow client reads: what its buffers held, then straight to the newest frame.
    let mut slow_client = StreamClient::from_reader(slow).await;
    let mut slow_parser = Multipart::new("multipart/x-mixed-replace; boundary=lookoutframe");
    let parts = slow_client.parts_until(&mut slow_parser, |p| p.sequence() == FRAMES).await;
    let seqs: Vec<u64> = parts.iter().map(|p| p.sequence()).collect();
    eprintln!("the slow client got frames {seqs:?} of 0..={FRAMES}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    assert!(
        seqs.len() < FRAMES as usize,
        "the slow client skipped frames instead of queueing them all: {seqs:?}"
    );
    s.shutdown.cancel();
    s.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_ends_open_streams_and_events() {
    let s = server().await;
    let photo = sample_jpeg("coffee.png");
    s.state.on_frame(frame("cam", 1, &photo));
    let (mut video, mut parser) = mjpeg(s.addr, "/cameras/cam/stream.mjpeg").await;
    video.parts_until(&mut parser, |p| p.sequence() == 1).await;
    let (mut overlay, mut overlay_parser) =
        mjpeg(s.addr, "/cameras/cam/stream.mjpeg?overlay=1").await;
    overlay.parts_until(&mut overlay_parser, |p| p.sequence() == 1).await;

    let mut events = StreamClient::get(s.addr, "/api/events").await;
    assert_eq!(events.status, 200);
    assert!(events.headers["content-type"].starts_with("text/event-stream"));
    let mut text = String::new();
    let mut until = async |events: &mut StreamClient, needle: &str| {
        tokio::time::timeout(EVENT_TIMEOUT, async {
            while !text.contains(needle) {
                let chunk = events.chunk().await.expect("events go on");
                text.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .expect("the event arrives");
    };
    until(&mut events, "event: hello").await;
    s.state.on_prediction(&prediction("cam", 1, "espresso", 0.9));
    until(&mut events, "event: prediction").await;
    assert!(text.contains(r#""label":"espresso""#), "{text}");

    s.shutdown.cancel();
    tokio::time::timeout(EVENT_TIMEOUT, s.task)
        .await
        .expect("the server stops although streams were open")
        .unwrap()
        .unwrap();
    for client in [&mut video, &mut overlay, &mut events] {
        tokio::time::timeout(EVENT_TIMEOUT, async { while client.chunk().await.is_some() {} })
            .await
            .expect("each open body ends");
    }
}
