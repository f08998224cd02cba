//! The cameras of a site file (`--config lookout.toml`), captured in one process.
//!
//! [`cameras`] turns each `[[camera]]` into the options `--source` and the per-camera flags
//! would give, and checks them as [`CameraArgs::validate`] does, so a bad camera refuses the
//! whole file at start, naming its line. [`run_site`] then runs one task per camera, all
//! publishing through one producer. Each task opens its camera and captures until the source
//! ends or `--frames` were published; when the source fails (or cannot be opened) it opens it
//! again after a pause (0.5 s doubling to 30 s, back to 0.5 s once frames flowed), while the
//! other cameras go on. Each camera has its readiness check `source:ID`, true while its frames
//! flow, and every camera metric is labelled `camera="ID"`.

use std::{path::Path, str::FromStr as _, sync::Arc, time::Duration};

use lookout_bus::{Backoff, Bus};
use lookout_service::{
    Readiness,
    site::{SiteError, SiteFile},
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    Camera, CameraArgs, CameraError, SourceSpec,
    metrics::{Stats, Summary},
    source::Health,
};

/// The first pause before a failed camera is opened again.
const REOPEN_MIN: Duration = Duration::from_millis(500);
/// The longest pause between two attempts.
const REOPEN_MAX: Duration = Duration::from_secs(30);

/// The options of each camera of `site`: its `[[camera]]` settings over `global`'s (the
/// options that are not per camera: `--no-pace`, `--frames`, `--ffmpeg`). Relative `file:` and
/// `images:` paths are taken from the site file's folder. Every camera is checked as
/// [`CameraArgs::validate`] checks `--source`; a failure names the camera's line.
pub fn cameras(site: &SiteFile, global: &CameraArgs) -> Result<Vec<CameraArgs>, SiteError> {
    site.cameras
        .iter()
        .map(|c| {
            let at = |e: CameraError| {
                site.error_at(c.source_span.clone(), format!("camera {}: {e}", c.id))
            };
            let source = match SourceSpec::from_str(&c.source).map_err(at)? {
                SourceSpec::File(path) => SourceSpec::File(site.resolve(&path)),
                SourceSpec::Images(pattern) => {
                    SourceSpec::Images(site.resolve(Path::new(&pattern)).display().to_string())
                }
                other => other,
            };
            let args = CameraArgs {
                camera_id: Some(c.id.clone()),
                fps: c.fps,
                no_pace: global.no_pace,
                loop_file: c.looped,
                hold: c.hold.unwrap_or(global.hold),
                jpeg_quality: c.quality.unwrap_or(global.jpeg_quality),
                max_width: c.max_width,
                max_height: c.max_height,
                width: c.width,
                height: c.height,
                frames: global.frames,
                ffmpeg: global.ffmpeg.clone(),
                ..CameraArgs::new(source)
            };
            args.validate().map_err(at)?;
            Ok(args)
        })
        .collect()
}

