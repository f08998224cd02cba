#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use image::codecs::jpeg::JpegEncoder;

pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

pub fn manifest() -> PathBuf {
    repo("models/efficientnet-lite0/model.toml")
}

/// A sample photo as JPEG bytes, with its size.
pub fn sample_jpeg(name: &str) -> (Vec<u8>, u32, u32) {
    let img = image::open(repo(&format!("samples/{name}"))).expect("sample opens").into_rgb8();
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(&mut buf, 90).encode_image(&img).expect("encodes");
    (buf, img.width(), img.height())
}
