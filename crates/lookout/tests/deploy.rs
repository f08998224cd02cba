//! The deployment files, run. Every Lookout service that `docker-compose.yml` starts, and every
//! Deployment and Job of the rendered Kubernetes manifests, is started here as a local process
//! with the command and environment those files give its container: the image's `ENV` (from
//! `deploy/docker/Dockerfile`), then the compose `environment`, or the Kubernetes `envFrom`
//! ConfigMaps and Secrets and `env`. Only what names another host or the container's file system
//! is pointed at this machine:
//!
//! - `LOOKOUT_BROKERS` → the test's embedded broker (its own topic prefix in
//!   `LOOKOUT_TOPIC_PREFIX`);
//! - `LOOKOUT_DATABASE_URL` → the CI Postgres (`LOOKOUT_TEST_DATABASE_URL`, default
//!   `postgres://postgres@127.0.0.1:5432/postgres`, trust authentication): same user and
//!   password, a fresh database per test;
//! - `0.0.0.0:PORT` listen addresses → `127.0.0.1` with a free port (every container has its
//!   own network; here they share one);
//! - `/opt/lookout/…` (the image's models and samples) → this checkout, and the program
//!   `lookout` → the `lookout` binary cargo built.
//!
//! Everything else, empty values included, is passed as the files say. Kubernetes runs
//! `deploy/k8s/overlays/samples`: the base with the sample photos as the camera, since the
//! base's RTSP placeholder has no camera behind it; and `deploy/k8s/overlays/site`, whose camera
//! captures the cameras of `deploy/site/lookout.toml`, mounted from a ConfigMap at
//! `/opt/lookout/deploy/site/` (here: the checkout's copy of that file, at the same place). They
//! are rendered by `kubectl kustomize`, as `deploy/check.sh` does.
//!
//! The embedded broker cannot create topics over the admin API (librdkafka's mock cluster
//! times out), so the test creates the registry's topics first, as `lookout broker` does; the
//! topics job (`lookout topics --create`) then finds them and must still succeed. Then every
//! long-running service must report ready on `/readyz`, and a labelled frame must reach the
//! viewer's HTTP API.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

/// The image's copy of the checkout's `models/` and `samples/`.
const IMAGE_ROOT: &str = "/opt/lookout/";

/// Lines of a service's output shown when the test fails.
const LOG_TAIL: usize = 30;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

/// One container of the deployment files: its name, command line and environment.
#[derive(Debug, Clone)]
struct Container {
    name: String,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    /// Runs to completion (the topics job) instead of staying up.
    one_shot: bool,
}

/// A YAML scalar as an environment value (compose allows numbers and booleans).
fn scalar(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Null => String::new(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().map(scalar).collect()).unwrap_or_default()
}

/// The `ENV` instructions of the runtime image.
fn image_env() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo("deploy/docker/Dockerfile")).unwrap();
    let runtime = text.split("AS runtime").nth(1).expect("the Dockerfile has a runtime stage");
    let joined = runtime.replace("\\\n", " ");
    let mut env = BTreeMap::new();
    for line in joined.lines().filter_map(|l| l.trim().strip_prefix("ENV ")) {
        for pair in line.split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
            env.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
    }
    assert!(env.contains_key("LOOKOUT_MODEL"), "the image names its model: {env:?}");
    env
}

/// The Lookout services `docker compose up` starts (no profile), with the topics job.
fn compose() -> Vec<Container> {
    let text = std::fs::read_to_string(repo("docker-compose.yml")).unwrap();
    let mut doc: Yaml = serde_norway::from_str(&text).expect("docker-compose.yml parses");
    doc.apply_merge().expect("merge keys resolve");
    let services = doc["services"].as_mapping().expect("services");
    let mut out = Vec::new();
    for (name, svc) in services {
        let name = scalar(name);
        let lookout_image = svc["image"].as_str().is_some_and(|i| i.starts_with("lookout:"));
        if !lookout_image || svc.get("profiles").is_some() {
            continue;
        }
        let mut env = image_env();
        if let Some(vars) = svc.get("environment").and_then(Yaml::as_mapping) {
            for (k, v) in vars {
                env.insert(scalar(k), scalar(v));
            }
        }
        let one_shot = svc["restart"].as_str() == Some("no");
        out.push(Container { name, argv: strings(&svc["command"]), env, one_shot });
    }
    out
}

