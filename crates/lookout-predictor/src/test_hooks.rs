//! Test-only fault injection. No real JPEG has been found that makes the decoder panic or
//! hang, so the tests of those paths (a panic is a permanent error for its frame; shutdown does
//! not wait for a frame in progress) install a hook that the decoder calls with each frame's
//! bytes after the header checks. Nothing installs one outside tests; an uninstalled hook
//! costs one atomic load per frame.

use std::sync::OnceLock;

static DECODE_HOOK: OnceLock<fn(&[u8])> = OnceLock::new();

/// FOR TESTS ONLY: installs `hook`, called by the decoder with every frame's bytes, once per
/// process (later calls are ignored). The hook may panic or block to play a decoder that does.
#[doc(hidden)]
pub fn install_decode_hook_for_tests(hook: fn(&[u8])) {
    let _ = DECODE_HOOK.set(hook);
}

pub(crate) fn on_decode(bytes: &[u8]) {
    if let Some(hook) = DECODE_HOOK.get() {
        hook(bytes);
    }
}
