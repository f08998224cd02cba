//! HTTP/2 and HTTPS: HTTP/2 in the clear (h2c, what a reverse proxy in front speaks) and
//! HTTP/1.1 on one port; over TLS (`--tls-cert`, `--tls-key`) the protocol chosen by ALPN;
//! certificate and key files that cannot be used named at start; and the page with twelve
//! synthetic cameras in headless Chromium: over HTTPS every camera streams live on one
//! HTTP/2 connection, over HTTP/1.1 four stream and eight refresh snapshots.
//!
//! The browser test needs `/usr/bin/chromium` (or `LOOKOUT_CHROMIUM`), `node` and `npm`;
//! `.ci/run` installs them. `LOOKOUT_PAGE_SECONDS` sets how long the page is watched (10 s).

mod common;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use clap::Parser as _;
use common::{Multipart, Server, artifacts, frame, sample_jpeg};
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, StatusCode, Version, body::Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lookout_service::Readiness;
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use lookout_viewer::{TlsConfig, ViewerConfig, ViewerError};
use rustls::pki_types::pem::PemObject as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A self-signed certificate for `localhost` and 127.0.0.1, and its key, as PEM files.
struct Certificate {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    pem: String,
}

fn certificate() -> Certificate {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("a certificate");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("viewer.crt"), dir.path().join("viewer.key"));
    let pem = generated.cert.pem();
    std::fs::write(&cert, &pem).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    Certificate { _dir: dir, cert, key, pem }
}

/// An HTTP/2 client connection over `io`.
async fn h2_client<I>(io: I) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("the HTTP/2 handshake succeeds");
    tokio::spawn(connection);
    sender
}

async fn get(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    url: &str,
) -> hyper::Response<Incoming> {
    let request = Request::get(url).body(Empty::new()).unwrap();
    tokio::time::timeout(EVENT_TIMEOUT, sender.send_request(request))
        .await
        .expect("an answer")
        .expect("the request succeeds")
}

/// The next complete part of a multipart body.
async fn next_part(body: &mut Incoming, parts: &mut Multipart) -> common::Part {
    tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            if let Some(part) = parts.next_part() {
                return part;
            }
            let frame = body.frame().await.expect("the stream goes on").expect("a frame");
            if let Ok(data) = frame.into_data() {
                parts.push(&data);
            }
        }
    })
    .await
    .expect("a part arrives")
}

/// Two cameras' MJPEG streams at once on one HTTP/2 connection, each getting its camera's
/// frames, and the API on the same connection.
async fn two_streams_on_one_connection(
    server: &Server,
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    base: &str,
) {
    let jpeg = sample_jpeg("coffee.png");
    server.state.on_frame(frame("lobby", 1, &jpeg));
    server.state.on_frame(frame("yard", 1, &jpeg));

    let cameras = get(sender, &format!("{base}/api/cameras")).await;
    assert_eq!(cameras.version(), Version::HTTP_2);
    assert_eq!(cameras.status(), StatusCode::OK);
    let body = cameras.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("lobby") && text.contains("yard"), "{text}");

    let mut streams = Vec::new();
    for camera in ["lobby", "yard"] {
        let response = get(sender, &format!("{base}/cameras/{camera}/stream.mjpeg")).await;
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        streams.push((camera, response.into_body(), Multipart::new(&content_type)));
    }
    for (camera, body, parts) in &mut streams {
        let part = next_part(body, parts).await;
        assert_eq!(part.sequence(), 1, "{camera}");
        assert_eq!(part.body, jpeg.0.as_ref(), "{camera}: the camera's JPEG as sent");
    }
    server.state.on_frame(frame("lobby", 2, &jpeg));
    server.state.on_frame(frame("yard", 2, &jpeg));
    for (camera, body, parts) in &mut streams {
        assert_eq!(next_part(body, parts).await.sequence(), 2, "{camera}");
    }
}

#[tokio::test]
async fn http2_in_the_clear_and_http1_share_the_port() {
    let server = Server::start(ViewerConfig::default()).await;
    let base = format!("http://{}", server.addr);

    let mut h2 = h2_client(TcpStream::connect(server.addr).await.unwrap()).await;
    two_streams_on_one_connection(&server, &mut h2, &base).await;

    let http1 = reqwest::get(format!("{base}/api/cameras")).await.expect("HTTP/1.1 answered");
    assert_eq!(http1.version(), reqwest::Version::HTTP_11);
    assert_eq!(http1.status(), reqwest::StatusCode::OK);
    drop(h2);
    server.stop().await;
}