/// The Deployments and Jobs of a kustomization, rendered by `kubectl kustomize`.
fn kubernetes(kustomization: &str) -> Vec<Container> {
    let out = Command::new("kubectl")
        .args(["kustomize", &repo(kustomization).display().to_string()])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubectl renders deploy/k8s ({e}); install kubectl (deploy/check.sh needs it too)"
            )
        });
    assert!(out.status.success(), "kubectl kustomize: {}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<Yaml> = serde_norway::Deserializer::from_slice(&out.stdout)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML"))
        .collect();
    let data = |kind: &str, name: &str| -> BTreeMap<String, String> {
        let doc = docs
            .iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("{kind} {name} is not in the rendered manifests"));
        let mut vars = BTreeMap::new();
        for key in ["data", "stringData"] {
            for (k, v) in doc.get(key).and_then(Yaml::as_mapping).into_iter().flatten() {
                vars.insert(scalar(k), scalar(v));
            }
        }
        vars
    };
    let mut containers = Vec::new();
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if kind != "Deployment" && kind != "Job" {
            continue;
        }
        let pod_name = format!("{}-0", doc["metadata"]["name"].as_str().unwrap());
        for c in doc["spec"]["template"]["spec"]["containers"].as_sequence().unwrap() {
            let mut env = image_env();
            for from in c.get("envFrom").and_then(Yaml::as_sequence).into_iter().flatten() {
                if let Some(name) = from["configMapRef"]["name"].as_str() {
                    env.extend(data("ConfigMap", name));
                }
                if let Some(name) = from["secretRef"]["name"].as_str() {
                    env.extend(data("Secret", name));
                }
            }
            for var in c.get("env").and_then(Yaml::as_sequence).into_iter().flatten() {
                let value = match (&var["value"], &var["valueFrom"]["fieldRef"]["fieldPath"]) {
                    (Yaml::String(v), _) => v.clone(),
                    (_, Yaml::String(path)) if path == "metadata.name" => pod_name.clone(),
                    other => panic!("an env value the test does not know: {other:?}"),
                };
                env.insert(scalar(&var["name"]), value);
            }
            let mut argv = strings(&c["command"]);
            argv.extend(strings(&c["args"]));
            containers.push(Container {
                name: doc["metadata"]["name"].as_str().unwrap().to_owned(),
                argv,
                env,
                one_shot: kind == "Job",
            });
        }
    }
    containers
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fresh database on the CI Postgres, owned by the user the deployment's URL names; dropped
/// at the end.
struct Database {
    admin: String,
    name: String,
    rt: tokio::runtime::Runtime,
}

impl Database {
    fn create(owner: &str) -> Self {
        use sqlx::Connection as _;
        let admin = std::env::var("LOOKOUT_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = format!("lookout_deploy_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                panic!(
                    "the deploy smoke test needs Postgres at {admin} (trust authentication; \
                     set LOOKOUT_TEST_DATABASE_URL for another): {e}"
                )
            });
            // Roles are shared by every database of the server; another test may create it
            // at the same moment, so "already exists" is fine.
            let role = format!("CREATE ROLE {owner} LOGIN");
            if let Err(e) = sqlx::raw_sql(&role).execute(&mut conn).await {
                assert!(e.to_string().contains("already exists"), "{role}: {e}");
            }
            let create = format!("CREATE DATABASE {name} OWNER {owner}");
            sqlx::raw_sql(&create).execute(&mut conn).await.expect("test database created");
            conn.close().await.unwrap();
        });
        Self { admin, name, rt }
    }

    /// `url` (the deployment's database URL) on this server and database.
    fn point(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a database URL");
        let (userinfo, _) = rest.rsplit_once('@').expect("the deployment's URL names a user");
        let admin_host = self.admin.split_once("://").unwrap().1;
        let host = admin_host.rsplit_once('@').map_or(admin_host, |(_, h)| h);
        let host = host.split(['/', '?']).next().unwrap();
        format!("{scheme}://{userinfo}@{host}/{}", self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        use sqlx::Connection as _;
        let _ = self.rt.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&self.admin).await?;
            let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            sqlx::raw_sql(&drop).execute(&mut conn).await?;
            conn.close().await
        });
    }
}