/// Captures every camera, each in its own task, until each has ended (its source ended or
/// `--frames` were published) or `shutdown` is cancelled. A camera that fails is opened again
/// on its own; see the module documentation. Returns each camera's id and counts.
pub async fn run_site(
    cameras: Vec<CameraArgs>,
    bus: Bus,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<Vec<(String, Summary)>, CameraError> {
    let mut tasks = JoinSet::new();
    for args in cameras {
        let id = args.camera_id();
        let health = Health::of_site_camera(readiness.clone(), &id);
        // Not ready until every camera's frames flow, not only the first camera's.
        health.set(false);
        tasks.spawn(keep_capturing(args, id, health, bus.clone(), shutdown.clone()));
    }
    info!(cameras = tasks.len(), "capturing the site's cameras");
    let mut summaries = Vec::new();
    while let Some(done) = tasks.join_next().await {
        summaries.push(
            done.map_err(|_| CameraError::Worker { camera: "site".into(), what: "camera task" })?,
        );
    }
    summaries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(summaries)
}

/// One camera of a site: opened, captured, and opened again after each failure, until its
/// source ends or `shutdown`.
#[tracing::instrument(name = "camera", skip_all, fields(camera_id = %id))]
async fn keep_capturing(
    args: CameraArgs,
    id: String,
    health: Health,
    bus: Bus,
    shutdown: CancellationToken,
) -> (String, Summary) {
    let stats = Arc::new(Stats::of_site_camera(&id));
    let mut backoff = Backoff::new(REOPEN_MIN, REOPEN_MAX);
    loop {
        let published_before = stats.summary().published;
        let result = match Camera::open_with(args.clone(), health.clone(), Arc::clone(&stats)).await
        {
            Ok(camera) => camera.run(bus.clone(), shutdown.clone()).await,
            Err(e) => Err(e),
        };
        let error = match result {
            Ok(summary) => return (id, summary),
            Err(e) => e,
        };
        health.set(false);
        if stats.summary().published > published_before {
            backoff.reset();
        }
        warn!(camera_id = %id, error = %error, attempt = backoff.attempts() + 1, "the camera failed; opening it again");
        if !backoff.wait(&shutdown).await {
            return (id, stats.summary());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::Parser as _;

    use super::*;
    use crate::Args;

    fn repo(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
    }

    fn global(extra: &[&str]) -> CameraArgs {
        let mut argv = vec!["c", "--config", "lookout.toml"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap().camera
    }

    fn site(text: &str) -> SiteFile {
        SiteFile::parse(&repo("deploy/site/lookout.toml"), text.to_owned()).unwrap()
    }

    #[test]
    fn the_example_site_file_gives_three_valid_cameras() {
        let site = SiteFile::load(&repo("deploy/site/lookout.toml")).unwrap();
        let cams = cameras(&site, &global(&[])).unwrap();
        let ids: Vec<String> = cams.iter().map(CameraArgs::camera_id).collect();
        assert_eq!(ids, ["lobby", "kitchen", "pattern"]);
        let samples = repo("deploy/site/../../samples");
        assert_eq!(cams[0].source, Some(SourceSpec::Images(samples.display().to_string())));
        assert_eq!((cams[0].hold, cams[0].fps), (Duration::from_secs(3), Some(2.0)));
        assert_eq!(cams[2].source, Some(SourceSpec::Synthetic));
        assert_eq!(
            (cams[2].width, cams[2].height, cams[2].jpeg_quality),
            (Some(320), Some(240), 80)
        );
    }

    #[test]
    fn camera_settings_override_the_global_ones() {
        let text = "[[camera]]\nid = \"a\"\nsource = \"synthetic\"\n\n\
                    [[camera]]\nid = \"b\"\nsource = \"synthetic\"\nquality = 60\nhold = \"1s\"\n";
        let cams = cameras(&site(text), &global(&["--frames", "7", "--no-pace"])).unwrap();
        assert_eq!((cams[0].jpeg_quality, cams[0].hold), (85, Duration::from_secs(3)));
        assert_eq!((cams[1].jpeg_quality, cams[1].hold), (60, Duration::from_secs(1)));
        assert!(cams.iter().all(|c| c.frames == Some(7) && !c.paced()), "global options apply");
        assert!(cams.iter().all(|c| c.config.is_none()));
    }

    #[test]
    fn a_bad_source_is_refused_with_its_line() {
        for (source, says) in [
            ("tape:1", "invalid source"),
            ("file:missing.mp4", "no such file"),
            ("images:no-such-folder", "no images"),
        ] {
            let text = format!(
                "[[camera]]\nid = \"ok\"\nsource = \"synthetic\"\n\n[[camera]]\nid = \"bad\"\nsource = \"{source}\"\n"
            );
            let e = cameras(&site(&text), &global(&[])).unwrap_err();
            assert_eq!(e.at, Some((7, 10)), "{source}: {e}");
            assert!(e.reason.starts_with("camera bad: "), "{source}: {e}");
            assert!(e.reason.contains(says), "{source}: {e}");
        }
        let e = cameras(
            &site("[[camera]]\nid = \"s\"\nsource = \"synthetic\"\nloop = true\n"),
            &global(&[]),
        )
        .unwrap_err();
        assert!(e.reason.contains("loop"), "{e}");
    }

    #[test]
    fn config_excludes_source_and_the_per_camera_options() {
        for clash in [
            &["--source", "synthetic"][..],
            &["--camera-id", "x"],
            &["--fps", "5"],
            &["--jpeg-quality", "50"],
            &["--hold", "1s"],
            &["--width", "320"],
            &["--loop"],
            &["--list"],
        ] {
            let mut argv = vec!["c", "--config", "lookout.toml"];
            argv.extend_from_slice(clash);
            let e = Args::try_parse_from(&argv).unwrap_err().to_string();
            assert!(e.contains("cannot be used with"), "{clash:?}: {e}");
        }
        let a = global(&["--frames", "3", "--ffmpeg", "/usr/bin/ffmpeg"]);
        assert_eq!(a.config, Some(PathBuf::from("lookout.toml")));
        assert!(a.source.is_none());
    }
}