#[tokio::test]
async fn https_speaks_http2_or_http1_as_the_client_asks() {
    let certificate = certificate();
    let tls = TlsConfig::from_pem_files(&certificate.cert, &certificate.key).expect("usable");
    let server = Server::start(ViewerConfig { tls: Some(tls), ..ViewerConfig::default() }).await;
    let base = format!("https://localhost:{}", server.addr.port());

    // HTTP/2 chosen by ALPN, the certificate checked against the test's own root.
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(
        rustls::pki_types::CertificateDer::pem_slice_iter(certificate.pem.as_bytes())
            .map(Result::unwrap),
    );
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("the TLS handshake succeeds");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let mut h2 = h2_client(tls).await;
    two_streams_on_one_connection(&server, &mut h2, &base).await;

    // HTTP/1.1 for a client that offers only that.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(certificate.pem.as_bytes()).unwrap())
        .resolve("localhost", server.addr)
        .build()
        .unwrap();
    let http1 = client.get(format!("{base}/api/cameras")).send().await.expect("answered");
    assert_eq!(http1.version(), reqwest::Version::HTTP_11);
    assert_eq!(http1.status(), reqwest::StatusCode::OK);

    // Plain HTTP to the HTTPS port gets no page.
    let plain = reqwest::get(format!("http://{}/api/cameras", server.addr)).await;
    assert!(plain.is_err(), "plain HTTP is not served over TLS: {plain:?}");
    drop(h2);
    server.stop().await;
}

fn config_of(cert: &Path, key: &Path) -> Result<ViewerConfig, ViewerError> {
    let args = lookout_viewer::Args::try_parse_from([
        "lookout-viewer".as_ref(),
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
    ])
    .expect("the options parse");
    args.viewer.config()
}

#[test]
fn tls_files_that_cannot_be_used_are_named() {
    let ours = certificate();
    let other = certificate();
    assert!(config_of(&ours.cert, &ours.key).is_ok_and(|c| c.tls.is_some()));

    let missing = ours.cert.with_file_name("missing.crt");
    let e = config_of(&missing, &ours.key).unwrap_err().to_string();
    assert!(e.contains(&missing.display().to_string()) && e.contains("cannot be read"), "{e}");

    // The certificate given as the key.
    let e = config_of(&ours.cert, &ours.cert).unwrap_err().to_string();
    assert!(e.contains("viewer.crt") && e.contains("has no private key"), "{e}");

    // The key given as the certificate.
    let e = config_of(&ours.key, &ours.key).unwrap_err().to_string();
    assert!(e.contains("viewer.key") && e.contains("has no certificate"), "{e}");

    // Another certificate's key.
    let e = config_of(&ours.cert, &other.key).unwrap_err().to_string();
    assert!(
        e.contains(&other.key.display().to_string()) && e.contains("cannot be used with"),
        "{e}"
    );

    // One without the other is refused by the options.
    let only_cert = lookout_viewer::Args::try_parse_from([
        "lookout-viewer".as_ref(),
        "--tls-cert".as_ref(),
        ours.cert.as_os_str(),
    ]);
    assert!(only_cert.is_err());
}

/// What the page check saw.
#[derive(Debug)]
struct Watched {
    json: serde_json::Value,
}

impl Watched {
    fn tiles(&self) -> &Vec<serde_json::Value> {
        self.json["watch"]["tiles"].as_array().expect("tiles")
    }

    fn count(&self, view: &str) -> usize {
        self.tiles().iter().filter(|t| t["view"] == view).count()
    }

    fn min_pictures(&self) -> u64 {
        self.tiles().iter().map(|t| t["pictures"].as_u64().unwrap()).min().unwrap()
    }

    /// Mean pictures per second over the tiles of `view`.
    fn rate(&self, view: &str) -> f64 {
        let seconds = self.json["watch"]["seconds"].as_f64().unwrap();
        let tiles: Vec<u64> = self
            .tiles()
            .iter()
            .filter(|t| t["view"] == view)
            .map(|t| t["pictures"].as_u64().unwrap())
            .collect();
        if tiles.is_empty() {
            return 0.0;
        }
        tiles.iter().sum::<u64>() as f64 / tiles.len() as f64 / seconds
    }
}

