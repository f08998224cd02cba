//! `synthetic`: a generated moving test pattern with the frame number and the capture time
//! burned in, for demos and tests on machines without a camera.
//!
//! Colour bars over a grey ramp, a white square that bounces left and right (so motion is
//! visible), and a text box with `#<frame>` and the UTC capture time to the millisecond,
//! drawn with a built-in 5x7 pixel font.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use image::{Rgb, RgbImage};

use super::{Captured, Pacer, SourceContext};
use crate::CameraError;

/// Default size of the pattern.
pub(crate) const DEFAULT_WIDTH: u32 = 640;
/// Default size of the pattern.
pub(crate) const DEFAULT_HEIGHT: u32 = 480;

/// The synthetic source.
#[derive(Debug)]
pub(crate) struct Synthetic {
    ctx: SourceContext,
    width: u32,
    height: u32,
    pacer: Pacer,
    frame: u64,
}

impl Synthetic {
    pub(crate) fn new(ctx: SourceContext, width: u32, height: u32, pacer: Pacer) -> Self {
        Self { ctx, width, height, pacer, frame: 0 }
    }

    pub(crate) async fn next(&mut self) -> Result<Option<Captured>, CameraError> {
        self.pacer.tick().await;
        let mark = super::CaptureMark::now();
        let (index, width, height, jpeg) = (self.frame, self.width, self.height, self.ctx.jpeg);
        self.frame += 1;
        let wall = mark.wall;
        let encoded =
            tokio::task::spawn_blocking(move || jpeg.from_rgb(render(index, width, height, wall)))
                .await
                .map_err(|_| CameraError::Worker {
                    camera: self.ctx.camera.clone(),
                    what: "encoder",
                })?
                .map_err(|source| CameraError::Image {
                    camera: self.ctx.camera.clone(),
                    what: "synthetic frame".into(),
                    source,
                })?;
        Ok(Some(Captured::new(encoded, mark)))
    }
}

/// SMPTE-like colour bars: white, yellow, cyan, green, magenta, red, blue.
const BARS: [[u8; 3]; 7] = [
    [235, 235, 235],
    [235, 235, 16],
    [16, 235, 235],
    [16, 235, 16],
    [235, 16, 235],
    [235, 16, 16],
    [16, 16, 235],
];

/// Draws frame `index` of the pattern, captured at `at`.
pub(crate) fn render(index: u64, width: u32, height: u32, at: SystemTime) -> RgbImage {
    let width = width.max(1);
    let height = height.max(1);
    let bars_bottom = height * 2 / 3;
    let mut img = RgbImage::from_fn(width, height, |x, y| {
        if y < bars_bottom {
            Rgb(BARS[(x as usize * BARS.len()) / width as usize])
        } else {
            let v = (x * 255 / width) as u8;
            Rgb([v, v, v])
        }
    });

    // A square bouncing left and right, one step per frame.
    let side = (height / 6).max(2);
    let travel = u64::from(width.saturating_sub(side).max(1));
    let step = u64::from((width / 64).max(1));
    let phase = (index * step) % (2 * travel);
    let x0 = if phase < travel { phase } else { 2 * travel - phase } as u32;
    let y0 = bars_bottom.saturating_sub(side / 2);
    fill(&mut img, x0, y0, side, side, [255, 255, 255]);

    // Frame number and capture time.
    let scale = (width / 160).clamp(1, 6);
    let lines = [format!("#{index}"), utc_millis(at)];
    let pad = 2 * scale;
    let line_h = 8 * scale;
    let box_w = lines.iter().map(|l| text_width(l, scale)).max().unwrap_or(0) + 2 * pad;
    let box_h = line_h * lines.len() as u32 + 2 * pad;
    fill(&mut img, 0, 0, box_w, box_h, [0, 0, 0]);
    for (i, line) in lines.iter().enumerate() {
        draw_text(&mut img, line, pad, pad + i as u32 * line_h, scale, [255, 255, 255]);
    }
    img
}

fn fill(img: &mut RgbImage, x0: u32, y0: u32, w: u32, h: u32, color: [u8; 3]) {
    for y in y0..(y0 + h).min(img.height()) {
        for x in x0..(x0 + w).min(img.width()) {
            img.put_pixel(x, y, Rgb(color));
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in UTC.
pub(crate) fn utc_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A 5x7 glyph: seven rows, the low five bits of each (bit 4 is the leftmost pixel).
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        _ => [0; 7],
    }
}

/// Pixel width of `text` at `scale` (6 columns per character: 5 plus a gap).
fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * 6 * scale
}

fn draw_text(img: &mut RgbImage, text: &str, x0: u32, y0: u32, scale: u32, color: [u8; 3]) {
    for (i, c) in text.chars().enumerate() {
        let cx = x0 + i as u32 * 6 * scale;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..5u32 {
                if bits & (0x10 >> col) != 0 {
                    fill(img, cx + col * scale, y0 + row as u32 * scale, scale, scale, color);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(utc_millis(t), "2023-11-14 22:13:20.123");
    }

    #[test]
    fn the_pattern_moves_and_shows_the_frame_number() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = render(0, 320, 240, t);
        let b = render(1, 320, 240, t);
        assert_eq!(a.dimensions(), (320, 240));
        assert_ne!(a, b, "consecutive frames differ");
        // The text box's top-left corner is black, the bars below it are not.
        assert_eq!(a.get_pixel(0, 0).0, [0, 0, 0]);
        assert_ne!(a.get_pixel(300, 10).0, [0, 0, 0]);
        // Tiny sizes do not panic.
        assert_eq!(render(5, 1, 1, t).dimensions(), (1, 1));
    }

    #[test]
    fn every_character_of_a_timestamp_has_a_glyph() {
        for c in "#0123456789:-.".chars() {
            assert_ne!(glyph(c), [0; 7], "{c}");
        }
    }
}
