//! `file:PATH` and network streams (`rtsp://`, `http(s)://`) through an `ffmpeg` child process.
//!
//! ffmpeg decodes whatever it is given and writes MJPEG (concatenated JPEGs) on its standard
//! output:
//!
//! ```text
//! ffmpeg -hide_banner -loglevel error -nostdin [-re] [-stream_loop -1] -i INPUT -an
//!        [-vf fps=F,scale=…] -f image2pipe -c:v mjpeg -q:v Q -flush_packets 1 -
//! ```
//!
//! The JPEGs are cut apart with [`crate::jpeg::Splitter`] and forwarded as they are: ffmpeg
//! has already applied the frame rate (`--fps`), the size limit (`--max-width/--max-height`)
//! and the quality, so each frame is encoded exactly once. `-re` paces a file at its own
//! rate; `--no-pace` drops it. A network stream that ends or stalls is reconnected with a
//! backoff of 0.5 s doubling to 30 s, with jitter (`lookout_bus::Backoff`); a file that ends ends the source (or starts again with
//! `--loop`).
//!
//! A stream URL with credentials (`rtsp://user:password@…`, `?token=…`) is not put on ffmpeg's
//! command line, which every user of the machine can read (`ps`, `/proc/PID/cmdline`): ffmpeg
//! reads it from its standard input, as a one-entry concat list (`-f concat -i pipe:0`) that
//! carries the stream's options too. ffmpeg's error output, which may repeat the URL, is
//! logged and kept with the credentials masked.

use std::{
    collections::VecDeque,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    process::{Child, ChildStdout, Command},
    task::JoinHandle,
};
use tracing::{info, warn};

use super::{CaptureMark, Captured, SourceContext};
use crate::{CameraError, jpeg::Splitter, metrics::DropReason};

/// First pause before reconnecting a network stream.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest pause before reconnecting.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A network stream that delivers no frame for this long is restarted.
const STALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Lines of ffmpeg's error output kept for error messages.
const STDERR_LINES: usize = 8;
/// Bytes read from ffmpeg at a time.
const READ_CHUNK: usize = 256 * 1024;

/// What ffmpeg reads. Debug-prints a stream URL with its credentials masked.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Input {
    /// A file, paced at its own rate unless `paced` is false, looping if asked.
    File { path: PathBuf, paced: bool, looped: bool },
    /// A network stream, reconnected when it drops.
    Stream { url: String },
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File { path, paced, looped } => f
                .debug_struct("File")
                .field("path", path)
                .field("paced", paced)
                .field("looped", looped)
                .finish(),
            Self::Stream { .. } => f.debug_struct("Stream").field("url", &self.name()).finish(),
        }
    }
}

impl Input {
    /// The input as logs and errors show it: a stream URL with its credentials masked.
    fn name(&self) -> String {
        match self {
            Self::File { path, .. } => path.display().to_string(),
            Self::Stream { url } => lookout_service::redact::url(url),
        }
    }

    /// The credentials of a stream URL, to mask in ffmpeg's error output.
    fn secrets(&self) -> Vec<String> {
        match self {
            Self::File { .. } => Vec::new(),
            Self::Stream { url } => lookout_service::redact::secrets_of(url),
        }
    }
}

/// Protocols ffmpeg may open for a stream read through a concat list.
const STREAM_PROTOCOLS: &str = "pipe,rtsp,rtsps,rtp,srtp,udp,tcp,tls,http,https,httpproxy,crypto";

/// How ffmpeg is run.
#[derive(Debug, Clone)]
pub(crate) struct FfmpegConfig {
    /// The program (`ffmpeg`, or a path).
    pub(crate) program: PathBuf,
    pub(crate) input: Input,
    /// Resample to this frame rate (`-vf fps=`).
    pub(crate) fps: Option<f64>,
}

impl FfmpegConfig {
    /// What ffmpeg reads on its standard input: for a stream URL with credentials, a concat
    /// list with the URL and the stream's options; otherwise nothing (the URL is an argument).
    pub(crate) fn stdin_script(&self) -> Option<String> {
        let Input::Stream { url } = &self.input else { return None };
        if self.input.secrets().is_empty() {
            return None;
        }
        let mut script = format!("ffconcat version 1.0\nfile '{}'\n", url.replace('\'', "'\\''"));
        for pair in stream_options(url).chunks(2) {
            script.push_str(&format!("option {} {}\n", pair[0].trim_start_matches('-'), pair[1]));
        }
        Some(script)
    }