/// A started container: its process, admin address and output file. Killed when dropped;
/// when the test fails, the end of its output is printed.
struct Running {
    name: String,
    child: Child,
    admin: String,
    log: PathBuf,
}

impl Running {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn tail(&self) -> String {
        let text = self.output();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("---- last lines of {}:\n{}", self.name, self.tail());
        }
    }
}

/// Where the test runs the deployment: its broker, database and addresses.
struct Site {
    bus: TestBus,
    db: Option<Database>,
    dir: tempfile::TempDir,
    viewer: Option<String>,
}

impl Site {
    fn new() -> Self {
        let bus = TestBus::start();
        tokio::runtime::Runtime::new().unwrap().block_on(bus.create_registry_topics());
        Self { bus, db: None, dir: tempfile::tempdir().unwrap(), viewer: None }
    }

    /// Points what names another host or the image's files at this machine; see the module
    /// documentation.
    fn localise(&mut self, c: &Container) -> (Vec<String>, BTreeMap<String, String>, String) {
        let root = format!("{}/", repo("").canonicalize().unwrap().display());
        let local = |s: &str| s.replace(IMAGE_ROOT, &root);
        let listen = |s: &str| match s.strip_prefix("0.0.0.0:") {
            Some(_) => format!("127.0.0.1:{}", free_port()),
            None => s.to_owned(),
        };
        let mut argv: Vec<String> = c.argv.iter().map(|a| local(a)).collect();
        assert_eq!(argv.first().map(String::as_str), Some("lookout"), "{}: {argv:?}", c.name);
        argv[0] = env!("CARGO_BIN_EXE_lookout").to_owned();
        let mut viewer = None;
        for i in 1..argv.len() {
            if argv[i - 1] == "--listen" {
                argv[i] = listen(&argv[i]);
                viewer = Some(argv[i].clone());
            }
        }
        let mut env: BTreeMap<String, String> =
            c.env.iter().map(|(k, v)| (k.clone(), local(v))).collect();
        env.insert("LOOKOUT_BROKERS".into(), self.bus.brokers().to_owned());
        env.insert("LOOKOUT_TOPIC_PREFIX".into(), self.bus.prefix().to_owned());
        let admin = listen(env.get("LOOKOUT_ADMIN_ADDR").map_or("0.0.0.0:9464", String::as_str));
        env.insert("LOOKOUT_ADMIN_ADDR".into(), admin.clone());
        if let Some(addr) = env.get("LOOKOUT_VIEWER_LISTEN").cloned() {
            let addr = listen(&addr);
            env.insert("LOOKOUT_VIEWER_LISTEN".into(), addr.clone());
            viewer = Some(addr);
        }
        if let Some(url) = env.get("LOOKOUT_DATABASE_URL").cloned() {
            let user = url.split_once("://").unwrap().1.split([':', '@']).next().unwrap();
            let db = self.db.get_or_insert_with(|| Database::create(user));
            env.insert("LOOKOUT_DATABASE_URL".into(), db.point(&url));
        }
        if viewer.is_some() {
            self.viewer = viewer;
        }
        (argv, env, admin)
    }

    fn start(&mut self, c: &Container) -> Running {
        let (argv, env, admin) = self.localise(c);
        spawn(self.dir.path(), &c.name, &argv, &env, admin)
    }
}

/// Starts `argv` with nothing in its environment but `env` and `PATH`, output to a file in `dir`.
fn spawn(
    dir: &Path,
    name: &str,
    argv: &[String],
    env: &BTreeMap<String, String>,
    admin: String,
) -> Running {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("{name} starts: {e}"));
    Running { name: name.to_owned(), child, admin, log }
}

/// `GET path` on `addr`: the status code and body.
fn http_get(addr: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(EVENT_TIMEOUT)).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Some((status, body))
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..eol]).trim(), 16)
            .unwrap_or_default();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
    out
}

/// Waits until `check` holds, failing as soon as one of `running` exits. A bounded wait for
/// the deployment to get there, polled as a probe would.
fn until<T>(what: &str, running: &mut [Running], mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + EVENT_TIMEOUT * 2;
    loop {
        if let Some(v) = check() {
            return v;
        }
        for r in running.iter_mut() {
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!("{} exited ({status}) while waiting for {what}:\n{}", r.name, r.tail());
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(250));
    }
}

