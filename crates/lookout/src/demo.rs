//! `lookout demo`: the whole pipeline on this machine, with nothing installed.
//!
//! The embedded broker runs in this process; every service runs as its own OS process (this
//! same executable with a service subcommand), talking to the others only through Kafka.
//! Services get their own process group, so Ctrl-C reaches only this supervisor, which then
//! stops them in order with one SIGTERM each and waits for them; if the supervisor itself is
//! killed, the kernel sends them SIGTERM (`PR_SET_PDEATHSIG`).

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use lookout_bus::embedded::EmbeddedBroker;
use lookout_service::site::SiteFile;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// How long services get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The recorder's reorder timeout with predictor replicas: above their failover time.
const REPLICA_REORDER_TIMEOUT: &str = "15s";

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// A site file (lookout.toml): its cameras (in one camera process) and its models (each
    /// with its replicas, in its consumer group) instead of the camera and model options; e.g.
    /// deploy/site/lookout.toml.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["source", "hold", "fps", "predictors", "model", "detectors", "detector_model"]
    )]
    config: Option<PathBuf>,

    /// What the camera captures: `images:DIR` (default: the project's sample photos),
    /// `synthetic`, `file:PATH`, `rtsp://…`, `webcam:0`.
    #[arg(long)]
    source: Option<String>,

    /// Seconds each photo of an `images:` slideshow is shown.
    #[arg(long, default_value = "3")]
    hold: String,

    /// Camera frame rate [default: the source's own].
    #[arg(long)]
    fps: Option<u32>,

    /// Classifier replicas (they share the frames, even of one camera). With more than one (of
    /// either model), the recorder waits up to 15 s for a missing prediction, so a crashed
    /// replica costs no change.
    #[arg(long, default_value_t = 1)]
    predictors: usize,

    /// Where the viewer listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    viewer_listen: SocketAddr,

    /// Serve the viewer over HTTPS with this certificate (PEM; with --viewer-tls-key): the
    /// browser speaks HTTP/2 and the page streams every camera live.
    #[arg(long, value_name = "FILE", requires = "viewer_tls_key")]
    viewer_tls_cert: Option<PathBuf>,

    /// The private key of --viewer-tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "viewer_tls_cert")]
    viewer_tls_key: Option<PathBuf>,

    /// Where the embedded broker listens (another free port is used if this one is taken).
    #[arg(long, default_value = "127.0.0.1:9092")]
    broker_listen: SocketAddr,

    /// Folder for the demo's SQLite database, log files and service output.
    #[arg(long, default_value = "lookout-demo")]
    dir: PathBuf,

    /// The classifier's model manifest [default: models/efficientnet-lite0/model.toml of this
    /// checkout].
    #[arg(long)]
    model: Option<PathBuf>,

    /// Object detector replicas, labelling the same frames as the classifier in consumer group
    /// `detector`; 0 runs no detector.
    #[arg(long, default_value_t = 1)]
    detectors: usize,

    /// The detector's model manifest [default: models/ssdlite-mobilenet-v2-coco of this
    /// checkout].
    #[arg(long)]
    detector_model: Option<PathBuf>,
}

/// The manifest `given`, else `default` of the checkout at `root`; it must exist.
fn manifest(
    given: &Option<PathBuf>,
    root: &Path,
    default: &str,
    flag: &str,
) -> anyhow::Result<PathBuf> {
    let model = given.clone().unwrap_or_else(|| root.join(default));
    if !model.exists() {
        bail!(
            "model manifest {} not found: run the demo from the Lookout checkout or pass {flag}",
            model.display()
        );
    }
    Ok(model)
}

fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// One service process.
struct Service {
    name: String,
    admin: SocketAddr,
    child: Child,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    NotReady,
    Exited,
}

/// The camera and the predictors to start: their names and arguments.
struct Plan {
    camera: Vec<String>,
    predictors: Vec<(String, Vec<String>)>,
    /// Whether a model has several replicas (one of them may crash and fail over).
    replicas: bool,
}

