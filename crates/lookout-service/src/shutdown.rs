//! SIGINT/SIGTERM handling: the first signal cancels one token, a second exits at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Exit code after a second signal (128 + SIGINT).
const FORCED_EXIT: i32 = 130;

/// A token cancelled by the first SIGINT or SIGTERM. A second signal ends the process.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term)) =
            (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        else {
            warn!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        t.cancel();
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        warn!("second signal: exiting now");
        std::process::exit(FORCED_EXIT);
    });
    token
}
