//! Frame sequence numbers that keep increasing across restarts without any stored state.
//!
//! `sequence = camera_start_unix_millis * 1000 + frame_index`
//!
//! - Within a run the numbers are consecutive (`frame_index` counts the frames handed to the
//!   producer), so the frames topic's spread-by-sequence partitioning sends consecutive frames
//!   to consecutive partitions and predictor replicas share the load evenly.
//! - Across restarts they keep increasing: a run that started at millisecond `t1` and
//!   published `n` frames ends below `t1 * 1000 + n`, and the next run starts at
//!   `t2 * 1000 > t1 * 1000 + n` as long as `n < 1000 * (t2 - t1)`, that is fewer than 1000
//!   frames per millisecond of uptime (a million frames per second). The one way to break it
//!   is a wall clock that steps backwards between two runs.
//! - No lookup on the topic at start, so a camera starts (and restarts) at once even when the
//!   brokers are down.

use std::time::{SystemTime, UNIX_EPOCH};

/// Frames per millisecond of uptime the scheme leaves room for.
pub const FRAMES_PER_MILLISECOND: u64 = 1000;

/// Hands out the sequence numbers of one camera run.
#[derive(Debug, Clone)]
pub struct Sequencer {
    base: u64,
    index: u64,
}

impl Sequencer {
    /// Sequence numbers for a run that started at `start`.
    pub fn starting_at(start: SystemTime) -> Self {
        let millis = start.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let millis = u64::try_from(millis).unwrap_or(u64::MAX / FRAMES_PER_MILLISECOND);
        Self { base: millis.saturating_mul(FRAMES_PER_MILLISECOND), index: 0 }
    }

    /// The number the next frame gets.
    pub fn peek(&self) -> u64 {
        self.base.saturating_add(self.index)
    }

    /// Marks the number from [`peek`](Self::peek) as used.
    pub fn advance(&mut self) {
        self.index += 1;
    }

    /// How many numbers were used.
    pub fn used(&self) -> u64 {
        self.index
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn consecutive_within_a_run() {
        let mut s = Sequencer::starting_at(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        assert_eq!(s.peek(), 1_700_000_000_123_000);
        s.advance();
        assert_eq!(s.peek(), 1_700_000_000_123_001);
        assert_eq!(s.used(), 1);
    }

    #[test]
    fn a_restart_a_millisecond_later_continues_above_a_run_of_999_frames() {
        let t1 = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let mut first = Sequencer::starting_at(t1);
        let mut last = 0;
        for _ in 0..999 {
            last = first.peek();
            first.advance();
        }
        let second = Sequencer::starting_at(t1 + Duration::from_millis(1));
        assert!(second.peek() > last);
    }

    #[test]
    fn a_clock_before_1970_does_not_panic() {
        let s = Sequencer::starting_at(UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(s.peek(), 0);
    }
}
