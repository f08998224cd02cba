//! `webcam:N` and `webcam:/dev/videoN`: a V4L2 webcam through nokhwa.
//!
//! The camera is asked for the format closest to `--width`/`--height` (default 640x480) and
//! `--fps` (default 30), preferring MJPEG at equal size, so the JPEG bytes the camera makes are
//! forwarded without decoding. Other pixel formats (YUYV, NV12, RGB, grey) are encoded to JPEG
//! once. The granted format is logged. A camera that does not exist, or cannot be opened,
//! gives an error that lists the cameras that do exist.
//!
//! nokhwa's camera is blocking and not `Send`, so it lives on a thread of its own that sends
//! encoded frames to the async side through a small channel.

use std::{
    cmp::Reverse,
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, UNIX_EPOCH},
};

use nokhwa::{
    Buffer, Camera,
    pixel_format::RgbFormat,
    utils::{
        ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
        frame_formats,
    },
};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{CaptureMark, Captured, SourceContext, WebcamRef, video_index};
use crate::{
    CameraError,
    jpeg::{Jpeg, JpegOptions},
    metrics::DropReason,
};

/// Size and rate asked for when none is given.
const DEFAULT_WIDTH: u32 = 640;
const DEFAULT_HEIGHT: u32 = 480;
const DEFAULT_FPS: u32 = 30;

/// A camera found on the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraEntry {
    /// Its V4L2 index (`webcam:N`).
    pub index: u32,
    /// The name the driver gives.
    pub name: String,
    /// Its device node.
    pub path: String,
}

/// The webcams on this machine (V4L2 devices `/dev/videoN`).
pub fn cameras() -> Result<Vec<CameraEntry>, CameraError> {
    let found = nokhwa::query(ApiBackend::Video4Linux)
        .map_err(|e| CameraError::NoCameras { detail: format!(": {e}") })?;
    let mut list: Vec<CameraEntry> = found
        .iter()
        .filter_map(|info| {
            let index = info.index().as_index().ok()?;
            Some(CameraEntry { index, name: info.human_name(), path: format!("/dev/video{index}") })
        })
        .collect();
    list.sort_by_key(|c| c.index);
    Ok(list)
}

/// The cameras that exist, in words, for error messages.
pub(crate) fn describe_cameras(list: &[CameraEntry]) -> String {
    if list.is_empty() {
        return "no cameras were found (no Video4Linux devices /dev/video*)".to_owned();
    }
    let names: Vec<String> =
        list.iter().map(|c| format!("webcam:{} {:?} ({})", c.index, c.name, c.path)).collect();
    format!("cameras found: {}", names.join(", "))
}

/// What `--list` prints: each camera and its formats. An error when there is none.
pub fn list_text() -> Result<String, CameraError> {
    let list = cameras()?;
    if list.is_empty() {
        return Err(CameraError::NoCameras {
            detail: " (no Video4Linux devices /dev/video*); a file, stream, image folder or \
                     `--source synthetic` works without one"
                .to_owned(),
        });
    }
    let mut out = String::new();
    for c in &list {
        let _ = writeln!(out, "webcam:{}  {}  ({})", c.index, c.name, c.path);
        match formats_of(c.index) {
            Ok(formats) if formats.is_empty() => {
                let _ = writeln!(out, "    no capture formats (not a capture device)");
            }
            Ok(formats) => {
                for line in format_lines(&formats) {
                    let _ = writeln!(out, "    {line}");
                }
            }
            Err(e) => {
                let _ = writeln!(out, "    cannot read its formats: {e}");
            }
        }
    }
    Ok(out)
}

fn formats_of(index: u32) -> Result<Vec<CameraFormat>, String> {
    let any = RequestedFormat::with_formats(RequestedFormatType::None, frame_formats());
    let mut camera = Camera::with_backend(CameraIndex::Index(index), any, ApiBackend::Video4Linux)
        .map_err(|e| e.to_string())?;
    camera.compatible_camera_formats().map_err(|e| e.to_string())
}

/// Preference among pixel formats: MJPEG is forwarded as it is, the others are encoded.
fn format_rank(f: FrameFormat) -> u8 {
    match f {
        FrameFormat::MJPEG => 0,
        FrameFormat::YUYV => 1,
        FrameFormat::NV12 => 2,
        FrameFormat::RAWRGB | FrameFormat::RAWBGR => 3,
        FrameFormat::GRAY => 4,
    }
}

/// `MJPEG 1280x720 @ 30, 15 fps`, one line per format and size, best format and largest
/// size first.
pub(crate) fn format_lines(formats: &[CameraFormat]) -> Vec<String> {
    // Keyed by format preference, then size, largest first.
    type Key = (u8, Reverse<(u32, u32)>);
    let mut grouped: BTreeMap<Key, (FrameFormat, Vec<u32>)> = BTreeMap::new();
    for f in formats {
        let key = (format_rank(f.format()), Reverse((f.width(), f.height())));
        let entry = grouped.entry(key).or_insert_with(|| (f.format(), Vec::new()));
        if !entry.1.contains(&f.frame_rate()) {
            entry.1.push(f.frame_rate());
        }
    }
    grouped
        .into_iter()
        .map(|((_, Reverse((w, h))), (format, mut rates))| {
            rates.sort_unstable_by(|a, b| b.cmp(a));
            let rates: Vec<String> = rates.iter().map(u32::to_string).collect();
            format!("{format} {w}x{h} @ {} fps", rates.join(", "))
        })
        .collect()
}