/// Runs the one-shot containers to completion, then starts the others and waits for each to
/// be ready and for a labelled frame of camera `camera` on the viewer.
fn run_deployment(what: &str, containers: &[Container], camera: &str) -> (Site, Vec<Running>) {
    let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    for service in ["camera", "predictor", "viewer", "recorder", "logship", "topics"] {
        assert!(names.iter().any(|n| n.contains(service)), "{what} has no {service}: {names:?}");
    }
    let mut site = Site::new();
    for c in containers.iter().filter(|c| c.one_shot) {
        let mut job = site.start(c);
        let started = Instant::now();
        let status = loop {
            if let Some(status) = job.child.try_wait().unwrap() {
                break status;
            }
            assert!(started.elapsed() < EVENT_TIMEOUT, "{} did not finish", c.name);
            thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "{what}: {} failed ({status}):\n{}", c.name, job.tail());
    }
    let mut running: Vec<Running> =
        containers.iter().filter(|c| !c.one_shot).map(|c| site.start(c)).collect();
    for i in 0..running.len() {
        let (name, admin) = (running[i].name.clone(), running[i].admin.clone());
        until(&format!("{what}: {name} to be ready"), &mut running, || {
            http_get(&admin, "/readyz").filter(|(status, _)| *status == 200)
        });
    }
    let viewer = site.viewer.clone().expect("the viewer listens on an address");
    until(&format!("{what}: a labelled frame of {camera} on the viewer"), &mut running, || {
        let (_, body) = http_get(&viewer, "/api/cameras")?;
        let cameras: Json = serde_json::from_slice(&body).ok()?;
        let mut cameras = cameras.as_array()?.iter();
        cameras.find(|c| c["id"] == camera && c["label"]["name"].as_str().is_some()).cloned()
    });
    let (status, jpeg) = http_get(&viewer, &format!("/cameras/{camera}/snapshot.jpg")).unwrap();
    assert_eq!(status, 200);
    assert_eq!(jpeg[..2], [0xff, 0xd8], "the snapshot is a JPEG");
    // Metrics are checked with a stream client connected, so the viewer's client metrics exist.
    let mut watcher = TcpStream::connect(&viewer).unwrap();
    write!(watcher, "GET /cameras/{camera}/stream.mjpeg HTTP/1.1\r\nHost: {viewer}\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 256];
    assert!(watcher.read(&mut first).unwrap() > 0, "the stream starts");
    for r in &running {
        check_metrics(&r.name, &r.admin);
    }
    (site, running)
}

/// `promtool`: on the `PATH` (`.ci/run` installs it from Debian's `prometheus` package).
fn promtool() -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
        .expect(
            "promtool checks the metrics' names: install it (Debian's prometheus package; \
             .ci/run installs only its promtool)",
        )
}