    /// The command-line arguments for ffmpeg.
    pub(crate) fn args(&self, ctx: &SourceContext) -> Vec<String> {
        let mut a: Vec<String> =
            ["-hide_banner", "-loglevel", "error", "-nostdin"].map(String::from).to_vec();
        match &self.input {
            Input::File { path, paced, looped } => {
                if *paced {
                    a.push("-re".into());
                }
                if *looped {
                    a.extend(["-stream_loop".into(), "-1".into()]);
                }
                a.extend(["-i".into(), path.to_string_lossy().into_owned()]);
            }
            Input::Stream { url } => {
                if self.stdin_script().is_some() {
                    // The URL and its options come on standard input (see the module doc).
                    a.extend(
                        ["-f", "concat", "-safe", "0", "-protocol_whitelist"].map(String::from),
                    );
                    a.extend([STREAM_PROTOCOLS.into(), "-i".into(), "pipe:0".into()]);
                } else {
                    a.extend(stream_options(url));
                    a.extend(["-i".into(), url.clone()]);
                }
            }
        }
        a.push("-an".into());
        let mut filters = Vec::new();
        if let Some(fps) = self.fps {
            filters.push(format!("fps={fps}"));
        }
        let (mw, mh) = (ctx.jpeg.max_width, ctx.jpeg.max_height);
        if mw.is_some() || mh.is_some() {
            let w = mw.map_or("iw".to_owned(), |w| format!("min(iw,{w})"));
            let h = mh.map_or("ih".to_owned(), |h| format!("min(ih,{h})"));
            filters.push(format!("scale=w='{w}':h='{h}':force_original_aspect_ratio=decrease"));
        }
        if !filters.is_empty() {
            a.extend(["-vf".into(), filters.join(",")]);
        }
        a.extend(
            ["-f", "image2pipe", "-c:v", "mjpeg", "-pix_fmt", "yuvj420p", "-q:v"].map(String::from),
        );
        a.push(ctx.jpeg.ffmpeg_qscale().to_string());
        a.extend(["-flush_packets", "1", "-"].map(String::from));
        a
    }
}

/// ffmpeg's options for a stream: RTSP over TCP (no lost packets, so no smeared frames, and it
/// passes NAT) and, for every protocol, a timeout that ends a silent connection so it can be
/// retried.
fn stream_options(url: &str) -> Vec<String> {
    let timeout_us = STALL_TIMEOUT.as_micros().to_string();
    if url.starts_with("rtsp") {
        vec!["-rtsp_transport".into(), "tcp".into(), "-timeout".into(), timeout_us]
    } else {
        vec!["-rw_timeout".into(), timeout_us]
    }
}

/// A running ffmpeg.
#[derive(Debug)]
struct Running {
    child: Child,
    stdout: ChildStdout,
    splitter: Splitter,
    stderr: Arc<Mutex<VecDeque<String>>>,
    stderr_task: JoinHandle<()>,
    frames: u64,
}

/// The ffmpeg source.
#[derive(Debug)]
pub(crate) struct Ffmpeg {
    ctx: SourceContext,
    config: FfmpegConfig,
    running: Option<Running>,
    backoff: lookout_bus::Backoff,
    buf: Vec<u8>,
}

impl Ffmpeg {
    /// Starts ffmpeg, so a missing program fails at start.
    pub(crate) fn open(ctx: SourceContext, config: FfmpegConfig) -> Result<Self, CameraError> {
        let backoff = lookout_bus::Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut me = Self { ctx, config, running: None, backoff, buf: vec![0; READ_CHUNK] };
        me.running = Some(me.spawn()?);
        Ok(me)
    }

