//! The camera's MJPEG splitter on an arbitrary byte stream cut into arbitrary pieces, and the
//! JPEG header reader on each frame: frames come out whole (start and end of image), the
//! buffer stays bounded, nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout_camera::jpeg::{Splitter, dimensions};

/// Small, so that abandoning an endless frame is exercised too.
const MAX_FRAME: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut splitter = Splitter::new(MAX_FRAME);
    for piece in stream.chunks(chunk) {
        splitter.push(piece);
        while let Some(frame) = splitter.next_frame() {
            assert!(frame.starts_with(&[0xFF, 0xD8]), "a frame starts with SOI");
            assert!(frame.ends_with(&[0xFF, 0xD9]), "a frame ends with EOI");
            let _ = dimensions(&frame);
        }
        assert!(splitter.buffered() <= MAX_FRAME + chunk + 2, "the buffer stays bounded");
    }
    let _ = dimensions(stream);
});