/// A service's `/metrics` keeps Prometheus' naming rules (`promtool check metrics`), every
/// histogram has buckets (no summaries, which cannot be added up across replicas), and no
/// family's name is another's with `_total` cut off (a gauge `x` and a counter `x_total`).
fn check_metrics(name: &str, admin: &str) {
    let (status, body) = http_get(admin, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{name} /metrics");
    let text = String::from_utf8(body).unwrap();
    let mut lint = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    // promtool exits 3 for lint problems and lists them; a missing help text is documentation,
    // not a name, and is left to the `describe_*` calls of each crate.
    let report =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let problems: Vec<&str> =
        report.lines().filter(|l| !l.trim().is_empty() && !l.ends_with("no help text")).collect();
    assert!(
        matches!(out.status.code(), Some(0 | 3)) && problems.is_empty(),
        "{name}: promtool check metrics ({}): {}",
        out.status,
        problems.join("\n")
    );
    let types: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert!(!types.is_empty(), "{name} exports its metrics");
    for (family, kind) in &types {
        assert_ne!(*kind, "summary", "{name}: {family} is a summary, not a histogram");
        if *kind == "histogram" {
            assert!(text.contains(&format!("{family}_bucket{{")), "{name}: {family} has buckets");
        }
        if let Some(base) = family.strip_suffix("_total") {
            assert!(!types.contains_key(base), "{name}: {family} and {base} share a family");
        }
    }
}

#[test]
fn docker_compose_runs_and_shows_a_labelled_frame() {
    let containers = compose();
    run_deployment("docker-compose.yml", &containers, "samples");
}

#[test]
fn kubernetes_manifests_run_and_show_a_labelled_frame() {
    let containers = kubernetes("deploy/k8s/overlays/samples");
    run_deployment("deploy/k8s/overlays/samples", &containers, "samples");
}

#[test]
fn kubernetes_site_overlay_captures_every_camera_of_the_site_file() {
    let overlay = "deploy/k8s/overlays/site";
    let containers = kubernetes(overlay);
    let camera = containers.iter().find(|c| c.name == "lookout-camera").unwrap();
    assert_eq!(
        camera.env.get("LOOKOUT_CAMERA_CONFIG").map(String::as_str),
        Some("/opt/lookout/deploy/site/lookout.toml"),
        "the camera reads the site file where the ConfigMap is mounted: {:?}",
        camera.env
    );
    assert!(!camera.env.contains_key("LOOKOUT_CAMERA_SOURCE"), "{:?}", camera.env);
    let (site, mut running) = run_deployment(overlay, &containers, "lobby");
    let viewer = site.viewer.clone().unwrap();
    until("every camera of deploy/site/lookout.toml on the viewer", &mut running, || {
        let (_, body) = http_get(&viewer, "/api/cameras")?;
        let cameras: Json = serde_json::from_slice(&body).ok()?;
        let mut ids: Vec<&str> =
            cameras.as_array()?.iter().filter_map(|c| c["id"].as_str()).collect();
        ids.sort_unstable();
        (ids == ["kitchen", "lobby", "pattern"]).then_some(())
    });
}

/// The environment variables a command reads, as its `--help` lists them (`[env: NAME=…]`).
fn variables(command: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(command)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "{command:?} --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let vars: Vec<String> = help
        .split("[env: ")
        .skip(1)
        .map(|s| s.split([']', '=']).next().unwrap().to_owned())
        .collect();
    assert!(vars.iter().any(|v| v == "LOOKOUT_KAFKA_OPTS"), "{command:?}: {help}");
    vars
}

#[test]
fn every_service_takes_an_empty_variable_for_unset() {
    let mut site = Site::new();
    let t = site.bus.clone();
    let dir = site.dir.path().to_owned();
    let model = repo("models/efficientnet-lite0/model.toml").display().to_string();
    let db = format!("sqlite://{}?mode=rwc", dir.join("lookout.db").display());
    let services: [(&str, Vec<&str>); 5] = [
        ("camera", vec!["--source", "synthetic", "--fps", "2"]),
        ("predictor", vec!["--model", &model]),
        ("viewer", vec!["--listen", "127.0.0.1:0"]),
        ("recorder", vec!["--database-url", &db]),
        ("logship", vec!["--sink", "stdout"]),
    ];
    let at = |extra: &[&str]| -> Vec<String> {
        let mut argv = vec![env!("CARGO_BIN_EXE_lookout").to_owned()];
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        argv.extend(["--brokers".into(), t.brokers().to_owned()]);
        argv.extend(["--topic-prefix".into(), t.prefix().to_owned()]);
        argv
    };
    // Every variable a command reads is set, and empty.
    let empty = |command: &str| -> BTreeMap<String, String> {
        variables(&[command]).into_iter().map(|v| (v, String::new())).collect()
    };

    let mut topics = spawn(&dir, "topics", &at(&["topics"]), &empty("topics"), String::new());
    let status = topics.child.wait().unwrap();
    assert!(status.success(), "lookout topics with empty variables: {}", topics.output());

    let mut running = Vec::new();
    for (service, args) in services {
        let admin = format!("127.0.0.1:{}", free_port());
        let mut argv = at(&[&[service], &args[..]].concat());
        argv.extend(["--admin-addr".into(), admin.clone()]);
        running.push(spawn(&dir, service, &argv, &empty(service), admin));
    }
    for i in 0..running.len() {
        let (name, admin) = (running[i].name.clone(), running[i].admin.clone());
        until(&format!("{name} with empty variables to be ready"), &mut running, || {
            http_get(&admin, "/readyz").filter(|(status, _)| *status == 200)
        });
    }
    drop(site.db.take());
}

/// Passwords planted in a deployment's configuration; none may show in any output.
const RTSP_PASSWORD: &str = "rtsp-pw-Q7x1";
const HTTP_PASSWORD: &str = "http-pw-Z9k2";
const DB_PASSWORD: &str = "db-pw-M4v8";
const SASL_PASSWORD: &str = "sasl-pw-R2d5";
const ES_API_KEY: &str = "es-key-T6w3";
const PLANTED: [&str; 5] = [RTSP_PASSWORD, HTTP_PASSWORD, DB_PASSWORD, SASL_PASSWORD, ES_API_KEY];

/// Serves `body` (an MPEG-TS video) over HTTP to clients that send basic-auth credentials,
/// paced over about `duration` so the stream stays open; answers 401 to the others, as a camera
/// does. Returns the address and the credentials each request carried.
fn serve_stream(
    body: Vec<u8>,
    duration: Duration,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use base64::Engine as _;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let (body, log) = (body.clone(), log.clone());
            thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let auth = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    let b64 = v.trim().strip_prefix("Basic ")?;
                    k.eq_ignore_ascii_case("authorization").then(|| {
                        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
                        String::from_utf8(raw).ok()
                    })?
                });
                let Some(auth) = auth else {
                    let _ = stream.write_all(
                        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"camera\"\r\n\
                          Content-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                };
                log.lock().unwrap().push(auth);
                let header = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(header.as_bytes());
                // Paced like a live camera: the stream, and ffmpeg reading it, stay up.
                let pieces = 50;
                for chunk in body.chunks(body.len().div_ceil(pieces)) {
                    if stream.write_all(chunk).is_err() {
                        return;
                    }
                    thread::sleep(duration / pieces as u32);
                }
            });
        }
    });
    (addr, seen)
}

