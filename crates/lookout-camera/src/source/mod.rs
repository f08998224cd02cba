//! Where frames come from: the `--source` syntax ([`SourceSpec`]) and the sources behind it.
//!
//! | `--source` | source | paced by |
//! |---|---|---|
//! | `webcam:N`, `webcam:/dev/videoN` | V4L2 webcam through nokhwa | the camera |
//! | `file:PATH` | video file through an ffmpeg child process | the file's own rate (or `--fps`) |
//! | `rtsp://…`, `rtsps://…`, `http://…`, `https://…` | network stream through ffmpeg | the stream |
//! | `images:DIR`, `images:GLOB`, `images:FILE` | slideshow, each image held `--hold` | `--fps` |
//! | `synthetic` | generated test pattern | `--fps` |

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use lookout_service::Readiness;

use crate::{
    CameraError,
    jpeg::{Jpeg, JpegOptions},
    metrics::Stats,
};

pub(crate) mod ffmpeg;
pub(crate) mod images;
pub(crate) mod synthetic;
pub mod webcam;

/// A parsed `--source`. It displays (and debug-prints) a stream URL with its credentials masked.
#[derive(Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// `webcam:N` or `webcam:/dev/videoN`.
    Webcam(WebcamRef),
    /// `file:PATH` (also `file:///abs/path`).
    File(PathBuf),
    /// A network stream URL: `rtsp://`, `rtsps://`, `http://` or `https://`.
    Stream(String),
    /// `images:DIR`, `images:GLOB` or `images:FILE`.
    Images(String),
    /// `synthetic`.
    Synthetic,
}

/// Which webcam: a V4L2 index or a device path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebcamRef {
    /// `/dev/videoN` by its number.
    Index(u32),
    /// A device path, e.g. `/dev/video2` or `/dev/v4l/by-id/usb-…`.
    Path(PathBuf),
}

impl fmt::Display for WebcamRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Index(n) => write!(f, "/dev/video{n}"),
            Self::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What `--source` accepts, for error messages.
const SYNTAX: &str = "expected webcam:N, webcam:/dev/videoN, file:PATH, rtsp://…, http(s)://…, \
                      images:DIR, images:GLOB or synthetic";

impl FromStr for SourceSpec {
    type Err = CameraError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let given = s.trim();
        let bad = |reason: &str| CameraError::BadSource {
            given: lookout_service::redact::url(given),
            reason: reason.to_owned(),
        };
        if given.eq_ignore_ascii_case("synthetic") {
            return Ok(Self::Synthetic);
        }
        let Some((scheme, rest)) = given.split_once(':') else {
            return Err(bad(SYNTAX));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "webcam" => {
                if rest.is_empty() {
                    return Err(bad(
                        "webcam needs a number or a device: webcam:0, webcam:/dev/video0",
                    ));
                }
                if let Ok(n) = rest.parse::<u32>() {
                    return Ok(Self::Webcam(WebcamRef::Index(n)));
                }
                if rest.starts_with('/') {
                    return Ok(Self::Webcam(WebcamRef::Path(PathBuf::from(rest))));
                }
                Err(bad(
                    "webcam needs a number or an absolute device path: webcam:0, webcam:/dev/video0",
                ))
            }
            "file" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                if path.is_empty() {
                    return Err(bad("file needs a path: file:clip.mp4"));
                }
                Ok(Self::File(PathBuf::from(path)))
            }
            "rtsp" | "rtsps" | "http" | "https" => {
                let host = rest.strip_prefix("//").unwrap_or_default();
                if host.is_empty() || host.starts_with('/') {
                    return Err(bad("a stream URL needs a host: rtsp://camera.local/stream"));
                }
                Ok(Self::Stream(given.to_owned()))
            }
            "images" => {
                if rest.is_empty() {
                    return Err(bad(
                        "images needs a directory or a glob: images:photos/, images:'photos/*.jpg'",
                    ));
                }
                Ok(Self::Images(rest.to_owned()))
            }
            _ => Err(bad(SYNTAX)),
        }
    }
}

