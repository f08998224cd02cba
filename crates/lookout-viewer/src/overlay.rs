//! The label overlay: the current top label and score burned into a camera's frames.
//!
//! One renderer task per camera, started by its first overlay client, renders each new frame
//! once into the camera's overlay slot, which every overlay client watches: the cost is per
//! frame, never per client. When the top label's name changes it redraws the current frame at
//! once rather than waiting for the next one. The task idles (and clears the slot) while no
//! client watches, and ends when the camera is forgotten (idle).
//! Text is drawn with the public-domain 8×8 bitmap font of `font8x8`; no font files.

use std::{
    io::Cursor,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use bytes::Bytes;
use image::{ImageFormat, ImageReader, Limits, RgbImage, codecs::jpeg::JpegEncoder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{
    metrics as m,
    state::{Camera, CurrentLabel, ShownFrame, Slot},
};

/// Frames larger than this on either side are passed through without an overlay.
const MAX_SIDE: u32 = 8192;

/// Subscribes to a camera's overlay frames, starting its renderer if needed.
pub(crate) fn subscribe(
    camera: &Arc<Camera>,
    quality: u8,
    shutdown: &CancellationToken,
) -> watch::Receiver<Slot> {
    let rx = camera.overlay.subscribe();
    if !camera.renderer_started.swap(true, Ordering::AcqRel) {
        tokio::spawn(render_loop(camera.clone(), quality, shutdown.clone()));
    }
    camera.overlay_wanted.notify_one();
    rx
}

#[tracing::instrument(name = "overlay", skip_all, fields(camera_id = %camera.id))]
async fn render_loop(camera: Arc<Camera>, quality: u8, shutdown: CancellationToken) {
    let mut frames = camera.frames.subscribe();
    let mut labels = camera.label_names.subscribe();
    frames.mark_changed();
    loop {
        while camera.overlay.receiver_count() == 0 {
            camera.overlay.send_replace(None);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = camera.forgotten.cancelled() => return,
                () = camera.overlay_wanted.notified() => {}
            }
            frames.mark_changed();
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = camera.forgotten.cancelled() => return,
            () = camera.overlay.closed() => continue,
            changed = frames.changed() => if changed.is_err() { return },
            changed = labels.changed() => if changed.is_err() { return },
        }
        labels.borrow_and_update();
        let frame = frames.borrow_and_update().clone();
        let Some(frame) = frame else { continue };
        let label = camera.label();
        let source = frame.clone();
        let started = Instant::now();
        let rendered =
            tokio::task::spawn_blocking(move || render(&source, label.as_ref(), quality)).await;
        let shown = match rendered {
            Ok(Ok(jpeg)) => {
                metrics::counter!(m::OVERLAY_RENDERS, "outcome" => "rendered").increment(1);
                metrics::histogram!(m::OVERLAY_RENDER_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                Arc::new(ShownFrame {
                    sequence: frame.sequence,
                    index: frame.index,
                    captured: frame.captured,
                    width: frame.width,
                    height: frame.height,
                    jpeg,
                })
            }
            Ok(Err(e)) => {
                metrics::counter!(m::OVERLAY_RENDERS, "outcome" => "failed").increment(1);
                debug!(sequence = frame.sequence, error = %e, "cannot render the overlay; frame passed through");
                frame
            }
            Err(e) => {
                metrics::counter!(m::OVERLAY_RENDERS, "outcome" => "failed").increment(1);
                debug!(sequence = frame.sequence, error = %e, "overlay task failed; frame passed through");
                frame
            }
        };
        camera.overlay_renders.fetch_add(1, Ordering::Relaxed);
        camera.overlay.send_replace(Some(shown));
    }
}

/// Decodes the frame, draws the label bar and encodes it again.
pub(crate) fn render(
    frame: &ShownFrame,
    label: Option<&CurrentLabel>,
    quality: u8,
) -> Result<Bytes, image::ImageError> {
    let mut reader = ImageReader::with_format(Cursor::new(&frame.jpeg[..]), ImageFormat::Jpeg);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    reader.limits(limits);
    let mut img = reader.decode()?.into_rgb8();
    let text = match label {
        Some(l) => format!("{} {:.0}%", l.name, l.score * 100.0),
        None => "no label yet".to_owned(),
    };
    draw_label(&mut img, &text, label.map_or(0.0, |l| l.score));
    let mut out = Vec::with_capacity(frame.jpeg.len() + frame.jpeg.len() / 4);
    JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100)).encode_image(&img)?;
    Ok(Bytes::from(out))
}

