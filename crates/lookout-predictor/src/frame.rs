//! From JPEG bytes to the model's input: decoding with limits, then one resize of the region the
//! model keeps (the centre crop, or the whole frame stretched), normalised into the input tensor.
//!
//! Memory per frame is bounded twice: the decoder refuses images over `max_pixels` (read from
//! the header, before any pixel is decoded) and any allocation over the matching budget; and
//! the resize writes only the model's input size (224 × 224 for EfficientNet-Lite0), whatever
//! the frame's shape. Shapes the model cannot use (thinner than `max_aspect_ratio`: a 1 × 65,000
//! strip would be a 224 × 14 million crop of nothing) are refused before decoding.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder as _, ImageFormat, ImageReader, RgbImage};

use crate::model::{Color, Filter, Layout, Manifest, Resize};

/// What a frame may be, checked before and while decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameLimits {
    /// Most pixels (width × height) a frame may have.
    pub max_pixels: u64,
    /// Largest ratio of the longer side to the shorter one.
    pub max_aspect_ratio: f32,
}

impl FrameLimits {
    /// The decoder's allocation budget: the RGB pixels plus room for its own buffers.
    fn max_alloc(&self) -> u64 {
        self.max_pixels.saturating_mul(4).saturating_add(16 << 20)
    }
}

/// Why a frame could not be labelled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    /// The image is larger than the limits (checked before decoding, or by the decoder).
    #[error("image of {width}x{height} exceeds the limit of {max_pixels} pixels")]
    TooLarge {
        /// Width from the header.
        width: u64,
        /// Height from the header.
        height: u64,
        /// The limit.
        max_pixels: u64,
    },
    /// The decoder needed more memory than the limits allow.
    #[error("decoding needs more memory than allowed: {0}")]
    TooMuchMemory(String),
    /// The image's shape is one the model cannot use.
    #[error("image of {width}x{height} has an aspect ratio over {max}:1")]
    AspectRatio {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// The limit.
        max: f32,
    },
    /// The bytes are not the declared encoding.
    #[error("not a JPEG: {0}")]
    NotJpeg(&'static str),
    /// The bytes are not a decodable image.
    #[error("cannot decode image: {0}")]
    Decode(String),
    /// The model failed on this frame.
    #[error("inference failed: {0}")]
    Inference(String),
    /// Decoding or the model panicked on this frame.
    #[error("{stage} panicked: {message}")]
    Panicked {
        /// `decode` or `inference`.
        stage: &'static str,
        /// The panic's message.
        message: String,
    },
}

/// Decodes a JPEG within `limits`. Anything else (a PNG, garbage) is refused, whatever it is.
pub fn decode_jpeg(bytes: &[u8], limits: &FrameLimits) -> Result<RgbImage, FrameError> {
    if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Err(FrameError::NotJpeg(sniff(bytes)));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), ImageFormat::Jpeg);
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(u32::from(u16::MAX));
    image_limits.max_image_height = Some(u32::from(u16::MAX));
    image_limits.max_alloc = Some(limits.max_alloc());
    reader.limits(image_limits);
    let decoder = reader.into_decoder().map_err(decode_error)?;
    let (w, h) = decoder.dimensions();
    let (width, height) = (u64::from(w), u64::from(h));
    if width * height > limits.max_pixels {
        return Err(FrameError::TooLarge { width, height, max_pixels: limits.max_pixels });
    }
    if w == 0 || h == 0 || (w.max(h) as f32) > limits.max_aspect_ratio * w.min(h) as f32 {
        return Err(FrameError::AspectRatio { width: w, height: h, max: limits.max_aspect_ratio });
    }
    crate::test_hooks::on_decode(bytes);
    let img = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    Ok(img.into_rgb8())
}

fn decode_error(e: image::ImageError) -> FrameError {
    match e {
        image::ImageError::Limits(l) => FrameError::TooMuchMemory(l.to_string()),
        e => FrameError::Decode(e.to_string()),
    }
}

/// What bytes that are not a JPEG look like, for the refusal.
fn sniff(bytes: &[u8]) -> &'static str {
    match image::guess_format(bytes) {
        Ok(ImageFormat::Png) => "the bytes are a PNG",
        Ok(ImageFormat::Gif) => "the bytes are a GIF",
        Ok(ImageFormat::WebP) => "the bytes are a WebP",
        Ok(_) => "the bytes are another image format",
        Err(_) if bytes.is_empty() => "no bytes",
        Err(_) => "no JPEG start-of-image marker",
    }
}

/// The input's height and width from the manifest (validated at load).
pub(crate) fn input_hw(manifest: &Manifest) -> Result<(usize, usize), String> {
    let s = manifest.input.shape;
    match manifest.input.layout {
        Layout::NCHW if s[0] == 1 && s[1] == 3 => Ok((s[2], s[3])),
        Layout::NHWC if s[0] == 1 && s[3] == 3 => Ok((s[1], s[2])),
        _ => Err(format!(
            "input shape {s:?} is not a single 3-channel image in {:?}",
            manifest.input.layout
        )),
    }
}