/// Opens `url` in Chromium and watches the page for `seconds`.
async fn watch(url: &str, cameras: usize, seconds: u64, screenshot: &Path) -> Watched {
    let args = [url.to_owned(), cameras.to_string(), seconds.to_string()];
    let rest = [screenshot.display().to_string(), EVENT_TIMEOUT.as_millis().to_string()];
    let timeout = EVENT_TIMEOUT * 3 + Duration::from_secs(seconds);
    Watched {
        json: common::browser_check("live.cjs", args.into_iter().chain(rest), &[], timeout).await,
    }
}

const CAMERAS: usize = 12;

/// The page with twelve synthetic cameras (the camera's own `synthetic` source, 320×240 at
/// 5 fps each, every frame a different picture), watched in Chromium: over HTTPS, HTTP/2
/// and every tile a live stream; over HTTP/1.1, four streams and eight snapshot tiles. Every
/// tile shows its camera moving either way; the rates are printed (BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_cameras_all_stream_live_over_https() {
    let seconds: u64 =
        std::env::var("LOOKOUT_PAGE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let out = artifacts();
    let certificate = certificate();
    let t = TestBus::start();
    t.create_registry_topics().await;
    let shutdown = CancellationToken::new();

    let mut cameras = Vec::new();
    for i in 0..CAMERAS {
        let id = format!("cam-{i:02}");
        let args = lookout_camera::Args::try_parse_from([
            "lookout-camera",
            "--source",
            "synthetic",
            "--camera-id",
            &id,
            "--fps",
            "5",
            "--width",
            "320",
            "--height",
            "240",
        ])
        .expect("camera options");
        let bus = lookout_bus::Bus::new(lookout_camera::producer_config(t.config(&id))).unwrap();
        cameras.push(tokio::spawn(lookout_camera::run(
            args.camera,
            bus,
            Readiness::default(),
            shutdown.clone(),
        )));
    }

    let mut viewers = Vec::new();
    let mut urls = Vec::new();
    for tls in [true, false] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut argv = vec!["lookout-viewer".to_owned(), "--listen".into(), addr.to_string()];
        if tls {
            argv.extend(["--tls-cert".into(), certificate.cert.display().to_string()]);
            argv.extend(["--tls-key".into(), certificate.key.display().to_string()]);
        }
        let args = lookout_viewer::Args::try_parse_from(argv).expect("viewer options");
        let scheme = if tls { "https" } else { "http" };
        urls.push(format!("{scheme}://{addr}/"));
        viewers.push(tokio::spawn(lookout_viewer::run(
            args.viewer,
            listener,
            t.bus(&format!("lookout-viewer-{scheme}")),
            shutdown.clone(),
        )));
    }

    let https = watch(&urls[0], CAMERAS, seconds, &out.join("viewer-12-cameras-https.png")).await;
    let http1 = watch(&urls[1], CAMERAS, seconds, &out.join("viewer-12-cameras-http1.png")).await;
    eprintln!("over HTTPS: {}", https.json);
    eprintln!("over HTTP/1.1: {}", http1.json);
    println!(
        "{CAMERAS} cameras at 5 fps, page watched {seconds} s:\n\
         HTTPS (h2):  {} live tiles at {:.1} pictures/s, {} snapshot requests\n\
         HTTP/1.1:    {} live tiles at {:.1} pictures/s, {} snapshot tiles at {:.1} pictures/s ({} snapshot requests)",
        https.count("stream"),
        https.rate("stream"),
        https.json["snapshot_requests"],
        http1.count("stream"),
        http1.rate("stream"),
        http1.count("snapshot"),
        http1.rate("snapshot"),
        http1.json["snapshot_requests"],
    );

    assert_eq!(https.json["watch"]["protocol"], "h2", "{}", https.json);
    assert_eq!(https.count("stream"), CAMERAS, "every camera streams live: {}", https.json);
    assert_eq!(https.json["snapshot_requests"], 0, "{}", https.json);
    assert_eq!(https.json["stream_requests"], CAMERAS, "one stream per tile: {}", https.json);
    assert_eq!(http1.json["watch"]["protocol"], "http/1.1", "{}", http1.json);
    assert_eq!(http1.count("stream"), 4, "{}", http1.json);
    assert_eq!(http1.count("snapshot"), CAMERAS - 4, "{}", http1.json);
    // Every tile showed its camera moving (5 new pictures a second were sent to each).
    assert!(https.min_pictures() >= 3, "{}", https.json);
    assert!(http1.min_pictures() >= 3, "{}", http1.json);

    shutdown.cancel();
    for viewer in viewers {
        viewer.await.unwrap().expect("the viewer stops cleanly");
    }
    for camera in cameras {
        camera.await.unwrap().expect("the camera stops cleanly");
    }
}
