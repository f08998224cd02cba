use std::{path::PathBuf, time::Duration};

use lookout_service::CommonArgs;

use crate::{
    CameraError,
    jpeg::JpegOptions,
    source::{SourceSpec, images},
};

/// Frame rate of `synthetic` when `--fps` is not given.
pub const SYNTHETIC_FPS: f64 = 10.0;
/// Frame rate of `images:` when `--fps` is not given.
pub const IMAGES_FPS: f64 = 5.0;

const LONG_ABOUT: &str = "\
Captures frames and publishes them as JPEG `Frame` messages on lookout.frames.

Sources (--source):
  webcam:N, webcam:/dev/videoN   a V4L2 webcam; MJPEG is asked for and forwarded as it is
  file:PATH                      a video file, through ffmpeg, paced at its own rate (or --fps)
  rtsp://…, http(s)://…          a network stream, through ffmpeg, reconnected when it drops
  images:DIR, images:GLOB        a looping slideshow, each image held --hold seconds
  synthetic                      a moving test pattern with frame number and time burned in

Several cameras (--config FILE): a site file lists them, each with its id, source and \
settings, and this one process captures them all, one task per camera; a camera that fails is \
opened again on its own while the others go on. /readyz is ready when every camera's frames \
flow (checks source:ID) and metrics carry a camera label. Relative file: and images: paths \
are relative to the file's folder. An invalid file is refused at start with its line and the \
reason:

  [[camera]]
  id = \"porch\"
  source = \"rtsp://cam.local/stream\"
  fps = 10
  size = \"640x480\"            # or width = 640, height = 480
  quality = 80                # --jpeg-quality; also max_width, max_height, hold, loop

Sequence numbers: sequence = start_unix_millis * 1000 + frame_index. They are consecutive \
within a run and keep increasing across restarts (unless a run publishes more than 1000 \
frames per millisecond of uptime, or the clock steps back), with nothing stored.

When publishing falls behind (brokers slow or down), live sources drop their oldest \
unpublished frames (counted in lookout_camera_frames_dropped_total); files, images and \
synthetic run with --no-pace wait instead and lose nothing.";

