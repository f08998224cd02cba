//! The label overlay: the current top label and score, and the boxes of the objects detectors
//! found (each with its label and score, a colour per class), burned into a camera's frames.
//!
//! One renderer task per camera, started by its first overlay client, renders each new frame
//! once into the camera's overlay slot, which every overlay client watches: the cost is per
//! frame, never per client. When the top label's name or the classes found change it redraws
//! the current frame at once rather than waiting for the next one. The task idles (and clears
//! the slot) while no client watches, and ends when the camera is forgotten (idle).
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
    state::{Camera, CurrentLabel, CurrentObjects, ShownFrame, Slot},
};

/// A colour per class (by class id), the same as the page's (`assets/app.js`).
/// Twelve, so that the COCO classes often seen together (person 1, car 3, cat 17, dog 18, cup
/// 47, chair 62, dining table 67) get different ones.
pub(crate) const CLASS_COLOURS: [[u8; 3]; 12] = [
    [61, 220, 132],
    [78, 161, 255],
    [240, 180, 41],
    [242, 85, 90],
    [180, 140, 255],
    [42, 212, 212],
    [255, 138, 61],
    [255, 111, 181],
    [163, 217, 57],
    [230, 237, 243],
    [192, 139, 92],
    [255, 214, 165],
];

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
        let detections = camera.detections();
        let source = frame.clone();
        let started = Instant::now();
        let rendered = tokio::task::spawn_blocking(move || {
            render(&source, label.as_ref(), &detections, quality)
        })
        .await;
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

/// Decodes the frame, draws the objects' boxes and the label bar, and encodes it again.
pub(crate) fn render(
    frame: &ShownFrame,
    label: Option<&CurrentLabel>,
    detections: &[CurrentObjects],
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
    let bar_bottom = draw_label(&mut img, &text, label.map_or(0.0, |l| l.score));
    for found in detections {
        // Worst first, so the best box is drawn on top.
        for object in found.objects.iter().rev() {
            draw_box(&mut img, object, bar_bottom);
        }
    }
    let mut out = Vec::with_capacity(frame.jpeg.len() + frame.jpeg.len() / 4);
    JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100)).encode_image(&img)?;
    Ok(Bytes::from(out))
}

/// The text scale for a frame `w` pixels wide.
fn text_scale(w: u32) -> u32 {
    (w / 320).clamp(1, 6)
}

/// Draws an object's box in its class colour, with its label and score on a tag of that colour
/// above the box, or inside it when that would cover the label bar (rows above `top`).
fn draw_box(img: &mut RgbImage, object: &crate::state::ObjectView, top: u32) {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return;
    }
    let colour = image::Rgb(CLASS_COLOURS[object.class_id as usize % CLASS_COLOURS.len()]);
    let px = |v: f32, size: u32| ((v.clamp(0.0, 1.0) * size as f32) as u32).min(size - 1);
    let (x0, y0) = (px(object.x, w), px(object.y, h));
    let (x1, y1) = (px(object.x + object.width, w), px(object.y + object.height, h));
    let scale = text_scale(w);
    let thick = 2 * scale;
    for y in y0..=y1 {
        for x in x0..=x1 {
            let edge = x < x0 + thick || x + thick > x1 || y < y0 + thick || y + thick > y1;
            if edge {
                img.put_pixel(x, y, colour);
            }
        }
    }
    let text = format!("{} {:.0}%", object.name, object.score * 100.0);
    let tag_h = 8 * scale + 2 * scale;
    let tag_w = (text.chars().count() as u32 * 8 * scale + 2 * scale).min(w - x0);
    let tag_y = if y0 >= top + tag_h { y0 - tag_h } else { y0.max(top).min(h - 1) };
    for y in tag_y..(tag_y + tag_h).min(h) {
        for x in x0..x0 + tag_w {
            img.put_pixel(x, y, colour);
        }
    }
    draw_text(img, (x0 + scale, tag_y + scale), &text, scale, image::Rgb([0, 0, 0]));
}

/// Draws `text` with its top-left corner at `at`, `scale` pixels per font pixel, clipped to
/// the frame.
fn draw_text(img: &mut RgbImage, at: (u32, u32), text: &str, scale: u32, colour: image::Rgb<u8>) {
    let (w, h) = img.dimensions();
    let mut x0 = at.0;
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
                        let (x, y) = (x0 + col * scale + dx, at.1 + row as u32 * scale + dy);
                        if x < w && y < h {
                            img.put_pixel(x, y, colour);
                        }
                    }
                }
            }
        }
        x0 += 8 * scale;
    }
}