impl Plan {
    /// From the command line: one camera, the classifier and the detector.
    fn from_flags(args: &DemoArgs, root: &Path) -> anyhow::Result<Self> {
        let model = manifest(&args.model, root, "models/efficientnet-lite0/model.toml", "--model")?;
        let detector_model = manifest(
            &args.detector_model,
            root,
            "models/ssdlite-mobilenet-v2-coco/model.toml",
            "--detector-model",
        )?;
        let source = match &args.source {
            Some(s) => s.clone(),
            None => format!("images:{}", root.join("samples").display()),
        };
        let mut predictors = Vec::new();
        for i in 0..args.predictors.max(1) {
            let name = if args.predictors > 1 {
                format!("predictor-{}", i + 1)
            } else {
                "predictor".into()
            };
            predictors.push((
                name,
                vec!["predictor".into(), "--model".into(), model.display().to_string()],
            ));
        }
        // The detector: its own consumer group, so it sees every frame the classifier sees.
        for i in 0..args.detectors {
            let name =
                if args.detectors > 1 { format!("detector-{}", i + 1) } else { "detector".into() };
            let detector = detector_model.display().to_string();
            predictors.push((name, s(&["predictor", "--model", &detector, "--group", "detector"])));
        }
        let mut camera =
            vec!["camera".into(), "--source".into(), source, "--hold".into(), args.hold.clone()];
        if let Some(fps) = args.fps {
            camera.extend(["--fps".into(), fps.to_string()]);
        }
        Ok(Self { camera, predictors, replicas: args.predictors > 1 || args.detectors > 1 })
    }

    /// From a site file, checked here first so a bad file stops the demo before anything starts.
    fn from_site(path: &Path) -> anyhow::Result<Self> {
        let path =
            path.canonicalize().with_context(|| format!("cannot read {}", path.display()))?;
        let site = SiteFile::load(&path)?;
        let defaults = lookout_camera::CameraArgs::new(lookout_camera::SourceSpec::Synthetic);
        lookout_camera::site::cameras(&site, &defaults)?;
        let mut predictors = Vec::new();
        for model in &site.models {
            lookout_predictor::model::Model::read_manifest(&model.path)
                .with_context(|| format!("{}: model {}", path.display(), model.path.display()))?;
            for i in 0..model.replicas {
                let name = match model.replicas {
                    1 => model.group.clone(),
                    _ => format!("{}-{}", model.group, i + 1),
                };
                let manifest = model.path.display().to_string();
                predictors
                    .push((name, s(&["predictor", "--model", &manifest, "--group", &model.group])));
            }
        }
        // The site's alert rules, checked now; the alerts stage prints what fires.
        let rules = lookout_alerts::Rules::load(&path)?;
        let file = path.display().to_string();
        if !rules.is_empty() {
            predictors
                .push(("alerts".into(), s(&["alerts", "--config", &file, "--sink", "stdout"])));
        }
        Ok(Self {
            camera: s(&["camera", "--config", &file]),
            predictors,
            replicas: site.models.iter().any(|m| m.replicas > 1),
        })
    }
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    lookout_telemetry::init(lookout_telemetry::LogFormat::Pretty)?;
    let shutdown = lookout_service::shutdown::on_signals();
    let root = checkout_root();
    let Plan { camera, predictors, replicas } = match &args.config {
        Some(path) => Plan::from_site(path)?,
        None => Plan::from_flags(&args, &root)?,
    };
    std::fs::create_dir_all(args.dir.join("logs"))
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;

    let broker = EmbeddedBroker::start()?;
    broker.create_registry_topics("")?;
    crate::replay::create_replay_topic(&broker, "")?;
    // The broker outlives the services: they commit and flush while stopping.
    let broker_stop = CancellationToken::new();
    let brokers = match broker.listen(args.broker_listen, broker_stop.clone()).await {
        Ok(a) => a,
        Err(_) => {
            println!("{} is taken; the broker uses another port", args.broker_listen);
            broker.listen("127.0.0.1:0".parse()?, broker_stop.clone()).await?
        }
    };
    println!("embedded broker on {brokers}  (lookout tap lookout.predictions --brokers {brokers})");