/// The `lookout-camera` command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "lookout-camera",
    version,
    about = "Lookout camera: webcam, video file, stream, image folder or test pattern to JPEG frames on Kafka",
    long_about = LONG_ABOUT
)]
pub struct Args {
    /// Camera options.
    #[command(flatten)]
    pub camera: CameraArgs,
    /// Options every service takes.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The camera's own options. Each is also an environment variable `LOOKOUT_CAMERA_*`.
#[derive(Debug, Clone, clap::Args)]
pub struct CameraArgs {
    /// Where frames come from: webcam:N, webcam:/dev/videoN, file:PATH, rtsp://…, http(s)://…,
    /// images:DIR, images:GLOB or synthetic.
    #[arg(
        long,
        env = "LOOKOUT_CAMERA_SOURCE",
        value_name = "SOURCE",
        required_unless_present_any = ["list", "config"]
    )]
    pub source: Option<SourceSpec>,

    /// A site file (lookout.toml) listing several cameras, each `[[camera]]` with its id,
    /// source and settings: they are captured in this one process, each reconnecting on its
    /// own. Instead of --source and the per-camera options.
    #[arg(
        long,
        env = "LOOKOUT_CAMERA_CONFIG",
        value_name = "FILE",
        conflicts_with_all = [
            "source", "camera_id", "fps", "loop_file", "hold", "jpeg_quality", "max_width",
            "max_height", "width", "height", "list",
        ]
    )]
    pub config: Option<PathBuf>,

    /// Camera id in every frame (and the Kafka key) [default: from the source: webcam-0, the
    /// file's name, the stream's host, the image folder's name, synthetic].
    #[arg(long, env = "LOOKOUT_CAMERA_ID", value_name = "ID")]
    pub camera_id: Option<String>,

    /// Frames per second: the rate of synthetic (default 10) and images (default 5), the rate
    /// asked of a webcam (default 30), and a resampling rate for files and streams (default:
    /// their own).
    #[arg(long, env = "LOOKOUT_CAMERA_FPS", value_parser = parse_fps)]
    pub fps: Option<f64>,

    /// Do not pace: files, images and synthetic go as fast as publishing allows, and wait
    /// for it rather than drop frames (replays, benchmarks).
    #[arg(long, env = "LOOKOUT_CAMERA_NO_PACE")]
    pub no_pace: bool,

    /// Play a file: source again and again.
    #[arg(long = "loop", env = "LOOKOUT_CAMERA_LOOP")]
    pub loop_file: bool,

    /// How long each image of an images: slideshow is shown (500ms, 2s, or seconds).
    #[arg(long, env = "LOOKOUT_CAMERA_HOLD", default_value = "3s", value_parser = lookout_service::parse_duration)]
    pub hold: Duration,

    /// JPEG quality, 1-100, for frames the camera encodes (JPEG from a webcam that needs no
    /// scaling is forwarded as it is).
    #[arg(long, env = "LOOKOUT_CAMERA_JPEG_QUALITY", default_value_t = 85, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: u8,

    /// Scale frames down to at most this width, keeping the aspect ratio.
    #[arg(long, env = "LOOKOUT_CAMERA_MAX_WIDTH", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_width: Option<u32>,

    /// Scale frames down to at most this height, keeping the aspect ratio.
    #[arg(long, env = "LOOKOUT_CAMERA_MAX_HEIGHT", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_height: Option<u32>,

    /// Width to ask the webcam for (the granted size is logged) and the width of synthetic
    /// [default: 640].
    #[arg(long, env = "LOOKOUT_CAMERA_WIDTH", value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub width: Option<u32>,

    /// Height to ask the webcam for and the height of synthetic [default: 480].
    #[arg(long, env = "LOOKOUT_CAMERA_HEIGHT", value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub height: Option<u32>,

    /// Stop after publishing this many frames.
    #[arg(long, env = "LOOKOUT_CAMERA_FRAMES", value_name = "N")]
    pub frames: Option<u64>,

    /// The ffmpeg program used for file: and stream sources.
    #[arg(long, env = "LOOKOUT_CAMERA_FFMPEG", default_value = "ffmpeg", value_name = "PATH")]
    pub ffmpeg: PathBuf,

    /// List the webcams and their formats, then exit (non-zero when there is none).
    #[arg(long, env = "LOOKOUT_CAMERA_LIST")]
    pub list: bool,
}

fn parse_fps(s: &str) -> Result<f64, String> {
    let fps: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(fps.is_finite() && fps > 0.0 && fps <= 1000.0) {
        return Err(format!("{s:?}: frames per second must be above 0 and at most 1000"));
    }
    Ok(fps)
}

impl CameraArgs {
    /// Options for `source` with every other option at its default.
    pub fn new(source: SourceSpec) -> Self {
        Self {
            source: Some(source),
            config: None,
            camera_id: None,
            fps: None,
            no_pace: false,
            loop_file: false,
            hold: Duration::from_secs(3),
            jpeg_quality: 85,
            max_width: None,
            max_height: None,
            width: None,
            height: None,
            frames: None,
            ffmpeg: PathBuf::from("ffmpeg"),
            list: false,
        }
    }

    /// The source, which is required unless listing.
    pub fn source(&self) -> Result<&SourceSpec, CameraError> {
        self.source.as_ref().ok_or_else(|| CameraError::Usage("--source is required".into()))
    }

    /// `--camera-id`, or the id derived from the source.
    pub fn camera_id(&self) -> String {
        match (&self.camera_id, &self.source) {
            (Some(id), _) if !id.trim().is_empty() => id.trim().to_owned(),
            (_, Some(source)) => source.default_camera_id(),
            _ => "camera".to_owned(),
        }
    }

    /// Whether generated sources and files are paced.
    pub fn paced(&self) -> bool {
        !self.no_pace
    }

