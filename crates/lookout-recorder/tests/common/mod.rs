//! Test fixtures: a database per test (SQLite in a temporary folder, or a fresh database on a
//! Postgres server), sample JPEGs, and helpers to publish frames and predictions.
//!
//! Postgres comes from `LOOKOUT_TEST_DATABASE_URL` (an administrator URL; each test creates
//! its own database there) or, when that is unset and `initdb`/`pg_ctl` are installed (on the
//! `PATH` or under `/usr/lib/postgresql/*/bin`), from a throwaway server started in a temporary
//! folder (as user `postgres` when the tests run as root, since `initdb` refuses root) and
//! stopped when the test process ends. With neither, Postgres tests fail, saying how to get
//! one: they never pass without having run.

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, OnceLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lookout_test_util::EVENT_TIMEOUT;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use lookout_proto::v1::{Encoding, Frame, Label, ModelRef, Prediction};
use lookout_recorder::{
    Access, Store,
    detector::{Change, Detector, DetectorConfig, Observation},
    store::{ChangeFilter, StoredChange},
};

pub const MODEL: &str = "test-model";
pub const MODEL_VERSION: &str = "1";

/// A database for one test.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    pub name: &'static str,
    _dir: Option<tempfile::TempDir>,
    server: Option<Arc<PgServer>>,
    /// On a server the tests did not start: (administrator URL, database) to drop at the end.
    drop_from: Option<(String, String)>,
}

impl TestDb {
    /// A SQLite file in a fresh temporary folder.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite://{}/lookout.db?mode=rwc", dir.path().display());
        Self { url, name: "sqlite", _dir: Some(dir), server: None, drop_from: None }
    }

    /// A fresh database on the shared test Postgres; fails the test when there is none.
    pub async fn postgres() -> Self {
        let admin = shared_postgres();
        Self::postgres_on(&admin, None).await
    }

    /// A fresh database on a dedicated throwaway server that the test may stop and start;
    /// fails the test when `initdb`/`pg_ctl` are missing.
    pub async fn postgres_dedicated() -> Self {
        let Some(bin) = postgres_bin() else {
            unavailable("the test stops and starts its own server: initdb and pg_ctl are needed");
        };
        let server = Arc::new(PgServer::start(&bin).unwrap_or_else(|e| panic!("{e}")));
        let admin = server.admin_url();
        Self::postgres_on(&admin, Some(server)).await
    }

    /// A fresh database on the server of an administrator URL.
    pub async fn postgres_on_url(admin: &str) -> Self {
        Self::postgres_on(admin, None).await
    }

    async fn postgres_on(admin: &str, server: Option<Arc<PgServer>>) -> Self {
        use sqlx::Connection as _;
        let name = format!("lookout_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(admin)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test Postgres at {admin}: {e}"));
        let create = format!("CREATE DATABASE {name}");
        sqlx::raw_sql(&create).execute(&mut conn).await.expect("test database created");
        let _ = conn.close().await;
        let drop_from = shared_is_external(admin).then(|| (admin.to_owned(), name.clone()));
        Self { url: with_database(admin, &name), name: "postgres", _dir: None, server, drop_from }
    }

    /// The dedicated server, for tests that stop it.
    pub fn server(&self) -> Option<&PgServer> {
        self.server.as_deref()
    }

    /// Opens the store (applying migrations).
    pub async fn store(&self) -> Store {
        Store::open(&self.url, Access::ReadWrite).await.expect("the test database opens")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.drop_from.take() else { return };
        // Drop is synchronous: a thread with its own runtime removes the database.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                use sqlx::Connection as _;
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::raw_sql(&drop).execute(&mut conn).await.ok()?;
                conn.close().await.ok()
            })
        })
        .join();
    }
}

/// Whether `admin` is the server named by `LOOKOUT_TEST_DATABASE_URL` (outlives the tests).
fn shared_is_external(admin: &str) -> bool {
    std::env::var("LOOKOUT_TEST_DATABASE_URL").is_ok_and(|u| u == admin)
}

/// Replaces the database name of a Postgres URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn unavailable(why: &str) -> ! {
    panic!(
        "no Postgres for this test ({why}): set LOOKOUT_TEST_DATABASE_URL to an administrator \
         URL (e.g. postgres://postgres@127.0.0.1:5432/postgres) or install PostgreSQL (Debian: \
         apt-get install postgresql, which brings initdb and pg_ctl; .ci/run does this)"
    )
}