/// Resizes the image so that its shorter side is `resize_shorter` and keeps the centre `h × w`
/// (or, with `resize = "stretch"`, resizes the whole image to `h × w`), and normalises it into
/// `out` (`3 × h × w` values) in the manifest's layout and colour order.
/// Only the kept region is computed: the resize maps the matching source rectangle straight to
/// `h × w` pixels.
pub(crate) fn preprocess_into(manifest: &Manifest, img: &RgbImage, out: &mut [f32]) {
    let p = &manifest.preprocess;
    let (h, w) = input_hw(manifest).expect("validated at load");
    debug_assert_eq!(out.len(), 3 * h * w);
    let (iw, ih) = img.dimensions();
    let crop = match (p.resize, p.resize_shorter) {
        (Resize::Crop, Some(shorter)) => centre_crop((iw, ih), (w, h), shorter),
        // The whole frame, stretched to the input.
        _ => (0.0, 0.0, f64::from(iw), f64::from(ih)),
    };
    let pixels = resize_crop(img, crop, w as u32, h as u32, p.filter);
    let bgr = manifest.input.color == Color::BGR;
    let channels: [(usize, f32, f32); 3] =
        std::array::from_fn(|c| (if bgr { 2 - c } else { c }, p.mean[c], 1.0 / p.std[c]));
    for (i, px) in pixels.chunks_exact(3).enumerate() {
        let (y, x) = (i / w, i % w);
        for (c, (src, mean, scale)) in channels.iter().enumerate() {
            let v = (f32::from(px[*src]) - mean) * scale;
            let at = match manifest.input.layout {
                Layout::NCHW => c * h * w + y * w + x,
                Layout::NHWC => (y * w + x) * 3 + c,
            };
            out[at] = v;
        }
    }
}

/// The source rectangle `(left, top, width, height)` that becomes the centre `w × h` of the
/// frame resized so that its shorter side is `shorter`.
fn centre_crop((iw, ih): (u32, u32), (w, h): (usize, usize), shorter: u32) -> (f64, f64, f64, f64) {
    // The full resize would be (iw * scale) x (ih * scale), at least the input size.
    let scale = f64::from(shorter) / f64::from(iw.min(ih).max(1));
    let rw = (f64::from(iw) * scale).round().max(w as f64);
    let rh = (f64::from(ih) * scale).round().max(h as f64);
    let (sx, sy) = (rw / f64::from(iw), rh / f64::from(ih));
    // The crop's top-left corner in resized pixels, and the same rectangle in source pixels.
    let (x0, y0) = (((rw as u32 - w as u32) / 2) as f64, ((rh as u32 - h as u32) / 2) as f64);
    (x0 / sx, y0 / sy, w as f64 / sx, h as f64 / sy)
}

/// Resizes the source rectangle `(left, top, width, height)` of `img` to `width × height`
/// pixels with SIMD convolution (fast_image_resize); returns the packed RGB bytes.
fn resize_crop(
    img: &RgbImage,
    (left, top, cw, ch): (f64, f64, f64, f64),
    width: u32,
    height: u32,
    filter: Filter,
) -> Vec<u8> {
    use fast_image_resize::{
        FilterType as F, PixelType, ResizeAlg, ResizeOptions, Resizer, images,
    };
    let alg = match filter {
        Filter::Nearest => ResizeAlg::Nearest,
        Filter::Triangle => ResizeAlg::Convolution(F::Bilinear),
        Filter::CatmullRom => ResizeAlg::Convolution(F::CatmullRom),
        Filter::Gaussian => ResizeAlg::Convolution(F::Gaussian),
        Filter::Lanczos3 => ResizeAlg::Convolution(F::Lanczos3),
    };
    let (iw, ih) = img.dimensions();
    let src = images::ImageRef::new(iw, ih, img.as_raw(), PixelType::U8x3)
        .expect("an RgbImage's buffer matches its size");
    let mut dst = images::Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(alg).crop(left, top, cw, ch);
    Resizer::new().resize(&src, &mut dst, &options).expect("same pixel type on both sides");
    dst.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits { max_pixels: 40_000_000, max_aspect_ratio: 20.0 };

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 128]));
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut buf).encode_image(&img).unwrap();
        buf
    }

    #[test]
    fn strips_are_refused_before_decoding() {
        for (w, h) in [(1, 65_000), (65_000, 1), (2100, 100)] {
            let err = decode_jpeg(&jpeg(w, h), &LIMITS).unwrap_err();
            assert!(matches!(err, FrameError::AspectRatio { .. }), "{w}x{h}: {err}");
        }
        assert!(decode_jpeg(&jpeg(2000, 100), &LIMITS).is_ok(), "20:1 is allowed");
    }

    #[test]
    fn a_png_is_not_a_jpeg() {
        let mut png = Vec::new();
        RgbImage::new(8, 8).write_to(&mut Cursor::new(&mut png), ImageFormat::Png).unwrap();
        assert_eq!(decode_jpeg(&png, &LIMITS), Err(FrameError::NotJpeg("the bytes are a PNG")));
        assert!(matches!(decode_jpeg(b"", &LIMITS), Err(FrameError::NotJpeg(_))));
        let truncated = &jpeg(64, 64)[..100];
        assert!(matches!(decode_jpeg(truncated, &LIMITS), Err(FrameError::Decode(_))));
    }

    #[test]
    fn too_many_pixels_are_refused_from_the_header() {
        let limits = FrameLimits { max_pixels: 64 * 64 - 1, ..LIMITS };
        let err = decode_jpeg(&jpeg(64, 64), &limits).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { width: 64, height: 64, max_pixels: 4095 });
    }
}