/// Draws a dark bar across the top with `text` in white and a thin score bar under it; returns
/// the first row below them.
fn draw_label(img: &mut RgbImage, text: &str, score: f32) -> u32 {
    let (w, h) = img.dimensions();
    let scale = text_scale(w);
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
    draw_text(img, (pad, pad), text, scale, image::Rgb([255, 255, 255]));
    // The score as a green line along the bottom of the bar.
    let line = scale.max(2).min(h.saturating_sub(bar_h));
    let filled = (w as f32 * score.clamp(0.0, 1.0)) as u32;
    for y in bar_h..bar_h + line {
        for x in 0..filled.min(w) {
            img.put_pixel(x, y, image::Rgb([61, 220, 132]));
        }
    }
    bar_h + line
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
        let out = render(&frame(jpeg(640, 480)), Some(&label), &[], 85).unwrap();
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
        assert!(render(&frame(Bytes::from_static(b"\xff\xd8 nope")), None, &[], 80).is_err());
    }

    fn objects(boxes: &[(u32, &str, [f32; 4])]) -> Vec<CurrentObjects> {
        let objects = boxes
            .iter()
            .map(|(class_id, name, [x, y, width, height])| crate::state::ObjectView {
                class_id: *class_id,
                name: (*name).into(),
                score: 0.9,
                x: *x,
                y: *y,
                width: *width,
                height: *height,
            })
            .collect();
        vec![CurrentObjects { sequence: 1, model: "d".into(), capture_ms: None, objects }]
    }

    #[test]
    fn boxes_are_drawn_in_their_class_colour_with_a_tag() {
        // A cat (class 17) in the middle, a cup (class 47) at the top-left corner.
        let found =
            objects(&[(17, "cat", [0.25, 0.5, 0.5, 0.25]), (47, "cup", [0.0, 0.0, 0.1, 0.1])]);
        let out = render(&frame(jpeg(640, 480)), None, &found, 95).unwrap();
        let img = image::load_from_memory(&out).unwrap().into_rgb8();
        let near = |x: u32, y: u32, want: [u8; 3]| {
            let p = img.get_pixel(x, y).0;
            p.iter().zip(want).all(|(a, b)| a.abs_diff(b) < 40)
        };
        let cat = CLASS_COLOURS[17 % 12];
        // The box's edges (4 pixels wide): left from x = 160, bottom up to y = 360 (0.75 of 480).
        assert!(near(161, 300, cat), "left edge {:?}", img.get_pixel(161, 300));
        assert!(near(320, 358, cat), "bottom edge {:?}", img.get_pixel(320, 358));
        // Inside the box the frame is untouched grey.
        assert!(near(320, 300, [120, 120, 120]), "inside {:?}", img.get_pixel(320, 300));
        // The tag sits above the box, in the class colour, with dark text on it.
        let tag: Vec<[u8; 3]> = (230..238)
            .flat_map(|y| (162..260).map(move |x| (x, y)))
            .map(|(x, y)| img.get_pixel(x, y).0)
            .collect();
        assert!(
            tag.iter().any(|p| p.iter().zip(cat).all(|(a, b)| a.abs_diff(b) < 40)),
            "tag colour"
        );
        assert!(tag.iter().any(|p| p.iter().all(|c| *c < 60)), "tag text");
        // Another class, another colour.
        assert_ne!(CLASS_COLOURS[47 % 12], cat);
        // The cup's box starts at the top: its tag is under the label bar (rows 0..36), which
        // stays dark.
        let cup = CLASS_COLOURS[47 % 12];
        assert!(near(1, 42, cup), "cup's tag {:?}", img.get_pixel(1, 42));
        assert!(img.get_pixel(300, 10).0.iter().all(|c| *c < 60), "the bar is not drawn over");
    }

    #[test]
    fn tiny_frames_do_not_panic() {
        let found =
            objects(&[(1, "person", [0.0, 0.0, 1.0, 1.0]), (2, "car", [0.9, 0.9, 0.5, 0.5])]);
        let out = render(&frame(jpeg(3, 2)), None, &found, 80).unwrap();
        assert!(image::load_from_memory(&out).is_ok());
    }
}
