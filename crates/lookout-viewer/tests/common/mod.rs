#![allow(dead_code, unreachable_pub)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use bytes::Bytes;
use image::codecs::jpeg::JpegEncoder;
use lookout_proto::v1::{Encoding, Frame, Label, ModelKind, ModelRef, Prediction};
use lookout_test_util::EVENT_TIMEOUT;
use lookout_viewer::{ViewerConfig, ViewerError, ViewerState};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

/// The viewer's web server on a port of its own, fed by the test through `state`.
pub struct Server {
    pub addr: std::net::SocketAddr,
    pub state: ViewerState,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), ViewerError>>,
}

impl Server {
    pub async fn start(config: ViewerConfig) -> Self {
        let shutdown = CancellationToken::new();
        let state = ViewerState::new(config, shutdown.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(lookout_viewer::serve(listener, state.clone(), shutdown.clone()));
        Self { addr, state, shutdown, task }
    }

    /// Shuts the server down; fails if it does not stop.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(EVENT_TIMEOUT, self.task)
            .await
            .expect("the server stops")
            .expect("the server task does not panic")
            .expect("the server stops cleanly");
    }
}

pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

/// A sample photo as JPEG bytes, with its size.
pub fn sample_jpeg(name: &str) -> (Bytes, u32, u32) {
    let img = image::open(repo(&format!("samples/{name}"))).expect("sample opens").into_rgb8();
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(&mut buf, 85).encode_image(&img).expect("encodes");
    (Bytes::from(buf), img.width(), img.height())
}

pub fn frame(camera: &str, sequence: u64, jpeg: &(Bytes, u32, u32)) -> Frame {
    Frame {
        camera_id: camera.into(),
        sequence,
        capture_time: Some(lookout_proto::timestamp(SystemTime::now())),
        width: jpeg.1,
        height: jpeg.2,
        encoding: Encoding::Jpeg.into(),
        data: jpeg.0.clone(),
    }
}

pub fn prediction(camera: &str, sequence: u64, label: &str, score: f32) -> Prediction {
    Prediction {
        camera_id: camera.into(),
        frame_sequence: sequence,
        capture_time: Some(lookout_proto::timestamp(SystemTime::now())),
        model: Some(ModelRef {
            name: "efficientnet-lite0".into(),
            version: "1".into(),
            kind: ModelKind::Classification.into(),
        }),
        top_k: vec![Label { class_id: 967, name: label.into(), score }],
        ..Default::default()
    }
}

