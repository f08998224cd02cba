//! `images:DIR`, `images:GLOB` or `images:FILE`: a looping slideshow. Each image is shown for
//! `--hold`, measured from the capture time of its first frame, repeated at `--fps`.
//!
//! JPEG files that fit `--max-width/--max-height` are sent byte for byte; other images (PNG,
//! or too large) are decoded, scaled down and encoded once when they come up.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;
use tracing::warn;

use super::{CaptureMark, Captured, Pacer, SourceContext};
use crate::{
    CameraError,
    jpeg::{Jpeg, JpegOptions},
};

/// File extensions taken from a directory.
const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// The slideshow source.
#[derive(Debug)]
pub(crate) struct Slideshow {
    ctx: SourceContext,
    paths: Arc<[PathBuf]>,
    hold: Duration,
    pacer: Pacer,
    paced: bool,
    /// Where the slideshow clock starts when paced (it is real time then).
    origin: Instant,
    /// Index into `paths` of the image on show, and its frame.
    current: (usize, Jpeg),
    /// Slideshow time of the first frame of the image on show.
    shown_at: Option<Duration>,
    /// The next image, loading in the background so a switch costs no time.
    upcoming: Option<JoinHandle<Result<(usize, Jpeg), CameraError>>>,
}

impl Slideshow {
    /// Lists the images and loads the first, so a bad source fails at start.
    pub(crate) async fn open(
        ctx: SourceContext,
        pattern: &str,
        hold: Duration,
        fps: f64,
        paced: bool,
    ) -> Result<Self, CameraError> {
        let paths: Arc<[PathBuf]> = list_images(&ctx.camera, pattern)?.into();
        let current = load_first(&ctx, &paths, 0, None).await?;
        let mut show = Self {
            ctx,
            paths,
            hold,
            pacer: Pacer::new(fps, paced),
            paced,
            origin: Instant::now(),
            current,
            shown_at: None,
            upcoming: None,
        };
        show.prefetch();
        Ok(show)
    }

    /// The slideshow clock: real time when paced, frame time (`frames / fps`) when not.
    fn clock(&self, tick: Duration, at: Instant) -> Duration {
        if self.paced { at.saturating_duration_since(self.origin) } else { tick }
    }

    /// Starts loading the image after the one on show (none for a slideshow of one image).
    fn prefetch(&mut self) {
        if self.paths.len() < 2 {
            return;
        }
        let (ctx, paths) = (self.ctx.clone(), Arc::clone(&self.paths));
        let start = (self.current.0 + 1) % paths.len();
        self.upcoming =
            Some(tokio::spawn(async move { load_first(&ctx, &paths, start, None).await }));
    }

    pub(crate) async fn next(&mut self) -> Result<Option<Captured>, CameraError> {
        let tick = self.pacer.tick().await;
        let now = self.clock(tick, Instant::now());
        // An image is held for `hold` from its first frame's capture, so the capture times of
        // two switches are never closer than `hold`.
        let switch = self.shown_at.is_some_and(|shown| now.saturating_sub(shown) >= self.hold);
        if switch {
            let loaded = match self.upcoming.take() {
                Some(loading) => loading.await.map_err(|_| CameraError::Worker {
                    camera: self.ctx.camera.clone(),
                    what: "image loader",
                })?,
                None => {
                    let next = (self.current.0 + 1) % self.paths.len();
                    load_first(&self.ctx, &self.paths, next, Some(&self.current)).await
                }
            };
            self.current = loaded?;
            self.prefetch();
        }
        let mark = CaptureMark::now();
        if switch || self.shown_at.is_none() {
            self.shown_at = Some(self.clock(tick, mark.mono));
            // Frames of this image are due from its first frame on, so it gets exactly
            // `hold * fps` frames however late that first one came.
            self.pacer.restart_from(tokio::time::Instant::from_std(mark.mono));
        }
        Ok(Some(Captured::new(self.current.1.clone(), mark)))
    }
}