/// The administrator URL of the Postgres the tests of this process share.
fn shared_postgres() -> String {
    static SHARED: OnceLock<Option<(String, Option<PgServer>)>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        if let Some(url) = std::env::var("LOOKOUT_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty())
        {
            return Some((url, None));
        }
        let bin = postgres_bin()?;
        let server = PgServer::start(&bin).unwrap_or_else(|e| panic!("{e}"));
        Some((server.admin_url(), Some(server)))
    });
    match shared {
        Some((url, _)) => url.clone(),
        None => {
            unavailable("LOOKOUT_TEST_DATABASE_URL is not set and initdb/pg_ctl are not installed")
        }
    }
}

/// The folder holding `initdb` and `pg_ctl`.
pub fn postgres_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    // Newest version first.
    debian.sort_by_key(|p| {
        std::cmp::Reverse(
            p.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    on_path
        .into_iter()
        .chain(debian)
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
}

/// A throwaway Postgres server in a temporary folder.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    run_as: Option<&'static str>,
    durable: bool,
}

impl PgServer {
    /// Creates a cluster and starts it on a free port; a watchdog process stops it and removes
    /// its folder when this test process ends, however it ends.
    pub fn start(bin: &Path) -> Result<Self, String> {
        Self::start_with(bin, false)
    }

    /// Like [`PgServer::start`]; `durable` keeps Postgres' default `fsync=on` (benchmarks),
    /// otherwise it is off (tests: nothing here survives the process anyway).
    pub fn start_with(bin: &Path, durable: bool) -> Result<Self, String> {
        let root = command_output("id", &["-u"]).trim() == "0";
        let run_as = root.then_some("postgres");
        let dir = tempfile::Builder::new()
            .prefix("lookout-pg-")
            .tempdir()
            .map_err(|e| format!("temporary folder: {e}"))?
            .keep();
        if let Some(user) = run_as {
            run(Command::new("chown").arg(format!("{user}:")).arg(&dir), "chown")?;
        }
        let port = free_port();
        let server = Self { bin: bin.to_owned(), dir, port, run_as, durable };
        let data = server.dir.join("data");
        server.pg(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        server.watchdog();
        server.start_again()?;
        Ok(server)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Starts the (stopped) server.
    pub fn start_again(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={} -c max_connections=200",
            self.port,
            self.dir.display(),
            if self.durable { "on" } else { "off" },
        );
        let log = self.dir.join("postgres.log").display().to_string();
        self.pg("pg_ctl", &["-D", &self.data(), "-o", &options, "-l", &log, "-w", "start"])
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) -> Result<(), String> {
        self.pg("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args).current_dir(&self.dir);
        run(&mut cmd, tool)
    }

    fn watchdog(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = match self.run_as {
            Some(user) => format!(
                "runuser -u {user} -- {} -D {} -m immediate stop",
                pg_ctl.display(),
                self.data()
            ),
            None => format!("{} -D {} -m immediate stop", pg_ctl.display(), self.data()),
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            dir = self.dir.display(),
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.pg("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// A sample photo from `samples/` as a small JPEG.
pub fn sample_jpeg(name: &str) -> Vec<u8> {
    static CACHE: OnceLock<std::sync::Mutex<BTreeMap<String, Vec<u8>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(j) = cache.lock().unwrap().get(name) {
        return j.clone();
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples").join(name);
    let image = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let small = image.thumbnail(48, 48).to_rgb8();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 70)
        .encode_image(&small)
        .expect("JPEG encodes");
    cache.lock().unwrap().insert(name.to_owned(), jpeg.clone());
    jpeg
}

/// The photos of the slideshow and the label a classifier gives each.
pub const PHOTOS: &[(&str, &str)] =
    &[("chelsea.png", "tabby"), ("coffee.png", "espresso"), ("rocket.jpg", "missile")];

/// One frame of a scripted camera: its photo and what the predictor says about it.
#[derive(Debug, Clone)]
pub struct Shot {
    pub camera: String,
    pub sequence: u64,
    pub capture_ms: i64,
    pub photo: &'static str,
    pub label: String,
    pub score: f32,
}

impl Shot {
    /// The frame, its JPEG made unique by [`Shot::jpeg`].
    pub fn frame(&self) -> Frame {
        let jpeg = self.jpeg();
        Frame {
            camera_id: self.camera.clone(),
            sequence: self.sequence,
            capture_time: Some(lookout_proto::timestamp_from_millis(self.capture_ms)),
            width: 48,
            height: 48,
            encoding: Encoding::Jpeg.into(),
            data: jpeg.into(),
        }
    }

    /// The frame with this shot's sequence stamped into the JPEG comment, so snapshots of
    /// different frames of the same photo differ.
    pub fn jpeg(&self) -> Vec<u8> {
        let mut jpeg = sample_jpeg(self.photo);
        // Append the sequence after the end-of-image marker: still a valid JPEG for viewers.
        jpeg.extend_from_slice(&self.sequence.to_be_bytes());
        jpeg
    }

    pub fn prediction(&self) -> Prediction {
        let other = if self.label == "tabby" { "tiger cat" } else { "tabby" };
        Prediction {
            camera_id: self.camera.clone(),
            frame_sequence: self.sequence,
            capture_time: Some(lookout_proto::timestamp_from_millis(self.capture_ms)),
            model: Some(ModelRef {
                name: MODEL.into(),
                version: MODEL_VERSION.into(),
                ..Default::default()
            }),
            top_k: vec![
                Label {
                    class_id: class_of(&self.label),
                    name: self.label.clone(),
                    score: self.score,
                },
                Label {
                    class_id: class_of(other),
                    name: other.into(),
                    score: (1.0 - self.score) / 2.0,
                },
            ],
            predictor_instance: "test".into(),
            ..Default::default()
        }
    }

    pub fn observation(&self) -> Observation {
        lookout_recorder::observation(&self.prediction()).expect("valid").1
    }
}

fn class_of(label: &str) -> u32 {
    label.bytes().map(u32::from).sum()
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A slideshow: each photo shown for `per_photo` frames, `rounds` times over, with noise: a
/// one-frame blip of another label now and then, and a low-score frame now and then.
pub fn slideshow(
    camera: &str,
    start_sequence: u64,
    per_photo: usize,
    photos: usize,
    seed: u64,
) -> Vec<Shot> {
    let base_ms = now_ms();
    (0..per_photo * photos)
        .map(|i| {
            let (photo, label) = PHOTOS[(i / per_photo + seed as usize) % PHOTOS.len()];
            let mut label = label.to_owned();
            let mut score = 0.6 + ((i as u64 * 7 + seed) % 30) as f32 / 100.0;
            let phase = i % per_photo;
            if phase == per_photo / 2 && i % 3 == 0 {
                label = "lampshade".into(); // a one-frame blip: not a change
            } else if phase == per_photo / 3 {
                score = 0.1; // too unsure to count
            }
            Shot {
                camera: camera.to_owned(),
                sequence: start_sequence + i as u64,
                // Capture times never run ahead of the real clock (cameras stamp a frame
                // before producing it): a restarted recorder seeks frames by time.
                capture_ms: base_ms + i as i64,
                photo,
                label,
                score,
            }
        })
        .collect()
}

/// What an uninterrupted, in-order run decides for these shots (per camera).
pub fn expected_changes(config: DetectorConfig, shots: &[Shot]) -> Vec<(String, Change)> {
    let mut by_camera: BTreeMap<String, Vec<&Shot>> = BTreeMap::new();
    for s in shots {
        by_camera.entry(s.camera.clone()).or_default().push(s);
    }
    let mut out = Vec::new();
    for (camera, mut shots) in by_camera {
        shots.sort_by_key(|s| s.sequence);
        let mut d = Detector::new(config);
        for s in shots {
            for c in d.offer(s.observation(), Duration::ZERO).changes {
                out.push((camera.clone(), c));
            }
        }
        for c in d.tick(Duration::from_secs(1_000_000)).changes {
            out.push((camera.clone(), c));
        }
    }
    out
}

/// A stored change without its id and times, for comparing runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub camera: String,
    pub sequence: u64,
    pub model: String,
    pub previous: Option<(String, u32)>,
    pub current: (String, u32),
    pub capture_ms: i64,
    pub snapshot: Option<Vec<u8>>,
    pub snapshot_missing: bool,
}

/// Score in thousandths, compared exactly.
fn milli(score: f32) -> u32 {
    (score * 1000.0).round() as u32
}

pub fn expected_rows(expected: &[(String, Change)], shots: &[Shot]) -> Vec<Row> {
    let jpeg_of: BTreeMap<(String, u64), Vec<u8>> =
        shots.iter().map(|s| ((s.camera.clone(), s.sequence), s.jpeg())).collect();
    let mut rows: Vec<Row> = expected
        .iter()
        .map(|(camera, c)| Row {
            camera: camera.clone(),
            sequence: c.sequence,
            model: format!("{MODEL}@{MODEL_VERSION}"),
            previous: c.previous.as_ref().map(|l| (l.name.clone(), milli(l.score))),
            current: (c.current.name.clone(), milli(c.current.score)),
            capture_ms: c.capture_time_ms,
            snapshot: jpeg_of.get(&(camera.clone(), c.sequence)).cloned(),
            snapshot_missing: false,
        })
        .collect();
    rows.sort_by(|a, b| (&a.camera, a.sequence).cmp(&(&b.camera, b.sequence)));
    rows
}

/// Every stored change with its snapshot, ordered by camera and sequence.
pub async fn stored_rows(store: &Store) -> Vec<Row> {
    let changes = store.changes(&ChangeFilter::default()).await.expect("changes listed");
    let mut rows = Vec::new();
    for c in changes {
        rows.push(row_of(store, &c).await);
    }
    rows.sort_by(|a, b| (&a.camera, a.sequence).cmp(&(&b.camera, b.sequence)));
    rows
}

async fn row_of(store: &Store, c: &StoredChange) -> Row {
    let snapshot = match store.snapshot(c.change_id).await.expect("snapshot read") {
        lookout_recorder::store::StoredSnapshot::Jpeg(jpeg) => Some(jpeg),
        _ => None,
    };
    Row {
        camera: c.key.camera_id.clone(),
        sequence: c.frame_sequence,
        model: format!("{}@{}", c.key.model_name, c.key.model_version),
        previous: c.previous.as_ref().map(|l| (l.name.clone(), milli(l.score))),
        current: (c.current.name.clone(), milli(c.current.score)),
        capture_ms: c.capture_time_ms,
        snapshot,
        snapshot_missing: c.snapshot_missing,
    }
}

/// Short description of rows for assertion messages.
pub fn describe(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .map(|r| {
            format!(
                "{}#{} {:?}->{:?} snapshot={} missing={}",
                r.camera,
                r.sequence,
                r.previous.as_ref().map(|p| &p.0),
                r.current.0,
                r.snapshot.as_ref().map_or(0, Vec::len),
                r.snapshot_missing
            )
        })
        .collect()
}

// The recorder binary and its admin server.

/// Kills the child process when the test ends, however it ends.
pub struct Guard(pub Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` on the admin server: (status, body).
pub async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Some((status, body))
}

/// Waits until `/readyz` on `addr` says `ready` (200) or not; returns its body.
pub async fn wait_ready(addr: &str, ready: bool) -> String {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        if let Some((status, body)) = get(addr, "/readyz").await
            && (status == 200) == ready
        {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz did not become ready={ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every stored change, or `None` while the database cannot be read.
pub async fn stored(url: &str) -> Option<Vec<Row>> {
    let store = Store::open(url, Access::ReadOnly).await.ok()?;
    // Fails while the server is down (stored_rows would panic).
    store.changes(&Default::default()).await.ok()?;
    let rows = stored_rows(&store).await;
    store.close().await;
    Some(rows)
}

/// Two cameras' slideshows, interleaved by capture time, and the rows an uninterrupted run
/// stores for them with `--reorder-frames 64 --reorder-timeout 1s` and the other defaults.
pub fn two_cameras() -> (Vec<Shot>, Vec<Row>) {
    let mut shots = slideshow("porch", 1_700_000_000_000_000, 8, 40, 9);
    shots.extend(slideshow("lobby", 1_700_000_300_000_000, 6, 40, 10));
    shots.sort_by_key(|s| (s.capture_ms, s.camera.clone()));
    let detector = DetectorConfig {
        min_frames: 3,
        min_score: 0.3,
        window_frames: 64,
        window_timeout: Duration::from_secs(1),
    };
    let expected = expected_rows(&expected_changes(detector, &shots), &shots);
    (shots, expected)
}

/// Waits until at least `n` changes are stored.
pub async fn wait_stored(url: &str, n: usize) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while stored(url).await.is_none_or(|r| r.len() < n) {
        assert!(Instant::now() < deadline, "fewer than {n} changes stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the stored changes are `expected`; fails showing both and the end of `log`.
pub async fn wait_for_expected(url: &str, expected: &[Row], log: &Path) {
    let deadline = Instant::now() + EVENT_TIMEOUT * 2;
    loop {
        let rows = stored(url).await.unwrap_or_default();
        if rows == expected {
            return;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!(
                "the table is not as expected\n got {:#?}\nwant {:#?}\nlog:\n{}",
                describe(&rows),
                describe(expected),
                log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each shot's frame, then its prediction, at a steady pace (`pause` after every five).
pub async fn stream(t: &lookout_test_util::TestBus, shots: &[Shot], pause: Duration) {
    let bus = t.bus("lookout-test");
    let frames = bus.publisher(&lookout_bus::topics::FRAMES);
    let predictions = bus.publisher(&lookout_bus::topics::PREDICTIONS);
    for (i, s) in shots.iter().enumerate() {
        frames.send(&s.frame()).await.expect("frame delivered");
        predictions.send(&s.prediction()).await.expect("prediction delivered");
        if i % 5 == 4 {
            tokio::time::sleep(pause).await;
        }
    }
}

#[test]
fn database_urls_get_a_new_database_name() {
    assert_eq!(with_database("postgres://u@h:5/postgres", "x"), "postgres://u@h:5/x");
    assert_eq!(
        with_database("postgres://u@h:5/postgres?sslmode=disable", "x"),
        "postgres://u@h:5/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
}