impl fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Webcam(w) => f.debug_tuple("Webcam").field(w).finish(),
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            Self::Stream(url) => {
                f.debug_tuple("Stream").field(&lookout_service::redact::url(url)).finish()
            }
            Self::Images(p) => f.debug_tuple("Images").field(p).finish(),
            Self::Synthetic => f.write_str("Synthetic"),
        }
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Webcam(WebcamRef::Index(n)) => write!(f, "webcam:{n}"),
            Self::Webcam(WebcamRef::Path(p)) => write!(f, "webcam:{}", p.display()),
            Self::File(p) => write!(f, "file:{}", p.display()),
            // Shown in logs and errors: never with its password.
            Self::Stream(url) => f.write_str(&lookout_service::redact::url(url)),
            Self::Images(p) => write!(f, "images:{p}"),
            Self::Synthetic => f.write_str("synthetic"),
        }
    }
}

impl SourceSpec {
    /// The camera id used when `--camera-id` is not given: `webcam-0`, the file's stem, the
    /// stream's host, the image directory's name, or `synthetic`.
    pub fn default_camera_id(&self) -> String {
        let raw = match self {
            Self::Webcam(WebcamRef::Index(n)) => format!("webcam-{n}"),
            Self::Webcam(WebcamRef::Path(p)) => match video_index(p) {
                Some(n) => format!("webcam-{n}"),
                None => format!("webcam-{}", file_name(p).unwrap_or_default()),
            },
            Self::File(p) => {
                p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
            }
            Self::Stream(url) => {
                let after = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
                let authority = after.split('/').next().unwrap_or_default();
                let host = authority.rsplit('@').next().unwrap_or_default();
                let host = host.split(':').next().unwrap_or_default();
                format!("{}-{host}", url.split(':').next().unwrap_or("stream"))
            }
            Self::Images(pattern) => images_name(pattern),
            Self::Synthetic => "synthetic".to_owned(),
        };
        let id = sanitize_id(&raw);
        if id.is_empty() { "camera".to_owned() } else { id }
    }

    /// Whether the source is a live feed that cannot wait (webcam, network stream): frames it
    /// delivers while publishing lags are dropped oldest-first. Other sources wait instead
    /// when they are not paced (`--no-pace`), so replays lose nothing.
    pub fn is_live(&self) -> bool {
        matches!(self, Self::Webcam(_) | Self::Stream(_))
    }
}

/// The number N of a `/dev/videoN` path (after following symbolic links).
pub(crate) fn video_index(path: &Path) -> Option<u32> {
    let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    file_name(&resolved)?.strip_prefix("video")?.parse().ok()
}

fn file_name(p: &Path) -> Option<String> {
    p.file_name().map(|s| s.to_string_lossy().into_owned())
}

/// A name for an image directory or glob: the last path component without glob characters.
fn images_name(pattern: &str) -> String {
    let path = Path::new(pattern);
    let plain = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .filter(|c| !c.contains(['*', '?', '[']) && c != "." && c != "/")
        .collect::<Vec<_>>();
    let base = if path.is_file() {
        path.file_stem().map(|s| s.to_string_lossy().into_owned())
    } else if pattern.contains(['*', '?', '[']) || plain.last().is_none_or(|c| c == "..") {
        // A glob names its directory; `.` and `..` name nothing, so ask the file system.
        let dir: PathBuf = plain.iter().collect();
        std::fs::canonicalize(if dir.as_os_str().is_empty() { Path::new(".") } else { &dir })
            .ok()
            .and_then(|d| file_name(&d))
            .or_else(|| plain.last().cloned())
    } else {
        plain.last().cloned()
    };
    base.unwrap_or_else(|| "images".to_owned())
}

/// Keeps `[A-Za-z0-9._-]`, turns anything else into `-`.
pub(crate) fn sanitize_id(raw: &str) -> String {
    let mapped: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .collect();
    mapped.trim_matches('-').to_owned()
}

/// One camera's readiness check: `source` for the camera of a process, `source:ID` for each
/// camera of a site file; true while frames flow.
#[derive(Debug, Clone)]
pub(crate) struct Health {
    readiness: Readiness,
    check: &'static str,
}

impl Health {
    /// The `source` check of a process with one camera.
    pub(crate) fn single(readiness: Readiness) -> Self {
        Self { readiness, check: "source" }
    }