    /// Quality and size limits for encoding.
    pub fn jpeg_options(&self) -> JpegOptions {
        JpegOptions {
            quality: self.jpeg_quality,
            max_width: self.max_width,
            max_height: self.max_height,
        }
    }

    /// Checks what can be checked before starting: option combinations, that a file exists,
    /// that an image source names images. A failure is a usage error (exit code 64).
    pub fn validate(&self) -> Result<(), CameraError> {
        let source = self.source()?;
        if self.loop_file && !matches!(source, SourceSpec::File(_)) {
            return Err(CameraError::Usage(format!(
                "--loop applies to file: sources only (images: always loops), not {source}"
            )));
        }
        if self.hold.is_zero() {
            return Err(CameraError::Usage("--hold must be longer than zero".into()));
        }
        if self.frames == Some(0) {
            return Err(CameraError::Usage("--frames must be at least 1".into()));
        }
        match source {
            SourceSpec::File(path) if !path.is_file() => Err(CameraError::Usage(format!(
                "{source}: no such file ({})",
                std::fs::metadata(path).map_or_else(|e| e.to_string(), |_| "not a file".into())
            ))),
            SourceSpec::Images(pattern) => {
                images::list_images(&self.camera_id(), pattern).map(|_| ())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_and_parsing() {
        let a = Args::try_parse_from(["c", "--source", "synthetic"]).unwrap();
        assert_eq!(a.camera.source, Some(SourceSpec::Synthetic));
        assert_eq!(a.camera.jpeg_quality, 85);
        assert_eq!(a.camera.hold, Duration::from_secs(3));
        assert_eq!(a.camera.camera_id(), "synthetic");
        assert!(a.camera.paced());
        a.camera.validate().unwrap();

        let a = Args::try_parse_from([
            "c",
            "--source",
            "webcam:1",
            "--camera-id",
            "porch",
            "--fps",
            "12.5",
            "--hold",
            "500ms",
            "--max-width",
            "320",
            "--jpeg-quality",
            "70",
            "--no-pace",
        ])
        .unwrap();
        assert_eq!(a.camera.camera_id(), "porch");
        assert_eq!(a.camera.fps, Some(12.5));
        assert_eq!(a.camera.hold, Duration::from_millis(500));
        assert_eq!(
            a.camera.jpeg_options(),
            JpegOptions { quality: 70, max_width: Some(320), max_height: None }
        );
        assert!(!a.camera.paced());
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            vec!["c"],
            vec!["c", "--source", "tape:1"],
            vec!["c", "--source", "synthetic", "--fps", "0"],
            vec!["c", "--source", "synthetic", "--fps", "fast"],
            vec!["c", "--source", "synthetic", "--jpeg-quality", "101"],
            vec!["c", "--source", "synthetic", "--max-width", "0"],
            vec!["c", "--source", "synthetic", "--hold", "2 fortnights"],
        ] {
            assert!(Args::try_parse_from(&bad).is_err(), "{bad:?}");
        }
        let list = Args::try_parse_from(["c", "--list"]).unwrap();
        assert!(list.camera.list && list.camera.source.is_none());
    }

    #[test]
    fn option_combinations_are_checked() {
        let a = |args: &[&str]| {
            let mut v = vec!["c"];
            v.extend_from_slice(args);
            Args::try_parse_from(v).unwrap().camera.validate().map_err(|e| e.to_string())
        };
        assert!(a(&["--source", "synthetic", "--loop"]).unwrap_err().contains("--loop"));
        assert!(a(&["--source", "synthetic", "--hold", "0"]).unwrap_err().contains("--hold"));
        assert!(a(&["--source", "synthetic", "--frames", "0"]).unwrap_err().contains("--frames"));
        assert!(a(&["--source", "file:/nonexistent.mp4"]).unwrap_err().contains("no such file"));
        assert!(a(&["--source", "images:/nonexistent"]).unwrap_err().contains("no images"));
        assert!(a(&["--source", "rtsp://cam/s"]).is_ok());
    }
}
