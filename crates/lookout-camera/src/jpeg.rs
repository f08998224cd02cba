//! JPEG helpers: frame boundaries in an MJPEG byte stream, dimensions from the header without
//! decoding, and "fit and encode" for the frames that do need pixels touched.
//!
//! A JPEG is a sequence of marker segments: `FF D8` (start of image), segments `FF xx` with a
//! two-byte length, a start of scan `FF DA` followed by entropy-coded data in which a literal
//! `FF` byte is always stuffed as `FF 00`, and finally `FF D9` (end of image). Walking the
//! segments (rather than searching for `FF D9`) finds the true end of a frame even when an EXIF
//! thumbnail inside an APP1 segment holds its own `FF D9`.

use bytes::{Buf as _, Bytes, BytesMut};
use image::{
    DynamicImage, ExtendedColorType, ImageEncoder as _, RgbImage, codecs::jpeg::JpegEncoder,
    imageops::FilterType,
};

/// A frame that grows beyond this without ending is garbage: the splitter drops it and
/// looks for the next start of image.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Start of image.
const SOI: u8 = 0xD8;
/// End of image.
const EOI: u8 = 0xD9;
/// Start of scan.
const SOS: u8 = 0xDA;

/// Whether `m` is a start-of-frame marker (it carries the image size). `C4` (Huffman
/// tables), `C8` (reserved) and `CC` (arithmetic coding conditioning) are not.
const fn is_sof(m: u8) -> bool {
    matches!(m, 0xC0..=0xCF) && !matches!(m, 0xC4 | 0xC8 | 0xCC)
}

/// Markers that stand alone, without a length.
const fn is_standalone(m: u8) -> bool {
    matches!(m, 0x01 | 0xD0..=0xD7)
}

/// Width and height from a JPEG's start-of-frame header, without decoding the image.
/// `None` when `data` is not a JPEG or its header is cut short.
pub fn dimensions(data: &[u8]) -> Option<(u32, u32)> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != SOI {
        return None;
    }
    let mut pos = 2;
    loop {
        // Fill bytes (FF FF …) may precede a marker.
        while data.get(pos) == Some(&0xFF) && data.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        if *data.get(pos)? != 0xFF {
            return None;
        }
        let marker = *data.get(pos + 1)?;
        if is_standalone(marker) {
            pos += 2;
            continue;
        }
        if marker == EOI || marker == SOS {
            return None; // no frame header before the image data
        }
        let len = usize::from(u16::from_be_bytes([*data.get(pos + 2)?, *data.get(pos + 3)?]));
        if len < 2 {
            return None;
        }
        if is_sof(marker) {
            // length(2) precision(1) height(2) width(2)
            let h = u16::from_be_bytes([*data.get(pos + 5)?, *data.get(pos + 6)?]);
            let w = u16::from_be_bytes([*data.get(pos + 7)?, *data.get(pos + 8)?]);
            return (w > 0 && h > 0).then_some((u32::from(w), u32::from(h)));
        }
        pos += 2 + len;
    }
}

/// Where the splitter is inside the current frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for a start of image; everything before it is discarded.
    Soi,
    /// At a marker (`pos` points at its `FF`).
    Marker,
    /// Inside entropy-coded scan data.
    Scan,
}

/// Cuts an MJPEG byte stream (concatenated JPEGs, as ffmpeg's `image2pipe` writes them) into
/// frames. Feed it bytes with [`push`](Self::push) and take frames with
/// [`next_frame`](Self::next_frame); it resumes where it stopped, so each byte is examined
/// once.
#[derive(Debug)]
pub struct Splitter {
    buf: BytesMut,
    pos: usize,
    state: State,
    max_frame: usize,
    discarded: u64,
}

impl Default for Splitter {
    fn default() -> Self {
        Self::new(MAX_FRAME_BYTES)
    }
}

