use std::path::PathBuf;

/// Errors of the camera. Each names the camera (and the device, file or stream) it concerns,
/// so one log line says what went wrong where.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    /// A `--source` that does not parse.
    #[error("invalid source {given:?}: {reason}")]
    BadSource {
        /// What was given.
        given: String,
        /// Why it is refused, and what would be accepted.
        reason: String,
    },

    /// An option, or a combination of options, that cannot work.
    #[error("{0}")]
    Usage(String),

    /// The webcam asked for does not exist.
    #[error("camera {camera}: webcam {device} was not found; {available}")]
    WebcamNotFound {
        /// Camera id.
        camera: String,
        /// The device asked for, e.g. `/dev/video7`.
        device: String,
        /// The cameras that do exist, in words.
        available: String,
    },

    /// The webcam exists but could not be opened or configured (busy, permissions, no usable
    /// format).
    #[error("camera {camera}: cannot open webcam {device}: {reason}; {available}")]
    WebcamOpen {
        /// Camera id.
        camera: String,
        /// The device, e.g. `/dev/video0`.
        device: String,
        /// What the driver said.
        reason: String,
        /// The cameras that exist, in words.
        available: String,
    },

    /// The webcam failed while streaming.
    #[error("camera {camera}: webcam {device}: {reason}")]
    Webcam {
        /// Camera id.
        camera: String,
        /// The device.
        device: String,
        /// What went wrong.
        reason: String,
    },

    /// `--list` found no camera.
    #[error("no cameras were found{detail}")]
    NoCameras {
        /// Why, when known (e.g. what the system said).
        detail: String,
    },

    /// The ffmpeg program could not be started.
    #[error(
        "camera {camera}: cannot run ffmpeg ({program}): {source}; install ffmpeg \
         (Debian/Ubuntu: apt-get install ffmpeg) or point --ffmpeg at it"
    )]
    FfmpegSpawn {
        /// Camera id.
        camera: String,
        /// The program that was run.
        program: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// ffmpeg stopped with an error while reading a file.
    #[error("camera {camera}: ffmpeg could not read {input} ({status}): {stderr}")]
    FfmpegFailed {
        /// Camera id.
        camera: String,
        /// The input, as given to ffmpeg.
        input: String,
        /// How ffmpeg exited.
        status: String,
        /// The last lines ffmpeg printed.
        stderr: String,
    },

    /// A file or directory could not be read.
    #[error("camera {camera}: cannot read {path}: {source}")]
    Io {
        /// Camera id.
        camera: String,
        /// The path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// An image source matched no usable image.
    #[error("camera {camera}: no images (.jpg, .jpeg, .png) found at {pattern}{detail}")]
    NoImages {
        /// Camera id.
        camera: String,
        /// The directory or glob.
        pattern: String,
        /// Why the images found could not be used, if any were found.
        detail: String,
    },

    /// An image could not be decoded or encoded.
    #[error("camera {camera}: image {what}: {source}")]
    Image {
        /// Camera id.
        camera: String,
        /// Which image (a path, or `frame`).
        what: String,
        /// The codec's error.
        #[source]
        source: image::ImageError,
    },

    /// A worker thread or task of the camera died.
    #[error("camera {camera}: {what} stopped unexpectedly")]
    Worker {
        /// Camera id.
        camera: String,
        /// Which worker.
        what: &'static str,
    },
}