    /// The check `source:ID` of one of a site's cameras. The name lives as long as the
    /// process: call this once per camera, not per reconnection.
    pub(crate) fn of_site_camera(readiness: Readiness, id: &str) -> Self {
        let check: &'static str = Box::leak(format!("source:{id}").into_boxed_str());
        Self { readiness, check }
    }

    /// Sets the check.
    pub(crate) fn set(&self, ok: bool) {
        self.readiness.set(self.check, ok);
    }
}

/// What every source needs to know.
#[derive(Debug, Clone)]
pub(crate) struct SourceContext {
    /// Camera id, for errors and logs.
    pub(crate) camera: String,
    /// How frames are encoded.
    pub(crate) jpeg: JpegOptions,
    /// This camera's readiness check.
    pub(crate) health: Health,
    /// Counters (frames a source drops itself).
    pub(crate) stats: Arc<Stats>,
}

/// The two clocks read at the moment a frame is obtained.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CaptureMark {
    /// Wall-clock time, for `Frame.capture_time`.
    pub(crate) wall: SystemTime,
    /// Monotonic time, for latency.
    pub(crate) mono: Instant,
}

impl CaptureMark {
    pub(crate) fn now() -> Self {
        Self { wall: SystemTime::now(), mono: Instant::now() }
    }
}

/// A captured frame, encoded, on its way to the bus.
#[derive(Debug, Clone)]
pub(crate) struct Captured {
    pub(crate) jpeg: Bytes,
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) mark: CaptureMark,
}

impl Captured {
    pub(crate) fn new(jpeg: Jpeg, mark: CaptureMark) -> Self {
        Self { jpeg: jpeg.data, width: jpeg.width, height: jpeg.height, mark }
    }
}

/// Paces a generated source at a frame rate: frame `i` is due `i / fps` after the first. A
/// source that falls more than a frame behind skips ahead rather than bursting. Unpaced, it
/// never waits and its stream time advances by one frame period per frame.
#[derive(Debug)]
pub(crate) struct Pacer {
    period: Duration,
    paced: bool,
    start: Option<tokio::time::Instant>,
    next_due: Option<tokio::time::Instant>,
    frames: u64,
}

impl Pacer {
    pub(crate) fn new(fps: f64, paced: bool) -> Self {
        let period = Duration::try_from_secs_f64(1.0 / fps).unwrap_or(Duration::from_secs(1));
        Self { period, paced, start: None, next_due: None, frames: 0 }
    }

    /// Starts the schedule again from `at`: the next frame is due one period after it.
    pub(crate) fn restart_from(&mut self, at: tokio::time::Instant) {
        if self.paced {
            self.next_due = Some(at + self.period);
        }
    }

    /// Waits until the next frame is due and returns its stream time: the time since the
    /// first frame (real time when paced, `frames / fps` when not).
    pub(crate) async fn tick(&mut self) -> Duration {
        let n = self.frames;
        if !self.paced {
            self.frames += 1;
            return self.period.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
        }
        let now = tokio::time::Instant::now();
        let due = *self.next_due.get_or_insert(now);
        if due > now {
            tokio::time::sleep_until(due).await;
        }
        let now = tokio::time::Instant::now();
        let start = *self.start.get_or_insert(now);
        let mut next = due + self.period;
        if next <= now {
            next = now + self.period; // behind by more than a frame: skip, do not burst
        }
        self.next_due = Some(next);
        self.frames += 1;
        now - start
    }
}

/// An opened source.
#[derive(Debug)]
pub(crate) enum Source {
    Synthetic(synthetic::Synthetic),
    Images(Box<images::Slideshow>),
    Ffmpeg(Box<ffmpeg::Ffmpeg>),
    Webcam(webcam::Webcam),
}