/// Loads the first image that loads, starting at `start` and going round once. Images that
/// fail are skipped with a warning; none loading is an error. `current` is reused rather than
/// read again when it comes up (a slideshow of one image).
async fn load_first(
    ctx: &SourceContext,
    paths: &[PathBuf],
    start: usize,
    current: Option<&(usize, Jpeg)>,
) -> Result<(usize, Jpeg), CameraError> {
    if let Some((index, jpeg)) = current
        && *index == start
    {
        return Ok((start, jpeg.clone()));
    }
    let mut last_error = None;
    for k in 0..paths.len() {
        let index = (start + k) % paths.len();
        let path = paths[index].clone();
        let jpeg = ctx.jpeg;
        let loaded =
            tokio::task::spawn_blocking(move || load(&path, jpeg)).await.map_err(|_| {
                CameraError::Worker { camera: ctx.camera.clone(), what: "image loader" }
            })?;
        match loaded {
            Ok(j) => return Ok((index, j)),
            Err(e) => {
                let e = image_error(&ctx.camera, &paths[index], e);
                warn!(camera_id = %ctx.camera, error = %e, "skipping an image that does not load");
                last_error = Some(e);
            }
        }
    }
    Err(CameraError::NoImages {
        camera: ctx.camera.clone(),
        pattern: paths.first().map(|p| p.display().to_string()).unwrap_or_default(),
        detail: last_error.map(|e| format!(": none loads ({e})")).unwrap_or_default(),
    })
}

fn image_error(camera: &str, path: &Path, e: LoadError) -> CameraError {
    match e {
        LoadError::Io(source) => {
            CameraError::Io { camera: camera.to_owned(), path: path.to_path_buf(), source }
        }
        LoadError::Image(source) => CameraError::Image {
            camera: camera.to_owned(),
            what: path.display().to_string(),
            source,
        },
    }
}

enum LoadError {
    Io(std::io::Error),
    Image(image::ImageError),
}

/// Reads one image as a JPEG frame: a JPEG that fits is kept byte for byte.
fn load(path: &Path, options: JpegOptions) -> Result<Jpeg, LoadError> {
    let data = std::fs::read(path).map_err(LoadError::Io)?;
    if data.starts_with(&[0xFF, 0xD8]) {
        return options.from_jpeg(data.into()).map_err(LoadError::Image);
    }
    let decoded = image::load_from_memory(&data).map_err(LoadError::Image)?;
    options.from_image(decoded).map_err(LoadError::Image)
}

/// The images a pattern names, sorted by path: the image files of a directory, the matches
/// of a glob, or one file.
pub(crate) fn list_images(camera: &str, pattern: &str) -> Result<Vec<PathBuf>, CameraError> {
    let none = |detail: String| CameraError::NoImages {
        camera: camera.to_owned(),
        pattern: pattern.to_owned(),
        detail,
    };
    let path = Path::new(pattern);
    let mut paths = if pattern.contains(['*', '?', '[']) {
        let matches = glob::glob(pattern).map_err(|e| none(format!(": bad glob: {e}")))?;
        matches.filter_map(Result::ok).filter(|p| p.is_file()).collect::<Vec<_>>()
    } else if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|source| CameraError::Io {
            camera: camera.to_owned(),
            path: path.to_path_buf(),
            source,
        })?;
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && has_image_extension(p))
            .collect()
    } else if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        return Err(none(": no such file or directory".to_owned()));
    };
    paths.sort();
    if paths.is_empty() {
        return Err(none(String::new()));
    }
    Ok(paths)
}

fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_lists_its_images_sorted_and_a_glob_its_matches() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.PNG", "a.jpg", "notes.txt", "c.jpeg"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub.jpg")).unwrap();
        let d = dir.path().to_str().unwrap();
        let names = |v: Vec<PathBuf>| {
            v.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(list_images("c", d).unwrap()), ["a.jpg", "b.PNG", "c.jpeg"]);
        assert_eq!(names(list_images("c", &format!("{d}/*.txt")).unwrap()), ["notes.txt"]);
        assert_eq!(names(list_images("c", &format!("{d}/a.jpg")).unwrap()), ["a.jpg"]);

        let err = list_images("lobby", &format!("{d}/*.gif")).unwrap_err().to_string();
        assert!(err.contains("lobby") && err.contains("no images"), "{err}");
        let err = list_images("lobby", "/nonexistent/dir").unwrap_err().to_string();
        assert!(err.contains("no such file or directory"), "{err}");
    }
}
