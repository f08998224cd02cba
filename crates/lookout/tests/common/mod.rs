//! Helpers shared by the whole-process tests: each service as its own OS process
//! (`lookout <service>`) on a test's broker, and ways to watch what they do.

#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use serde_json::Value;

/// A service process, killed when the test ends however it ends; when the test fails, the end
/// of its output is printed.
pub struct Service {
    pub name: String,
    pub child: Child,
    pub log: Option<PathBuf>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking()
            && let Some(text) = self.log.as_ref().and_then(|l| std::fs::read_to_string(l).ok())
        {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            eprintln!("---- last {} lines of {}:\n{}", tail.len(), self.name, tail.join("\n"));
        }
    }
}

/// Lines of a service's output shown when a test fails.
pub const LOG_TAIL: usize = 40;

impl Service {
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL"); // Child::kill is SIGKILL on Unix
        self.child.wait().unwrap();
    }
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

pub fn start(t: &TestBus, dir: &Path, name: &str, args: &[String]) -> Service {
    let path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&path).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_lookout"));
    command.args(args).args(t.child_args()).args(["--instance", name]);
    if !args.iter().any(|a| a == "--admin-addr") {
        command.args(["--admin-addr", "127.0.0.1:0"]);
    }
    let child = command
        .env("RUST_LOG", "info")
        .env_remove("LOOKOUT_BROKERS")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("lookout runs");
    Service { name: name.to_owned(), child, log: Some(path) }
}

pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The slideshow of the sample photos, each held `hold`, for `frames` frames at 5 fps.
pub fn camera_with(t: &TestBus, dir: &Path, hold: &str, frames: u64) -> Service {
    let source = format!("images:{}", repo("samples").display());
    let frames = frames.to_string();
    start(
        t,
        dir,
        "camera",
        &s(&["camera", "--source", &source, "--hold", hold, "--fps", "5", "--frames", &frames]),
    )
}

/// Waits until a service's log says its consumer owns partitions: a predictor started before
/// the camera then labels the first frames while they are fresh (it skips frames older than
/// its `--max-frame-age`, 2 s, and joining a group plus loading the model can take longer on a
/// loaded machine).
pub fn joined(service: &Service) {
    let log = service.log.clone().expect("a log");
    eventually(&format!("{} to own partitions", service.name), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("partitions assigned").then_some(())
    });
}

pub fn predictor(t: &TestBus, dir: &Path, name: &str) -> Service {
    let model = repo("models/efficientnet-lite0/model.toml");
    start(t, dir, name, &s(&["predictor", "--model", model.to_str().unwrap()]))
}

pub fn recorder(t: &TestBus, dir: &Path, name: &str, db: &str, group: &str) -> Service {
    recorder_with(t, dir, name, db, group, &[])
}

pub fn recorder_with(
    t: &TestBus,
    dir: &Path,
    name: &str,
    db: &str,
    group: &str,
    extra: &[&str],
) -> Service {
    let url = format!("sqlite://{}?mode=rwc", dir.join(db).display());
    let mut args = s(&["recorder", "--database-url", &url, "--group", group, "--min-score", "0.1"]);
    args.extend(s(extra));
    start(t, dir, name, &args)
}

/// The changes stored in a recorder database, as `lookout changes --json` prints them.
pub fn changes(dir: &Path, db: &str) -> Vec<Value> {
    if !dir.join(db).exists() {
        return Vec::new(); // the recorder has not created it yet
    }
    let url = format!("sqlite://{}?mode=rwc", dir.join(db).display());
    let out = Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(["changes", "--database-url", &url, "--json", "-n", "1000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "lookout changes: {}", String::from_utf8_lossy(&out.stderr));
    let mut v: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    v.sort_by_key(|c| c["frame_sequence"].as_u64());
    v
}

/// Polls `check` until it holds (a bounded wait for the pipeline to get there).
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + EVENT_TIMEOUT * 2;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(250));
    }
}

/// Reads the viewer's server-sent events until one satisfies `want`.
pub fn sse_until(port: u16, want: impl Fn(&Value) -> bool) -> Value {
    let mut stream =
        eventually("the viewer to listen", || TcpStream::connect(("127.0.0.1", port)).ok());
    write!(stream, "GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    stream.set_read_timeout(Some(EVENT_TIMEOUT * 2)).unwrap();
    let deadline = Instant::now() + EVENT_TIMEOUT * 2;
    for line in BufReader::new(stream).lines() {
        let line = line.expect("the event stream stays open");
        assert!(Instant::now() < deadline, "timed out waiting for a matching event");
        if let Some(data) = line.strip_prefix("data:")
            && let Ok(v) = serde_json::from_str::<Value>(data.trim())
            && want(&v)
        {
            return v;
        }
    }
    panic!("the event stream ended");
}

/// Every record of the log shipper's file sink.
pub fn log_records(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        if e.path().extension().is_some_and(|x| x == "jsonl") {
            let mut text = String::new();
            std::fs::File::open(e.path()).unwrap().read_to_string(&mut text).unwrap();
            out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        }
    }
    out
}

#[allow(unsafe_code)] // kill(2): the test plays the user pressing Ctrl-C.
pub fn interrupt(pid: u32) {
    // SAFETY: sends a signal to a child process this test started.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGINT);
    }
}

pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

impl Service {
    /// The service's admin address, from its `starting` log line.
    pub fn admin(&self) -> String {
        let log = self.log.clone().expect("a log");
        eventually(&format!("{}'s admin address", self.name), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let line = text.lines().find(|l| l.contains("starting") && l.contains("admin"))?;
            let plain = strip_ansi(line);
            let at = plain.split("admin=").nth(1)?;
            Some(at.split_whitespace().next()?.trim_matches('"').to_owned())
        })
    }

    /// Whether the process still runs (it has not exited, let alone been restarted).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("the child's status").is_none()
    }

    /// Sends SIGINT and waits for the process to exit cleanly.
    pub fn stop(&mut self) {
        interrupt(self.child.id());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{} stops cleanly: {status}", self.name);
    }

    /// The service's log so far.
    pub fn log_text(&self) -> String {
        self.log.as_ref().and_then(|l| std::fs::read_to_string(l).ok()).unwrap_or_default()
    }
}

/// `line` without terminal colour codes.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `GET path` over HTTP/1.0: (status, body as text), or `None` when nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    http_bytes(addr, path)
        .map(|(status, body)| (status, String::from_utf8_lossy(&body).into_owned()))
}

/// `GET path` over HTTP/1.0: (status, body), or `None` when nothing answers.
pub fn http_bytes(addr: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(EVENT_TIMEOUT)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = String::from_utf8_lossy(&raw[..end]).split_whitespace().nth(1)?.parse().ok()?;
    Some((status, raw[end + 4..].to_vec()))
}

/// Waits until a service's `/readyz` says `ready` (200) or not (503); returns its body.
pub fn wait_ready(service: &Service, admin: &str, ready: bool) -> String {
    eventually(&format!("{} to be ready={ready}", service.name), || {
        let (status, body) = http_get(admin, "/readyz")?;
        ((status == 200) == ready).then_some(body)
    })
}

/// The sum of a Prometheus counter's samples (every label set) on an admin server.
pub fn counter(admin: &str, name: &str) -> u64 {
    let (_, body) = http_get(admin, "/metrics").unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