    fn spawn(&self) -> Result<Running, CameraError> {
        let args = self.config.args(&self.ctx);
        let script = self.config.stdin_script();
        let mut child = Command::new(&self.config.program)
            .args(&args)
            .stdin(if script.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| CameraError::FfmpegSpawn {
                camera: self.ctx.camera.clone(),
                program: self.config.program.display().to_string(),
                source,
            })?;
        if let Some(script) = script {
            // A few hundred bytes: the pipe takes them at once, and closing it ends the list.
            let mut stdin = child.stdin.take().ok_or_else(|| self.worker("ffmpeg input"))?;
            tokio::spawn(async move {
                let _ = stdin.write_all(script.as_bytes()).await;
            });
        }
        let stdout = child.stdout.take().ok_or_else(|| self.worker("ffmpeg output"))?;
        let stderr_pipe = child.stderr.take().ok_or_else(|| self.worker("ffmpeg error output"))?;
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_task = tokio::spawn(keep_stderr(
            self.ctx.camera.clone(),
            stderr_pipe,
            self.config.input.secrets(),
            Arc::clone(&stderr),
        ));
        info!(camera_id = %self.ctx.camera, input = %self.config.input.name(), program = %self.config.program.display(), "ffmpeg started");
        Ok(Running { child, stdout, splitter: Splitter::default(), stderr, stderr_task, frames: 0 })
    }

    fn worker(&self, what: &'static str) -> CameraError {
        CameraError::Worker { camera: self.ctx.camera.clone(), what }
    }

    pub(crate) async fn next(&mut self) -> Result<Option<Captured>, CameraError> {
        loop {
            let Some(run) = self.running.as_mut() else {
                // Only network streams get here: wait, then reconnect.
                tokio::time::sleep(self.backoff.next_delay()).await;
                self.running = Some(self.spawn()?);
                continue;
            };
            if let Some(data) = run.splitter.next_frame() {
                let mark = CaptureMark::now();
                run.frames += 1;
                match self.ctx.jpeg.from_jpeg(data) {
                    Ok(jpeg) => {
                        self.backoff.reset();
                        return Ok(Some(Captured::new(jpeg, mark)));
                    }
                    Err(e) => {
                        self.ctx.stats.dropped(DropReason::BadFrame);
                        warn!(camera_id = %self.ctx.camera, error = %e, "ffmpeg sent a frame that is not a usable JPEG; skipped");
                        continue;
                    }
                }
            }
            let live = matches!(self.config.input, Input::Stream { .. });
            let read = run.stdout.read(&mut self.buf);
            let read = if live {
                match tokio::time::timeout(STALL_TIMEOUT, read).await {
                    Ok(r) => r,
                    Err(_) => {
                        warn!(camera_id = %self.ctx.camera, input = %self.config.input.name(), stalled_s = STALL_TIMEOUT.as_secs(), "no data from the stream; reconnecting");
                        self.stop().await;
                        continue;
                    }
                }
            } else {
                read.await
            };
            match read {
                Ok(n) if n > 0 => run.splitter.push(&self.buf[..n]),
                Ok(_) | Err(_) => {
                    // End of output: ffmpeg finished or died.
                    let (status, stderr, frames) = self.stop().await;
                    let input = self.config.input.name();
                    match &self.config.input {
                        Input::File { .. } if status.is_some_and(|s| s.success()) => {
                            info!(camera_id = %self.ctx.camera, input = %input, frames, "end of file");
                            return Ok(None);
                        }
                        Input::File { .. } => {
                            return Err(CameraError::FfmpegFailed {
                                camera: self.ctx.camera.clone(),
                                input,
                                status: describe(status),
                                stderr: if stderr.is_empty() {
                                    "no error output".into()
                                } else {
                                    stderr
                                },
                            });
                        }
                        Input::Stream { .. } => {
                            self.ctx.health.set(false);
                            warn!(camera_id = %self.ctx.camera, input = %input, status = %describe(status), stderr = %stderr, frames, attempt = self.backoff.attempts() + 1, "stream ended; reconnecting");
                        }
                    }
                }
            }
        }
    }