/// The command lines of `pid`'s child processes.
fn children_command_lines(pid: u32) -> Vec<String> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|c| std::fs::read(format!("/proc/{c}/cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .collect()
}

#[test]
fn a_planted_password_appears_in_no_service_output() {
    let site = Site::new();
    let dir = site.dir.path().to_owned();
    let clip = dir.join("clip.ts");
    let made = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=5"])
        .args(["-t", "20", "-c:v", "mpeg2video", "-f", "mpegts"])
        .arg(&clip)
        .status()
        .expect("ffmpeg runs (the camera's streams need it)");
    assert!(made.success());
    let (http, credentials) = serve_stream(std::fs::read(&clip).unwrap(), Duration::from_secs(20));
    // Nothing listens there: ffmpeg fails and the camera reconnects, logging each attempt.
    let closed = format!("127.0.0.1:{}", free_port());
    let db = Database::create("lookout");
    let db_url = db.point(&format!("postgres://lookout:{DB_PASSWORD}@db/lookout"));
    let model = repo("models/efficientnet-lite0/model.toml").display().to_string();

    let base: BTreeMap<String, String> = [
        ("LOOKOUT_BROKERS", site.bus.brokers().to_owned()),
        ("LOOKOUT_TOPIC_PREFIX", site.bus.prefix().to_owned()),
        ("LOOKOUT_KAFKA_OPTS", format!("sasl.password={SASL_PASSWORD}")),
        ("LOOKOUT_LOGSHIP_ES_API_KEY", ES_API_KEY.to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let with = |extra: &[(&str, String)]| {
        let mut env = base.clone();
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        env
    };
    let http_source = format!("http://viewer:{HTTP_PASSWORD}@{http}/live.ts");
    let rtsp_source = format!("rtsp://admin:{RTSP_PASSWORD}@{closed}/stream1");
    let viewer = format!("127.0.0.1:{}", free_port());
    let plan: Vec<(&str, Vec<&str>, BTreeMap<String, String>)> = vec![
        ("logship", vec!["logship", "--sink", "stdout"], with(&[])),
        ("recorder", vec!["recorder"], with(&[("LOOKOUT_DATABASE_URL", db_url.clone())])),
        ("viewer", vec!["viewer", "--listen", &viewer], with(&[])),
        ("predictor", vec!["predictor", "--model", &model, "--max-frame-age", "0"], with(&[])),
        (
            "camera-http",
            vec!["camera", "--camera-id", "door"],
            with(&[("LOOKOUT_CAMERA_SOURCE", http_source.clone())]),
        ),
        ("camera-rtsp", vec!["camera"], with(&[("LOOKOUT_CAMERA_SOURCE", rtsp_source.clone())])),
    ];
    let mut running = Vec::new();
    for (name, args, env) in &plan {
        let admin = format!("127.0.0.1:{}", free_port());
        let mut argv = vec![env!("CARGO_BIN_EXE_lookout").to_owned()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        argv.extend(["--admin-addr".to_owned(), admin.clone()]);
        running.push(spawn(&dir, name, &argv, env, admin));
    }
    let ready: Vec<(String, String)> = running
        .iter()
        .filter(|r| r.name != "camera-rtsp")
        .map(|r| (r.name.clone(), r.admin.clone()))
        .collect();
    for (name, admin) in ready {
        until(&format!("{name} to be ready"), &mut running, || {
            http_get(&admin, "/readyz").filter(|(status, _)| *status == 200)
        });
    }
    // The HTTP camera's frames reach the viewer, labelled: its credentials reached the camera.
    until("the HTTP camera's frames on the viewer", &mut running, || {
        let (_, body) = http_get(&viewer, "/api/cameras")?;
        let cameras: Json = serde_json::from_slice(&body).ok()?;
        cameras
            .as_array()?
            .iter()
            .find(|c| c["id"] == "door" && c["label"]["name"].is_string())
            .cloned()
    });
    assert!(
        credentials.lock().unwrap().iter().any(|c| *c == format!("viewer:{HTTP_PASSWORD}")),
        "ffmpeg sent the stream's credentials"
    );
    let camera_pid = running.iter().find(|r| r.name == "camera-http").unwrap().child.id();
    let ffmpeg = until("the HTTP camera's ffmpeg", &mut running, || {
        children_command_lines(camera_pid).into_iter().find(|c| c.contains("ffmpeg"))
    });
    let rtsp_log = running.iter().find(|r| r.name == "camera-rtsp").unwrap().log.clone();
    until("the RTSP camera's reconnection", &mut running, || {
        let text = std::fs::read_to_string(&rtsp_log).ok()?;
        text.contains("reconnecting").then_some(())
    });

    // Everything the services show: their output, metrics and API, --help and a usage error.
    let mut shown: Vec<(String, String)> = vec![("ffmpeg's command line".into(), ffmpeg)];
    for r in &running {
        shown.push((format!("{} output", r.name), r.output()));
        let metrics = http_get(&r.admin, "/metrics").map(|(_, b)| b).unwrap_or_default();
        shown.push((format!("{} /metrics", r.name), String::from_utf8_lossy(&metrics).into()));
    }
    for path in ["/api/cameras", "/api/changes"] {
        let (_, body) = http_get(&viewer, path).unwrap();
        shown.push((format!("viewer {path}"), String::from_utf8_lossy(&body).into()));
    }
    let all_secrets = with(&[
        ("LOOKOUT_CAMERA_SOURCE", rtsp_source.clone()),
        ("LOOKOUT_DATABASE_URL", db_url.clone()),
    ]);
    for command in [
        &["camera"][..],
        &["predictor"],
        &["viewer"],
        &["recorder"],
        &["logship"],
        &["topics"],
        &["changes"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_lookout"))
            .args(command)
            .arg("--help")
            .env_clear()
            .envs(&all_secrets)
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(help.contains("[env: LOOKOUT_"), "{command:?} --help names its variables");
        shown.push((format!("lookout {} --help", command.join(" ")), help));
    }
    let bad = [("LOOKOUT_DATABASE_URL", format!("mysql://lookout:{DB_PASSWORD}@db/x"))];
    let refused = Command::new(env!("CARGO_BIN_EXE_lookout"))
        .arg("recorder")
        .env_clear()
        .envs(with(&bad))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(64), "a database URL the recorder cannot use");
    shown.push(("a usage error".into(), String::from_utf8_lossy(&refused.stderr).into()));

    assert!(shown.iter().any(|(_, s)| s.contains("rtsp://admin:***@")), "sources show masked");
    for (what, text) in &shown {
        for secret in PLANTED {
            assert!(!text.contains(secret), "{what} shows the planted {secret}:\n{text}");
        }
    }
    drop(running);
    drop(db);
}
