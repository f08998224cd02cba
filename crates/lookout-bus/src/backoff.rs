//! The one retry policy of the workspace: exponential backoff with jitter.
//!
//! Every loop that retries something that failed (a handler, a dead letter, a sink, a camera
//! that went away, a database that is not up yet) waits with a [`Backoff`]: the first pause is
//! `min`, each next one doubles up to `max`, and each gets a random extra of up to its own
//! length, so replicas that failed together do not retry in lockstep. The delays come from
//! [`backon`]; the waiting ends early on shutdown.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// Exponential backoff with jitter, without a limit on attempts.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    attempts: u32,
}

impl Backoff {
    /// Pauses from `min`, doubling up to `max`, each plus up to 100 % jitter.
    pub fn new(min: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self { builder, delays: builder.build(), attempts: 0 }
    }

    /// The next pause.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        self.delays.next().unwrap_or_else(|| self.builder.build().next().unwrap_or_default())
    }

    /// How many pauses were handed out since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts again from `min` (after a success).
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
        self.attempts = 0;
    }

    /// Sleeps the next pause; `false` when `shutdown` was cancelled first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_reset() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let mut b = Backoff::new(min, max);
        let first = b.next_delay();
        assert!(first >= min && first <= min * 2, "{first:?}");
        let later: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(later.iter().all(|d| *d <= max * 2), "{later:?}");
        assert!(later.iter().any(|d| *d >= max), "reaches the cap: {later:?}");
        assert_eq!(b.attempts(), 21);
        b.reset();
        assert!(b.next_delay() <= min * 2);
    }

    #[tokio::test]
    async fn waiting_ends_on_shutdown() {
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(!b.wait(&stop).await);
    }
}
