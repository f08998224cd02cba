//! Two services in separate processes log through the log layer of `lookout_service::main`;
//! `lookout-logship --sink file:DIR` (a third process, and a service itself) writes their
//! records to JSON-lines files with their camera and frame fields, each service's records in
//! the order it logged them, its own records too.
//!
//! The two services are this test binary run again as child processes (the ignored test
//! `emitter_process`): each runs the real `lookout_service::main` with its command-line options,
//! hence the real telemetry set-up, and logs frame events the way the pipeline services do,
//! inside a span carrying `camera_id` and `sequence`.

use std::{
    collections::BTreeMap,
    fs,
    io::Read as _,
    path::Path,
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use clap::Parser as _;
use lookout_service::CommonArgs;
use lookout_test_util::{EVENT_TIMEOUT, TestBus};
use serde_json::Value;

/// Frame events each service logs.
const FRAMES: u64 = 40;
/// Tells the child process its arguments, one per line.
const EMITTER_ARGS: &str = "LOOKOUT_TEST_EMITTER_ARGS";

/// Kills the child when the test ends, however it ends.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A command with none of the caller's `LOOKOUT_*` settings.
fn clean(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LOOKOUT_") {
            c.env_remove(key);
        }
    }
    c.env("RUST_LOG", "warn");
    c
}

#[derive(Debug, clap::Parser)]
struct EmitterArgs {
    #[arg(long)]
    service: String,
    #[arg(long)]
    camera: String,
    #[command(flatten)]
    common: CommonArgs,
}

/// The emitting service, when this binary runs as a child of the test below.
#[test]
#[ignore = "a child process of two_services_log_into_one_file_sink"]
fn emitter_process() {
    let Ok(lines) = std::env::var(EMITTER_ARGS) else {
        eprintln!("run by two_services_log_into_one_file_sink only");
        return;
    };
    let argv = std::iter::once("emitter").chain(lines.lines());
    let args = EmitterArgs::try_parse_from(argv).expect("valid emitter arguments");
    let service: &'static str = Box::leak(args.service.into_boxed_str());
    let camera = args.camera;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let code = runtime.block_on(lookout_service::main(service, args.common, |_svc| async move {
        for sequence in 0..FRAMES {
            let frame = tracing::info_span!("frame", camera_id = %camera, sequence);
            let _entered = frame.enter();
            tracing::info!(label = "cat", score = 0.875, "frame labelled");
        }
        Ok(())
    }));
    assert_eq!(code, ExitCode::SUCCESS);
}

fn emitter(t: &TestBus, service: &str, camera: &str, instance: &str) -> Guard {
    let mut lines = vec![
        "--service".to_owned(),
        service.to_owned(),
        "--camera".to_owned(),
        camera.to_owned(),
        "--instance".to_owned(),
        instance.to_owned(),
    ];
    lines.extend(t.child_args());
    let child = clean(std::env::current_exe().unwrap())
        .args(["emitter_process", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
        .env(EMITTER_ARGS, lines.join("\n"))
        .stdout(Stdio::null())
        .spawn()
        .expect("the emitter starts");
    Guard(child)
}

/// Complete lines of every JSON-lines file of `dir`, plain or compressed, in file order.
fn file_records(dir: &Path) -> Vec<Value> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let mut text = String::new();
        if name.ends_with(".jsonl.gz") {
            let file = fs::File::open(&p).unwrap();
            flate2::read::GzDecoder::new(file).read_to_string(&mut text).unwrap();
        } else if name.ends_with(".jsonl") {
            text = fs::read_to_string(&p).unwrap_or_default();
        }
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        out.extend(complete.lines().map(|l| serde_json::from_str::<Value>(l).expect("JSON")));
    }
    out
}

fn wait_exit(mut child: Guard) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "the service exits cleanly: {status}");
            return;
        }
        assert!(Instant::now() < deadline, "the service did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_log_into_one_file_sink() {
    let t = TestBus::start();
    t.create_registry_topics().await;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("logs");

    let _shipper = Guard(
        clean(env!("CARGO_BIN_EXE_lookout-logship"))
            .args(["--sink", &format!("file:{}", dir.display()), "--instance", "shipper-1"])
            .args(t.child_args())
            .stdout(Stdio::null())
            .spawn()
            .expect("the shipper starts"),
    );
    let a = emitter(&t, "lookout-emitter-a", "porch", "a-1");
    let b = emitter(&t, "lookout-emitter-b", "garage", "b-1");
    tokio::task::spawn_blocking(move || {
        wait_exit(a);
        wait_exit(b);
    })
    .await
    .unwrap();

    // Every frame event of both services, and the shipper's own start, reach the files.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let records = loop {
        let records = file_records(&dir);
        let frames = records.iter().filter(|r| r["message"] == "frame labelled").count();
        let shipper_started =
            records.iter().any(|r| r["service"] == "lookout-logship" && r["message"] == "starting");
        if frames >= 2 * FRAMES as usize && shipper_started {
            break records;
        }
        assert!(Instant::now() < deadline, "{frames} frame records so far");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let mut by_service: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in &records {
        by_service.entry(r["service"].as_str().unwrap().to_owned()).or_default().push(r);
    }
    for (service, camera, instance) in
        [("lookout-emitter-a", "porch", "a-1"), ("lookout-emitter-b", "garage", "b-1")]
    {
        let own = &by_service[service];
        assert_eq!(
            own[0]["message"], "starting",
            "{service}: lookout_service::main's records come first"
        );
        assert_eq!(own[0]["fields"]["ship_logs"], "true");
        let frames: Vec<&&Value> =
            own.iter().filter(|r| r["message"] == "frame labelled").collect();
        for r in &frames {
            assert_eq!(r["camera_id"], camera, "{r}");
            assert_eq!(r["instance"], instance);
            assert_eq!(r["level"], "info");
            assert_eq!(r["fields"]["label"], "cat");
            assert_eq!(r["fields"]["score"], "0.875");
            assert!(r["time"].as_str().unwrap().ends_with('Z'));
        }
        // At least once: a re-delivery would repeat records; the first occurrences must be
        // every frame, in the order the service logged them.
        let mut seen = std::collections::BTreeSet::new();
        let order: Vec<u64> = frames
            .iter()
            .map(|r| r["frame_sequence"].as_u64().expect("frame_sequence kept as a number"))
            .filter(|s| seen.insert(*s))
            .collect();
        assert_eq!(order, (0..FRAMES).collect::<Vec<_>>(), "{service}: in order, none missing");
        assert_eq!(
            own.last().unwrap()["message"],
            "stopped",
            "{service}: its last record is its stop"
        );
    }
    assert!(
        !records.iter().any(|r| r["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("rdkafka") || t.starts_with("librdkafka"))),
        "the Kafka client's own logs are never shipped"
    );
}