impl Splitter {
    /// A splitter that gives up on frames larger than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self { buf: BytesMut::new(), pos: 0, state: State::Soi, max_frame, discarded: 0 }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet part of a returned frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Frames abandoned because they were malformed or too large.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// The next complete JPEG in the stream, if one has arrived.
    pub fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            match self.state {
                State::Soi => {
                    let found = self.buf.windows(2).position(|w| w == [0xFF, SOI]);
                    match found {
                        Some(i) => {
                            self.buf.advance(i);
                            self.pos = 2;
                            self.state = State::Marker;
                        }
                        None => {
                            // Keep a trailing FF: it may be the first half of the next SOI.
                            let keep = usize::from(self.buf.last() == Some(&0xFF));
                            let drop = self.buf.len() - keep;
                            self.buf.advance(drop);
                            return None;
                        }
                    }
                }
                State::Marker => {
                    let Some(&[ff, marker]) = self.buf.get(self.pos..self.pos + 2) else {
                        if self.over_limit() {
                            continue;
                        }
                        return None;
                    };
                    if ff != 0xFF {
                        self.resync();
                        continue;
                    }
                    match marker {
                        0xFF => self.pos += 1, // fill byte
                        EOI => {
                            let frame = self.buf.split_to(self.pos + 2).freeze();
                            self.pos = 0;
                            self.state = State::Soi;
                            return Some(frame);
                        }
                        SOI => {
                            // A new image began before the last one ended: drop the partial one.
                            self.discarded += 1;
                            self.buf.advance(self.pos);
                            self.pos = 2;
                        }
                        m if is_standalone(m) => self.pos += 2,
                        m => {
                            let Some(&[hi, lo]) = self.buf.get(self.pos + 2..self.pos + 4) else {
                                if self.over_limit() {
                                    continue;
                                }
                                return None;
                            };
                            let len = usize::from(u16::from_be_bytes([hi, lo]));
                            if len < 2 {
                                self.resync();
                                continue;
                            }
                            self.pos += 2 + len;
                            if m == SOS {
                                self.state = State::Scan;
                            }
                        }
                    }
                }
                State::Scan => {
                    // The scan header may not have fully arrived yet.
                    if self.pos > self.buf.len() {
                        if self.over_limit() {
                            continue;
                        }
                        return None;
                    }
                    let rest = &self.buf[self.pos..];
                    let Some(i) = rest.iter().position(|b| *b == 0xFF) else {
                        self.pos = self.buf.len();
                        if self.over_limit() {
                            continue;
                        }
                        return None;
                    };
                    let Some(&next) = rest.get(i + 1) else {
                        self.pos += i;
                        if self.over_limit() {
                            continue;
                        }
                        return None;
                    };
                    match next {
                        // Stuffed FF, restart markers, fill bytes: still scan data.
                        0x00 | 0xD0..=0xD7 => self.pos += i + 2,
                        0xFF => self.pos += i + 1,
                        _ => {
                            self.pos += i;
                            self.state = State::Marker;
                        }
                    }
                }
            }
        }
    }

    /// Called when more bytes are needed: drops the current frame (and returns true) when it
    /// has grown beyond the limit without ending.
    fn over_limit(&mut self) -> bool {
        if self.buf.len() > self.max_frame {
            self.resync();
            return true;
        }
        false
    }

    /// Drops the current (malformed) frame and looks for the next start of image.
    fn resync(&mut self) {
        self.discarded += 1;
        self.buf.advance(1.min(self.buf.len()));
        self.pos = 0;
        self.state = State::Soi;
    }
}

/// How frames are encoded: quality and the largest size they may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegOptions {
    /// JPEG quality, 1 (smallest) to 100 (best).
    pub quality: u8,
    /// Largest width; wider frames are scaled down, keeping the aspect ratio.
    pub max_width: Option<u32>,
    /// Largest height; taller frames are scaled down, keeping the aspect ratio.
    pub max_height: Option<u32>,
}

impl Default for JpegOptions {
    fn default() -> Self {
        Self { quality: 85, max_width: None, max_height: None }
    }
}