/// What the user asked the webcam for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WebcamRequest {
    pub(crate) width: Option<u32>,
    pub(crate) height: Option<u32>,
    pub(crate) fps: Option<u32>,
}

/// Picks the camera format closest to the request: nearest size first, then MJPEG over the
/// other pixel formats, then the nearest frame rate. With only a width (or a height) asked
/// for, only that dimension counts.
pub(crate) fn negotiate(formats: &[CameraFormat], req: &WebcamRequest) -> Option<CameraFormat> {
    let (want_w, want_h) = match (req.width, req.height) {
        (None, None) => (Some(DEFAULT_WIDTH), Some(DEFAULT_HEIGHT)),
        other => other,
    };
    let want_fps = i64::from(req.fps.unwrap_or(DEFAULT_FPS));
    let dist =
        |have: u32, want: Option<u32>| want.map_or(0, |w| (i64::from(have) - i64::from(w)).pow(2));
    formats.iter().copied().min_by_key(|f| {
        let size = dist(f.width(), want_w) + dist(f.height(), want_h);
        let fps = (i64::from(f.frame_rate()) - want_fps).abs();
        (size, format_rank(f.format()), fps)
    })
}

/// The webcam source.
#[derive(Debug)]
pub(crate) struct Webcam {
    rx: mpsc::Receiver<Result<Captured, CameraError>>,
    stop: Arc<AtomicBool>,
    camera: String,
}

impl Drop for Webcam {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Webcam {
    /// Finds and opens the webcam, negotiates its format and starts streaming.
    pub(crate) async fn open(
        ctx: SourceContext,
        which: &WebcamRef,
        req: WebcamRequest,
    ) -> Result<Self, CameraError> {
        let device = which.to_string();
        let available = tokio::task::spawn_blocking(cameras).await.map_err(|_| {
            CameraError::Worker { camera: ctx.camera.clone(), what: "webcam query" }
        })??;
        let index = match which {
            WebcamRef::Index(n) => Some(*n),
            WebcamRef::Path(p) => video_index(p),
        };
        let Some(index) = index.filter(|i| available.iter().any(|c| c.index == *i)) else {
            return Err(CameraError::WebcamNotFound {
                camera: ctx.camera.clone(),
                device,
                available: describe_cameras(&available),
            });
        };

        let (opened_tx, opened_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel(2);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_ctx = ctx.clone();
        let thread_stop = Arc::clone(&stop);
        let thread_device = device.clone();
        std::thread::Builder::new()
            .name(format!("webcam-{index}"))
            .spawn(move || {
                capture_thread(thread_ctx, index, thread_device, req, opened_tx, tx, thread_stop);
            })
            .map_err(|_| CameraError::Worker {
                camera: ctx.camera.clone(),
                what: "webcam thread",
            })?;
        let granted = opened_rx
            .await
            .map_err(|_| CameraError::Worker { camera: ctx.camera.clone(), what: "webcam thread" })?
            .map_err(|reason| CameraError::WebcamOpen {
                camera: ctx.camera.clone(),
                device: device.clone(),
                reason,
                available: describe_cameras(&available),
            })?;
        info!(
            camera_id = %ctx.camera,
            device = %device,
            format = %granted.format(),
            width = granted.width(),
            height = granted.height(),
            fps = granted.frame_rate(),
            requested_width = req.width,
            requested_height = req.height,
            requested_fps = req.fps,
            "webcam opened",
        );
        Ok(Self { rx, stop, camera: ctx.camera })
    }

    pub(crate) async fn next(&mut self) -> Result<Option<Captured>, CameraError> {
        match self.rx.recv().await {
            Some(Ok(frame)) => Ok(Some(frame)),
            Some(Err(e)) => Err(e),
            None => Err(CameraError::Worker { camera: self.camera.clone(), what: "webcam thread" }),
        }
    }
}

fn open_camera(index: u32, req: &WebcamRequest) -> Result<(Camera, CameraFormat), String> {
    let any = RequestedFormat::with_formats(RequestedFormatType::None, frame_formats());
    let mut camera = Camera::with_backend(CameraIndex::Index(index), any, ApiBackend::Video4Linux)
        .map_err(|e| e.to_string())?;
    let formats = camera.compatible_camera_formats().map_err(|e| e.to_string())?;
    let chosen = negotiate(&formats, req).ok_or("the device offers no capture format")?;
    let wanted = [chosen.format()];
    let exact = RequestedFormat::with_formats(RequestedFormatType::Exact(chosen), &wanted);
    let granted = camera.set_camera_requset(exact).map_err(|e| e.to_string())?;
    camera.open_stream().map_err(|e| e.to_string())?;
    Ok((camera, granted))
}

fn capture_thread(
    ctx: SourceContext,
    index: u32,
    device: String,
    req: WebcamRequest,
    opened: oneshot::Sender<Result<CameraFormat, String>>,
    tx: mpsc::Sender<Result<Captured, CameraError>>,
    stop: Arc<AtomicBool>,
) {
    let (mut camera, granted) = match open_camera(index, &req) {
        Ok(c) => c,
        Err(reason) => {
            let _ = opened.send(Err(reason));
            return;
        }
    };
    let _ = opened.send(Ok(granted));
    let mut last_warning: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let buffer = match camera.frame() {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.blocking_send(Err(CameraError::Webcam {
                    camera: ctx.camera.clone(),
                    device: device.clone(),
                    reason: e.to_string(),
                }));
                break;
            }
        };
        let mark = mark_of(&buffer);
        match to_jpeg(&buffer, ctx.jpeg) {
            Ok(jpeg) => {
                if tx.blocking_send(Ok(Captured::new(jpeg, mark))).is_err() {
                    break;
                }
            }
            Err(e) => {
                ctx.stats.dropped(DropReason::BadFrame);
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    last_warning = Some(Instant::now());
                    warn!(camera_id = %ctx.camera, device = %device, error = %e, "the webcam sent a frame that cannot be used; skipped");
                }
            }
        }
    }
    let _ = camera.stop_stream();
}