    /// Stops ffmpeg (if running) and returns how it exited, its last error lines and how many
    /// frames it gave.
    async fn stop(&mut self) -> (Option<ExitStatus>, String, u64) {
        let Some(mut run) = self.running.take() else {
            return (None, String::new(), 0);
        };
        // After the end of its output ffmpeg exits by itself; a stalled one is killed.
        let status = match tokio::time::timeout(Duration::from_secs(5), run.child.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                let _ = run.child.kill().await;
                None
            }
        };
        // The error output ends when ffmpeg has exited; wait for the last lines.
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut run.stderr_task).await;
        run.stderr_task.abort();
        let lines = run.stderr.lock().unwrap_or_else(PoisonError::into_inner);
        let text = lines.iter().map(String::as_str).collect::<Vec<_>>().join(" | ");
        (status, text, run.frames)
    }
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) => s.to_string(),
        None => "killed".to_owned(),
    }
}

/// Logs ffmpeg's error output and keeps its last lines, with `secrets` masked.
async fn keep_stderr(
    camera: String,
    pipe: tokio::process::ChildStderr,
    secrets: Vec<String>,
    keep: Arc<Mutex<VecDeque<String>>>,
) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = lookout_service::redact::mask(line.trim(), &secrets);
        if line.is_empty() {
            continue;
        }
        warn!(camera_id = %camera, ffmpeg = %line, "ffmpeg");
        let mut keep = keep.lock().unwrap_or_else(PoisonError::into_inner);
        if keep.len() == STDERR_LINES {
            keep.pop_front();
        }
        keep.push_back(line);
    }
}

#[cfg(test)]
mod tests {
    use lookout_service::Readiness;

    use super::*;
    use crate::{jpeg::JpegOptions, source::Health};

    fn ctx(max_width: Option<u32>, max_height: Option<u32>) -> SourceContext {
        SourceContext {
            camera: "c".into(),
            jpeg: JpegOptions { quality: 85, max_width, max_height },
            health: Health::single(Readiness::default()),
            stats: Arc::default(),
        }
    }

    fn joined(input: Input, fps: Option<f64>, c: &SourceContext) -> String {
        FfmpegConfig { program: "ffmpeg".into(), input, fps }.args(c).join(" ")
    }

    #[test]
    fn a_paced_looping_file_is_read_in_real_time_again_and_again() {
        let file = Input::File { path: "a.mp4".into(), paced: true, looped: true };
        let a = joined(file, None, &ctx(None, None));
        assert!(a.contains("-re -stream_loop -1 -i a.mp4 -an -f image2pipe -c:v mjpeg"), "{a}");
        assert!(a.ends_with("-flush_packets 1 -"), "{a}");
        assert!(!a.contains("-vf"), "{a}");
    }

    #[test]
    fn fps_and_size_limits_become_filters() {
        let file = Input::File { path: "a.mp4".into(), paced: false, looped: false };
        let a = joined(file, Some(5.0), &ctx(Some(320), None));
        assert!(!a.contains("-re"), "{a}");
        assert!(
            a.contains(
                "-vf fps=5,scale=w='min(iw,320)':h='ih':force_original_aspect_ratio=decrease"
            ),
            "{a}"
        );
    }

    #[test]
    fn credentials_go_to_standard_input_not_the_command_line() {
        let url = "rtsp://admin:hunter2@cam/s";
        let config = FfmpegConfig {
            program: "ffmpeg".into(),
            input: Input::Stream { url: url.into() },
            fps: None,
        };
        let a = config.args(&ctx(None, None)).join(" ");
        assert!(!a.contains("hunter2"), "{a}");
        assert!(a.contains("-f concat -safe 0 -protocol_whitelist"), "{a}");
        assert!(a.contains("-i pipe:0"), "{a}");
        let script = config.stdin_script().unwrap();
        assert_eq!(
            script,
            "ffconcat version 1.0\nfile 'rtsp://admin:hunter2@cam/s'\n\
             option rtsp_transport tcp\noption timeout 15000000\n"
        );
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn streams_use_tcp_and_time_out() {
        let a = joined(Input::Stream { url: "rtsp://h/s".into() }, None, &ctx(None, None));
        assert!(a.contains("-rtsp_transport tcp -timeout 15000000 -i rtsp://h/s"), "{a}");
        let a = joined(Input::Stream { url: "http://h/s".into() }, None, &ctx(None, None));
        assert!(a.contains("-rw_timeout 15000000 -i http://h/s"), "{a}");
        assert!(!a.contains("-re "), "{a}");
    }
}