/// A JPEG frame and its real dimensions.
#[derive(Debug, Clone)]
pub struct Jpeg {
    /// The encoded image.
    pub data: Bytes,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl JpegOptions {
    /// The size a `width` x `height` image is scaled down to, or `None` when it already fits.
    pub fn fit(&self, width: u32, height: u32) -> Option<(u32, u32)> {
        let max_w = self.max_width.unwrap_or(u32::MAX).max(1);
        let max_h = self.max_height.unwrap_or(u32::MAX).max(1);
        if width <= max_w && height <= max_h {
            return None;
        }
        let scale =
            f64::min(f64::from(max_w) / f64::from(width), f64::from(max_h) / f64::from(height));
        let w = (f64::from(width) * scale).round().clamp(1.0, f64::from(max_w)) as u32;
        let h = (f64::from(height) * scale).round().clamp(1.0, f64::from(max_h)) as u32;
        Some((w, h))
    }

    /// A JPEG from a source that already encodes JPEG: forwarded untouched when it fits,
    /// otherwise decoded, scaled down and encoded once. Trailing bytes after the end of image
    /// (some webcams pad their buffers) are cut off.
    pub fn from_jpeg(&self, data: Bytes) -> Result<Jpeg, image::ImageError> {
        let data = first_jpeg(data);
        let Some((width, height)) = dimensions(&data) else {
            return Err(not_a_jpeg());
        };
        if self.fit(width, height).is_none() {
            return Ok(Jpeg { data, width, height });
        }
        let decoded = image::load_from_memory_with_format(&data, image::ImageFormat::Jpeg)?;
        self.from_image(decoded)
    }

    /// Encodes any decoded image, scaled down first if it does not fit.
    pub fn from_image(&self, image: DynamicImage) -> Result<Jpeg, image::ImageError> {
        self.from_rgb(image.into_rgb8())
    }

    /// Encodes RGB pixels, scaled down first if they do not fit.
    pub fn from_rgb(&self, image: RgbImage) -> Result<Jpeg, image::ImageError> {
        let image = match self.fit(image.width(), image.height()) {
            Some((w, h)) => image::imageops::resize(&image, w, h, FilterType::Triangle),
            None => image,
        };
        encode(&image, self.quality)
    }

    /// ffmpeg's `-q:v` (2 best … 31 worst) closest to this quality.
    pub fn ffmpeg_qscale(&self) -> u8 {
        let q = u32::from(self.quality.clamp(1, 100));
        (2 + ((100 - q) * 29 + 49) / 99) as u8
    }
}

/// Qualities tried, best first, when a frame is over a byte budget: the first one used is the
/// lower of `--jpeg-quality` and the first of these.
const SHRINK_QUALITIES: [u8; 3] = [75, 60, 45];

/// The smallest side a frame is scaled down to while shrinking it; a frame that does not fit
/// at this size does not fit at all.
pub const MIN_SHRUNK_SIDE: u32 = 32;

/// Each scaling step makes the sides at most this fraction of the last try's, so shrinking
/// always ends.
const MAX_SCALE_STEP: f64 = 0.9;

/// What [`shrink`] made of a frame over its byte budget.
#[derive(Debug, Clone)]
pub enum Shrunk {
    /// The frame, encoded again within the budget.
    Fits {
        /// The new JPEG.
        jpeg: Jpeg,
        /// The quality it was encoded at.
        quality: u8,
    },
    /// Not even [`MIN_SHRUNK_SIDE`] pixels on a side at the lowest quality fit the budget.
    CannotFit {
        /// The smallest encoding tried, in bytes.
        smallest: usize,
    },
}

/// Makes a JPEG fit in `budget` bytes: decoded once, encoded again at lower qualities (from
/// `quality`, or 75 if that is lower, down to 45), then, at the lowest of those, scaled down,
/// keeping the aspect ratio, until it fits. Each scaled try is sized from the last one's bytes
/// (a JPEG's size follows its pixel count), so it takes a few encodings, not dozens.
///
/// Meant for a JPEG over the budget: it is encoded again whatever its size.
pub fn shrink(data: &[u8], budget: usize, quality: u8) -> Result<Shrunk, image::ImageError> {
    let rgb = image::load_from_memory_with_format(data, image::ImageFormat::Jpeg)?.into_rgb8();
    let first = quality.clamp(1, 100).min(SHRINK_QUALITIES[0]);
    let qualities =
        std::iter::once(first).chain(SHRINK_QUALITIES.into_iter().filter(|q| *q < first));
    let mut last = (data.len(), first);
    for q in qualities {
        let jpeg = encode(&rgb, q)?;
        if jpeg.data.len() <= budget {
            return Ok(Shrunk::Fits { jpeg, quality: q });
        }
        last = (jpeg.data.len(), q);
    }
    let (mut size, quality) = last;
    let (width, height) = (f64::from(rgb.width()), f64::from(rgb.height()));
    let mut scale = 1.0;
    loop {
        // The sides follow the square root of the bytes to lose, with a margin.
        scale *= ((budget as f64 / size as f64).sqrt() * MAX_SCALE_STEP).min(MAX_SCALE_STEP);
        let (w, h) = ((width * scale).round(), (height * scale).round());
        if w < f64::from(MIN_SHRUNK_SIDE) || h < f64::from(MIN_SHRUNK_SIDE) {
            return Ok(Shrunk::CannotFit { smallest: size });
        }
        let small = image::imageops::resize(&rgb, w as u32, h as u32, FilterType::Triangle);
        let jpeg = encode(&small, quality)?;
        if jpeg.data.len() <= budget {
            return Ok(Shrunk::Fits { jpeg, quality });
        }
        size = jpeg.data.len();
    }
}

/// Encodes RGB pixels as they are.
fn encode(image: &RgbImage, quality: u8) -> Result<Jpeg, image::ImageError> {
    let (width, height) = image.dimensions();
    let mut out = Vec::with_capacity(width as usize * height as usize / 4);
    JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100)).write_image(
        image.as_raw(),
        width,
        height,
        ExtendedColorType::Rgb8,
    )?;
    Ok(Jpeg { data: out.into(), width, height })
}