/// The capture time the driver stamped on the buffer when it is believable (in the last
/// second), else now.
fn mark_of(buffer: &Buffer) -> CaptureMark {
    let now = CaptureMark::now();
    let Some(stamp) = buffer.capture_timestamp().map(|d| UNIX_EPOCH + d) else {
        return now;
    };
    match now.wall.duration_since(stamp) {
        Ok(age) if age < Duration::from_secs(1) => {
            CaptureMark { wall: stamp, mono: now.mono.checked_sub(age).unwrap_or(now.mono) }
        }
        _ => now,
    }
}

fn to_jpeg(buffer: &Buffer, options: JpegOptions) -> Result<Jpeg, String> {
    match buffer.source_frame_format() {
        FrameFormat::MJPEG => options.from_jpeg(buffer.buffer_bytes()).map_err(|e| e.to_string()),
        _ => {
            let rgb = buffer.decode_image::<RgbFormat>().map_err(|e| e.to_string())?;
            options.from_rgb(rgb).map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use nokhwa::utils::Resolution;

    use super::*;

    fn f(format: FrameFormat, w: u32, h: u32, fps: u32) -> CameraFormat {
        CameraFormat::new(Resolution::new(w, h), format, fps)
    }

    /// What a typical USB webcam offers.
    fn typical() -> Vec<CameraFormat> {
        vec![
            f(FrameFormat::YUYV, 640, 480, 30),
            f(FrameFormat::YUYV, 1280, 720, 10),
            f(FrameFormat::MJPEG, 1280, 720, 30),
            f(FrameFormat::MJPEG, 1280, 720, 15),
            f(FrameFormat::MJPEG, 640, 480, 30),
            f(FrameFormat::MJPEG, 640, 480, 15),
            f(FrameFormat::MJPEG, 320, 240, 30),
        ]
    }

    #[test]
    fn mjpeg_is_preferred_at_the_requested_size() {
        let got = negotiate(&typical(), &WebcamRequest::default()).unwrap();
        assert_eq!(got, f(FrameFormat::MJPEG, 640, 480, 30));
        let req = WebcamRequest { width: Some(1280), height: Some(720), fps: Some(15) };
        assert_eq!(negotiate(&typical(), &req).unwrap(), f(FrameFormat::MJPEG, 1280, 720, 15));
    }

    #[test]
    fn the_closest_size_wins_over_the_format() {
        let only_yuyv_fits =
            vec![f(FrameFormat::YUYV, 640, 480, 30), f(FrameFormat::MJPEG, 1920, 1080, 30)];
        let got = negotiate(&only_yuyv_fits, &WebcamRequest::default()).unwrap();
        assert_eq!(got.format(), FrameFormat::YUYV);
        let req = WebcamRequest { width: Some(1000), height: None, fps: Some(60) };
        assert_eq!(negotiate(&typical(), &req).unwrap(), f(FrameFormat::MJPEG, 1280, 720, 30));
        assert_eq!(negotiate(&[], &req), None, "no format, no answer");
    }

    #[test]
    fn formats_are_listed_best_first_with_their_rates() {
        assert_eq!(
            format_lines(&typical()),
            [
                "MJPEG 1280x720 @ 30, 15 fps",
                "MJPEG 640x480 @ 30, 15 fps",
                "MJPEG 320x240 @ 30 fps",
                "YUYV 1280x720 @ 10 fps",
                "YUYV 640x480 @ 30 fps",
            ]
        );
    }

    #[test]
    fn missing_cameras_are_described_plainly() {
        assert!(describe_cameras(&[]).starts_with("no cameras were found"));
        let one = [CameraEntry { index: 0, name: "HD Webcam".into(), path: "/dev/video0".into() }];
        assert_eq!(describe_cameras(&one), "cameras found: webcam:0 \"HD Webcam\" (/dev/video0)");
    }
}