/// One part of a multipart stream.
#[derive(Debug)]
pub struct Part {
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Part {
    pub fn sequence(&self) -> u64 {
        self.headers["x-lookout-sequence"].parse().expect("a sequence header")
    }
}

/// Splits a `multipart/x-mixed-replace` body, fed in pieces of any size, into parts. Checks
/// that every part is closed by the boundary right after its `Content-Length` bytes.
#[derive(Debug)]
pub struct Multipart {
    boundary: Vec<u8>,
    buf: Vec<u8>,
    opened: bool,
}

impl Multipart {
    pub fn new(content_type: &str) -> Self {
        let boundary = content_type
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
            .expect("the content type names a boundary");
        Self { boundary: format!("--{boundary}\r\n").into_bytes(), buf: Vec::new(), opened: false }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete part, if the buffer holds one.
    pub fn next_part(&mut self) -> Option<Part> {
        if !self.opened {
            if self.buf.len() < self.boundary.len() {
                return None;
            }
            assert_eq!(&self.buf[..self.boundary.len()], &self.boundary[..], "opening boundary");
            self.buf.drain(..self.boundary.len());
            self.opened = true;
        }
        let end = self.buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&self.buf[..end]).expect("part headers are text");
        let headers: BTreeMap<String, String> = head
            .split("\r\n")
            .map(|l| {
                let (k, v) = l.split_once(':').expect("a header line");
                (k.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let len: usize = headers["content-length"].parse().expect("a content length");
        let closing = 2 + self.boundary.len();
        let total = end + 4 + len + closing;
        if self.buf.len() < total {
            return None;
        }
        let body = self.buf[end + 4..end + 4 + len].to_vec();
        assert_eq!(&self.buf[end + 4 + len..end + 4 + len + 2], b"\r\n", "part ends with CRLF");
        assert_eq!(&self.buf[end + 6 + len..total], &self.boundary[..], "then the boundary");
        self.buf.drain(..total);
        Some(Part { headers, body })
    }
}

/// An HTTP/1.1 client on a raw socket that reads a streamed response (chunked).
#[derive(Debug)]
pub struct StreamClient {
    reader: BufReader<TcpStream>,
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    ended: bool,
}

impl StreamClient {
    pub async fn get(addr: std::net::SocketAddr, path: &str) -> Self {
        let mut stream = TcpStream::connect(addr).await.expect("connects");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let status = line.split(' ').nth(1).expect("a status line").parse().unwrap();
        let mut client = Self::from_reader(reader).await;
        client.status = status;
        client
    }

    /// Takes over a connection whose status line was read: reads the headers.
    pub async fn from_reader(mut reader: BufReader<TcpStream>) -> Self {
        let mut line = String::new();
        let mut headers = BTreeMap::new();
        loop {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
        Self { reader, status: 200, headers, ended: false }
    }

    /// The next chunk of the body, `None` at its end (or when the connection closes).
    pub async fn chunk(&mut self) -> Option<Vec<u8>> {
        if self.ended {
            return None;
        }
        assert_eq!(self.headers.get("transfer-encoding").map(String::as_str), Some("chunked"));
        let mut line = String::new();
        if self.reader.read_line(&mut line).await.ok()? == 0 {
            self.ended = true;
            return None;
        }
        let size = usize::from_str_radix(line.trim(), 16).expect("a chunk size");
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data).await.ok()?;
        data.truncate(size);
        if size == 0 {
            self.ended = true;
            return None;
        }
        Some(data)
    }

    /// Reads parts until one satisfies `want`; returns every part read. Panics on a hang.
    pub async fn parts_until(
        &mut self,
        parser: &mut Multipart,
        mut want: impl FnMut(&Part) -> bool,
    ) -> Vec<Part> {
        let mut got = Vec::new();
        tokio::time::timeout(EVENT_TIMEOUT, async {
            loop {
                while let Some(part) = parser.next_part() {
                    let done = want(&part);
                    got.push(part);
                    if done {
                        return;
                    }
                }
                let chunk = self.chunk().await.expect("the stream goes on");
                parser.push(&chunk);
            }
        })
        .await
        .expect("the parts arrive");
        got
    }
}

// Headless Chromium for the browser tests.

/// The driver version; 1.61 is the newest that still runs on Debian 12's Node.js 18.
pub const PLAYWRIGHT_CORE: &str = "1.61.1";

pub fn chromium() -> PathBuf {
    let path = std::env::var_os("LOOKOUT_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.is_file(),
        "the browser test needs headless Chromium at {}: install it (Debian: `apt-get install \
         chromium`, as .ci/run does) or point LOOKOUT_CHROMIUM at it",
        path.display()
    );
    path
}

/// Installs `playwright-core` under the target directory once; returns the package folder.
pub fn playwright_core() -> PathBuf {
    let node = Command::new("node").arg("--version").output();
    let Ok(node) = node.as_ref().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    else {
        panic!(
            "the browser test needs Node.js (`node`) and npm: install `nodejs npm`, as .ci/run does"
        );
    };
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("playwright-core-{PLAYWRIGHT_CORE}"));
    let package = dir.join("node_modules").join("playwright-core");
    if !package.join("package.json").is_file() {
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("npm")
            .args(["install", "--no-save", "--no-package-lock", "--no-audit", "--no-fund"])
            .args(["--loglevel", "error", "--prefix"])
            .arg(&dir)
            .arg(format!("playwright-core@{PLAYWRIGHT_CORE}"))
            .status()
            .expect("npm runs (install `nodejs npm`, as .ci/run does)");
        assert!(
            status.success(),
            "npm install playwright-core@{PLAYWRIGHT_CORE} failed (node {node})"
        );
    }
    package
}

/// Where test artefacts go: `target/test-artifacts/`.
pub fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the check `tests/browser/SCRIPT` in headless Chromium (node with playwright-core) with
/// `args` and the extra environment `env`, for at most `timeout`; fails the test with the
/// script's log when the check fails, else returns the JSON the script printed. The script's
/// log (standard error) is shown either way.
pub async fn browser_check<A: AsRef<std::ffi::OsStr>>(
    script: &str,
    args: impl IntoIterator<Item = A>,
    env: &[(&str, &str)],
    timeout: std::time::Duration,
) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser").join(script);
    let run = tokio::process::Command::new("node")
        .arg(&path)
        .args(args)
        .envs(env.iter().copied())
        .env("PLAYWRIGHT_CORE", playwright_core())
        .env("CHROMIUM", chromium())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| panic!("the browser check {script} ends within {timeout:?}"))
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "the browser check {script} failed (screenshots in {}):\n{stderr}\n{stdout}",
        artifacts().display()
    );
    let result: serde_json::Value =
        serde_json::from_str(stdout.trim()).expect("the check prints its result as JSON");
    eprintln!("browser saw: {result}");
    result
}