/// The first complete JPEG in `data`, or `data` itself when none ends cleanly.
fn first_jpeg(data: Bytes) -> Bytes {
    let mut s = Splitter::new(usize::MAX);
    s.push(&data);
    match s.next_frame() {
        Some(frame) if frame.len() < data.len() => frame,
        _ => data,
    }
}

fn not_a_jpeg() -> image::ImageError {
    image::ImageError::Decoding(image::error::DecodingError::new(
        image::error::ImageFormatHint::Exact(image::ImageFormat::Jpeg),
        "no JPEG start-of-frame header",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(w: u32, h: u32) -> Bytes {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
        JpegOptions::default().from_rgb(img).unwrap().data
    }

    #[test]
    fn dimensions_come_from_the_header() {
        let j = encoded(33, 17);
        assert_eq!(dimensions(&j), Some((33, 17)));
        let decoded = image::load_from_memory(&j).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (33, 17));
        assert_eq!(dimensions(b"not a jpeg"), None);
        assert_eq!(dimensions(&j[..10]), None, "a cut header is not an answer");
        assert_eq!(dimensions(&[]), None);
    }

    #[test]
    fn splitter_finds_each_frame_whatever_the_chunking() {
        let frames = [encoded(16, 16), encoded(40, 30), encoded(8, 8)];
        let mut stream = b"garbage\xff".to_vec();
        for f in &frames {
            stream.extend_from_slice(f);
        }
        for chunk in [1, 2, 3, 7, 64, 4096, stream.len()] {
            let mut s = Splitter::default();
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                s.push(c);
                while let Some(f) = s.next_frame() {
                    got.push(f);
                }
            }
            assert_eq!(got.len(), 3, "chunk size {chunk}");
            for (g, f) in got.iter().zip(&frames) {
                assert_eq!(g, f, "chunk size {chunk}");
            }
            assert_eq!(s.buffered(), 0);
        }
    }

    #[test]
    fn an_end_marker_inside_a_metadata_segment_does_not_end_the_frame() {
        let j = encoded(12, 10);
        // An APP1 segment holding FF D9 (like an EXIF thumbnail), right after SOI.
        let app1 = [0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0xFF, 0xD9];
        let mut with_app = j[..2].to_vec();
        with_app.extend_from_slice(&app1);
        with_app.extend_from_slice(&j[2..]);
        let mut s = Splitter::default();
        s.push(&with_app);
        let frame = s.next_frame().expect("one frame");
        assert_eq!(frame.len(), with_app.len());
        assert_eq!(dimensions(&frame), Some((12, 10)));
        assert!(image::load_from_memory(&frame).is_ok());
    }

    #[test]
    fn a_truncated_frame_is_dropped_when_the_next_one_starts() {
        let a = encoded(20, 20);
        let b = encoded(10, 10);
        let mut s = Splitter::default();
        // `a` is cut inside its headers (before the scan), then `b` follows.
        s.push(&a[..30]);
        s.push(&b);
        let got = s.next_frame().expect("the complete frame");
        assert_eq!(got, b);
        assert!(s.discarded() >= 1);
    }

    #[test]
    fn an_endless_frame_is_abandoned() {
        let mut s = Splitter::new(1000);
        s.push(&[0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02]);
        s.push(&[0x11; 2000]);
        assert!(s.next_frame().is_none());
        assert!(s.discarded() >= 1);
        assert!(s.buffered() <= 1);
        let b = encoded(10, 10);
        s.push(&b);
        assert_eq!(s.next_frame(), Some(b));
    }

    #[test]
    fn fit_keeps_the_aspect_ratio_and_never_enlarges() {
        let o = |w, h| JpegOptions { max_width: w, max_height: h, ..Default::default() };
        assert_eq!(o(None, None).fit(640, 480), None);
        assert_eq!(o(Some(640), None).fit(640, 480), None);
        assert_eq!(o(Some(320), None).fit(640, 480), Some((320, 240)));
        assert_eq!(o(None, Some(100)).fit(320, 240), Some((133, 100)));
        assert_eq!(o(Some(1000), Some(100)).fit(320, 240), Some((133, 100)));
        assert_eq!(o(Some(1), Some(1)).fit(5000, 10), Some((1, 1)));
        assert_eq!(o(Some(2000), Some(2000)).fit(100, 50), None);
    }

    #[test]
    fn jpegs_that_fit_are_forwarded_untouched_and_others_scaled_once() {
        let j = encoded(64, 48);
        let same = JpegOptions::default().from_jpeg(j.clone()).unwrap();
        assert_eq!(same.data, j, "forwarded byte for byte");
        assert_eq!((same.width, same.height), (64, 48));

        let mut padded = j.to_vec();
        padded.extend_from_slice(&[0; 100]);
        let trimmed = JpegOptions::default().from_jpeg(padded.into()).unwrap();
        assert_eq!(trimmed.data, j, "padding after the end of image is cut off");

        let small = JpegOptions { max_width: Some(32), ..Default::default() }.from_jpeg(j).unwrap();
        assert_eq!((small.width, small.height), (32, 24));
        assert_eq!(dimensions(&small.data), Some((32, 24)));

        assert!(JpegOptions::default().from_jpeg(Bytes::from_static(b"nope")).is_err());
    }

    /// A `w`x`h` image of random pixels (which JPEG cannot compress much) at quality 95.
    fn noisy(w: u32, h: u32) -> Bytes {
        let mut state = 0x2545_f491_u32;
        let img = RgbImage::from_fn(w, h, |_, _| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let [r, g, b, _] = state.to_le_bytes();
            image::Rgb([r, g, b])
        });
        JpegOptions { quality: 95, ..Default::default() }.from_rgb(img).unwrap().data
    }

    fn fitted(s: Shrunk) -> (Jpeg, u8) {
        match s {
            Shrunk::Fits { jpeg, quality } => (jpeg, quality),
            Shrunk::CannotFit { smallest } => panic!("does not fit (smallest {smallest} bytes)"),
        }
    }

    #[test]
    fn shrinking_lowers_the_quality_before_the_size() {
        let smooth = JpegOptions { quality: 100, ..Default::default() }
            .from_rgb(RgbImage::from_fn(320, 240, |x, y| {
                image::Rgb([(x / 2) as u8, (y / 2) as u8, 128])
            }))
            .unwrap()
            .data;
        let budget = smooth.len() / 2;
        let (jpeg, quality) = fitted(shrink(&smooth, budget, 85).unwrap());
        assert!(jpeg.data.len() <= budget, "{} > {budget}", jpeg.data.len());
        assert_eq!((jpeg.width, jpeg.height), (320, 240), "full size, lower quality");
        assert!(quality <= 75);
        assert_eq!(dimensions(&jpeg.data), Some((320, 240)));
    }

    #[test]
    fn shrinking_scales_down_when_quality_is_not_enough() {
        let big = noisy(400, 300);
        let budget = big.len() / 20;
        let (jpeg, quality) = fitted(shrink(&big, budget, 85).unwrap());
        assert!(jpeg.data.len() <= budget, "{} > {budget}", jpeg.data.len());
        assert_eq!(quality, 45, "the lowest quality before scaling");
        assert!(jpeg.width < 400 && jpeg.width >= MIN_SHRUNK_SIDE);
        let aspect = f64::from(jpeg.width) / f64::from(jpeg.height);
        assert!((aspect - 4.0 / 3.0).abs() < 0.05, "aspect ratio kept: {aspect}");
        let decoded = image::load_from_memory(&jpeg.data).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (jpeg.width, jpeg.height));
    }

    #[test]
    fn a_budget_nothing_fits_in_is_reported() {
        let big = noisy(200, 150);
        match shrink(&big, 100, 85).unwrap() {
            Shrunk::CannotFit { smallest } => assert!(smallest > 100),
            Shrunk::Fits { jpeg, .. } => panic!("{} bytes fit in 100", jpeg.data.len()),
        }
        assert!(shrink(b"not a jpeg", 100, 85).is_err());
    }

    #[test]
    fn quality_maps_to_ffmpeg_qscale() {
        let q = |quality| JpegOptions { quality, ..Default::default() }.ffmpeg_qscale();
        assert_eq!(q(100), 2);
        assert_eq!(q(1), 31);
        assert!((5..=7).contains(&q(85)), "{}", q(85));
        assert!(q(50) > q(85));
    }
}