/// Draws a dark bar across the top with `text` in white and a thin score bar under it.
fn draw_label(img: &mut RgbImage, text: &str, score: f32) {
    let (w, h) = img.dimensions();
    let scale = (w / 320).clamp(1, 6);
    let pad = 4 * scale;
    let bar_h = (8 * scale + 2 * pad).min(h);
    for y in 0..bar_h {
        for x in 0..w {
            let p = img.get_pixel_mut(x, y);
            for c in &mut p.0 {
                *c = (u16::from(*c) * 3 / 10) as u8;
            }
        }
    }
    let mut x0 = pad;
    for ch in text.chars() {
        let glyph = font8x8::legacy::BASIC_LEGACY
            .get(ch as usize)
            .copied()
            .unwrap_or(font8x8::legacy::BASIC_LEGACY[b'?' as usize]);
        if x0 + 8 * scale > w {
            break;
        }
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (x, y) = (x0 + col * scale + dx, pad + row as u32 * scale + dy);
                        if x < w && y < h {
                            img.put_pixel(x, y, image::Rgb([255, 255, 255]));
                        }
                    }
                }
            }
        }
        x0 += 8 * scale;
    }
    // The score as a green line along the bottom of the bar.
    let line = scale.max(2).min(h.saturating_sub(bar_h));
    let filled = (w as f32 * score.clamp(0.0, 1.0)) as u32;
    for y in bar_h..bar_h + line {
        for x in 0..filled.min(w) {
            img.put_pixel(x, y, image::Rgb([61, 220, 132]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Bytes {
        let img = RgbImage::from_pixel(w, h, image::Rgb([120, 120, 120]));
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img).unwrap();
        Bytes::from(out)
    }

    fn frame(data: Bytes) -> ShownFrame {
        ShownFrame { sequence: 1, index: 0, captured: None, width: 640, height: 480, jpeg: data }
    }

    #[test]
    fn the_label_is_drawn_into_the_frame() {
        let label = CurrentLabel {
            sequence: 1,
            name: "espresso".into(),
            score: 0.5,
            model: "m".into(),
            capture_ms: None,
        };
        let out = render(&frame(jpeg(640, 480)), Some(&label), 85).unwrap();
        let img = image::load_from_memory(&out).unwrap().into_rgb8();
        assert_eq!(img.dimensions(), (640, 480));
        // Inside the bar there are bright text pixels and dark background.
        let bar: Vec<u8> = (0..24u32)
            .flat_map(|y| (0..200u32).map(move |x| (x, y)))
            .map(|(x, y)| img.get_pixel(x, y)[0])
            .collect();
        assert!(bar.iter().any(|v| *v > 200), "text pixels");
        assert!(bar.iter().any(|v| *v < 60), "dark bar");
        // Below the bar the frame is untouched grey.
        let p = img.get_pixel(320, 300)[0];
        assert!((110..=130).contains(&p), "{p}");
    }

    #[test]
    fn a_corrupt_frame_is_an_error_not_a_panic() {
        assert!(render(&frame(Bytes::from_static(b"\xff\xd8 nope")), None, 80).is_err());
    }

    #[test]
    fn tiny_frames_do_not_panic() {
        let out = render(&frame(jpeg(3, 2)), None, 80).unwrap();
        assert!(image::load_from_memory(&out).is_ok());
    }
}