impl Source {
    /// The next frame; `None` when the source has ended (a file without `--loop`).
    pub(crate) async fn next(&mut self) -> Result<Option<Captured>, CameraError> {
        match self {
            Self::Synthetic(s) => s.next().await,
            Self::Images(s) => s.next().await,
            Self::Ffmpeg(s) => s.next().await,
            Self::Webcam(s) => s.next().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> SourceSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_source_syntax_parses() {
        assert_eq!(parse("synthetic"), SourceSpec::Synthetic);
        assert_eq!(parse("webcam:0"), SourceSpec::Webcam(WebcamRef::Index(0)));
        assert_eq!(
            parse("webcam:/dev/video2"),
            SourceSpec::Webcam(WebcamRef::Path("/dev/video2".into()))
        );
        assert_eq!(parse("file:clips/a.mp4"), SourceSpec::File("clips/a.mp4".into()));
        assert_eq!(parse("file:///tmp/a.mp4"), SourceSpec::File("/tmp/a.mp4".into()));
        assert_eq!(
            parse("rtsp://cam.local:554/s1"),
            SourceSpec::Stream("rtsp://cam.local:554/s1".into())
        );
        assert_eq!(
            parse("https://x.org/live.m3u8"),
            SourceSpec::Stream("https://x.org/live.m3u8".into())
        );
        assert_eq!(parse("images:photos"), SourceSpec::Images("photos".into()));
        assert_eq!(parse("images:photos/*.jpg"), SourceSpec::Images("photos/*.jpg".into()));
    }

    #[test]
    fn bad_sources_say_what_is_accepted() {
        for bad in [
            "",
            "camera",
            "webcam:",
            "webcam:front",
            "file:",
            "rtsp://",
            "images:",
            "ftp://x/y",
            "rtsp:/x",
        ] {
            let err = bad.parse::<SourceSpec>().expect_err(bad).to_string();
            assert!(err.contains("invalid source"), "{bad}: {err}");
        }
        let err = "tcp:1".parse::<SourceSpec>().unwrap_err().to_string();
        assert!(err.contains("webcam:N") && err.contains("synthetic"), "{err}");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "synthetic",
            "webcam:3",
            "webcam:/dev/video1",
            "file:a/b.mp4",
            "rtsp://h/s",
            "images:p/*.png",
        ] {
            assert_eq!(parse(s).to_string(), s);
            assert_eq!(parse(&parse(s).to_string()), parse(s));
        }
    }

    #[test]
    fn camera_ids_come_from_the_source() {
        assert_eq!(parse("webcam:0").default_camera_id(), "webcam-0");
        assert_eq!(parse("webcam:/dev/video4").default_camera_id(), "webcam-4");
        assert_eq!(parse("file:/videos/front door.mp4").default_camera_id(), "front-door");
        assert_eq!(
            parse("rtsp://user:pw@10.0.0.5:554/stream1").default_camera_id(),
            "rtsp-10.0.0.5"
        );
        assert_eq!(parse("http://cam.local/video.mjpg").default_camera_id(), "http-cam.local");
        assert_eq!(parse("images:/data/lobby").default_camera_id(), "lobby");
        assert_eq!(parse("images:/data/lobby/").default_camera_id(), "lobby");
        assert_eq!(parse("images:/data/porch/*.jpg").default_camera_id(), "porch");
        assert_eq!(parse("synthetic").default_camera_id(), "synthetic");
        assert_eq!(sanitize_id("a b/c:d"), "a-b-c-d");
    }

    #[test]
    fn only_webcams_and_streams_are_live() {
        assert!(parse("webcam:0").is_live());
        assert!(parse("rtsp://h/s").is_live());
        assert!(!parse("file:a.mp4").is_live());
        assert!(!parse("images:x").is_live());
        assert!(!parse("synthetic").is_live());
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_keeps_the_rate_and_skips_when_behind() {
        let mut p = Pacer::new(10.0, true);
        let t0 = tokio::time::Instant::now();
        assert_eq!(p.tick().await, Duration::ZERO);
        assert_eq!(p.tick().await, Duration::from_millis(100));
        assert_eq!(p.tick().await, Duration::from_millis(200));
        assert_eq!(t0.elapsed(), Duration::from_millis(200));
        // Half a second of work: the next frame comes at once, then the rate resumes.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(p.tick().await, Duration::from_millis(700));
        assert_eq!(p.tick().await, Duration::from_millis(800));

        let mut unpaced = Pacer::new(4.0, false);
        let t1 = tokio::time::Instant::now();
        for i in 0..5u32 {
            assert_eq!(unpaced.tick().await, Duration::from_millis(250) * i);
        }
        assert_eq!(t1.elapsed(), Duration::ZERO, "never waits");
    }
}