    let exe = std::env::current_exe().context("cannot find the lookout executable")?;
    let db = format!("sqlite://{}?mode=rwc", dir.join("lookout.db").display());
    let logs = format!("file:{}", dir.join("logs").display());
    let mut recorder = vec!["recorder".into(), "--database-url".into(), db];
    if replicas {
        // A crashed replica's frames are labelled again after the group's session timeout:
        // the reorder window waits that out, so the crash costs no change.
        recorder.extend(["--reorder-timeout".into(), REPLICA_REORDER_TIMEOUT.into()]);
    }
    let mut viewer = vec!["viewer".into(), "--listen".into(), args.viewer_listen.to_string()];
    if let (Some(cert), Some(key)) = (&args.viewer_tls_cert, &args.viewer_tls_key) {
        viewer.extend(["--tls-cert".into(), cert.display().to_string()]);
        viewer.extend(["--tls-key".into(), key.display().to_string()]);
    }
    let viewer_url = format!(
        "{}://{}/",
        if args.viewer_tls_cert.is_some() { "https" } else { "http" },
        args.viewer_listen
    );
    let mut plan: Vec<(String, Vec<String>)> = vec![
        ("logship".into(), vec!["logship".into(), "--sink".into(), logs]),
        ("recorder".into(), recorder),
        ("viewer".into(), viewer),
    ];
    plan.extend(predictors);
    plan.push(("camera".into(), camera));

    let mut services = Vec::new();
    for (name, service_args) in plan {
        let admin = free_port()?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = spawn(&exe, &service_args, &brokers.to_string(), &name, admin, log)
            .with_context(|| format!("cannot start {name}"))?;
        services.push(Service { name, admin, child, state: State::Starting });
    }
    println!(
        "services' output: {}/<service>.log; log records: {}/logs/",
        dir.display(),
        dir.display()
    );

    supervise(&mut services, &viewer_url, &shutdown).await;
    stop(&mut services).await;
    broker_stop.cancel();
    drop(broker);
    println!("demo stopped");
    Ok(())
}

/// Prints each service's state as it changes, until Ctrl-C or a service exits.
async fn supervise(services: &mut [Service], viewer: &str, shutdown: &CancellationToken) {
    let mut announced = false;
    loop {
        for s in services.iter_mut() {
            let state = match s.child.try_wait() {
                Ok(Some(status)) => {
                    if s.state != State::Exited {
                        println!("  {:<12} exited ({status}); see its log", s.name);
                    }
                    State::Exited
                }
                _ => match crate::healthcheck::status(&s.admin.to_string(), "/readyz").await {
                    Ok(200) => State::Ready,
                    Ok(_) => State::NotReady,
                    Err(_) => State::Starting,
                },
            };
            if state != s.state && state != State::Exited {
                println!(
                    "  {:<12} {:?}  (admin http://{}/metrics, pid {})",
                    s.name,
                    state,
                    s.admin,
                    s.child.id().unwrap_or(0)
                );
            }
            s.state = state;
        }
        if !announced && services.iter().all(|s| s.state == State::Ready) {
            announced = true;
            println!("\nLookout is running: open {viewer}   (Ctrl-C stops everything)\n");
        }
        if services.iter().any(|s| s.state == State::Exited) {
            println!("a service exited; stopping the demo");
            return;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// One SIGTERM each, newest first (the camera stops before what consumes its frames), then
/// SIGKILL for whatever is still running after the grace period.
async fn stop(services: &mut [Service]) {
    println!("stopping services…");
    for s in services.iter().rev() {
        if let Some(pid) = s.child.id() {
            terminate(pid);
        }
    }
    for s in services.iter_mut().rev() {
        match tokio::time::timeout(STOP_GRACE, s.child.wait()).await {
            Ok(Ok(status)) => println!("  {:<12} stopped ({status})", s.name),
            _ => {
                let _ = s.child.kill().await;
                println!("  {:<12} killed after {STOP_GRACE:?}", s.name);
            }
        }
    }
}

fn spawn(
    exe: &Path,
    args: &[String],
    brokers: &str,
    instance: &str,
    admin: SocketAddr,
    log: std::fs::File,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env("LOOKOUT_BROKERS", brokers)
        .env("LOOKOUT_ADMIN_ADDR", admin.to_string())
        .env("LOOKOUT_INSTANCE", format!("demo-{instance}"))
        .env_remove("LOOKOUT_TOPIC_PREFIX")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    cmd.spawn()
}

#[allow(unsafe_code)] // prctl and kill: no safe wrapper in std.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[allow(unsafe_code)] // see die_with_parent
fn terminate(pid: u32) {
    // SAFETY: sending a signal to a child we started.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The checkout the executable was built in (target/<profile>/lookout → ../..), else the
/// current directory.
fn checkout_root() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    if cwd.join("models").is_dir() {
        return cwd;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent()?.parent().map(Path::to_path_buf))
        .filter(|root| root.join("models").is_dir())
        .unwrap_or(cwd)
}
