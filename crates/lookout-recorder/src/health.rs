//! Whether the database is usable, reported on `/readyz`, and the detector's clock.
//!
//! The reorder window's time limit is measured on a clock that runs only while predictions
//! can arrive: while the database is usable (during an outage predictions are not handled and
//! their offsets do not move) and while the recorder owns partitions of the predictions topic
//! (after a restart, a killed predecessor holds them until the group drops it, and what it had
//! in flight is re-delivered only then). A missing prediction queued behind either must not be
//! given up on meanwhile.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lookout_service::Readiness;
use tracing::{debug, info, warn};

use crate::metrics as m;

/// The readiness check this module sets.
pub const READINESS_CHECK: &str = "database";

#[derive(Debug)]
struct Clock {
    accumulated: Duration,
    running_since: Option<Instant>,
    database_ok: bool,
    consuming: bool,
}

impl Clock {
    /// Starts or stops the clock to match the conditions.
    fn update(&mut self) {
        let run = self.database_ok && self.consuming;
        match (run, self.running_since) {
            (true, None) => self.running_since = Some(Instant::now()),
            (false, Some(since)) => {
                self.accumulated += since.elapsed();
                self.running_since = None;
            }
            _ => {}
        }
    }
}

#[derive(Debug)]
struct Inner {
    database_ok: AtomicBool,
    clock: Mutex<Clock>,
    readiness: Readiness,
}

/// Database health and the clock that runs while it is good.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

impl Health {
    /// Starts with the database not (yet) known to be usable.
    pub fn new(readiness: Readiness) -> Self {
        readiness.set(READINESS_CHECK, false);
        metrics::gauge!(m::DATABASE_UP).set(0.0);
        Self {
            inner: Arc::new(Inner {
                database_ok: AtomicBool::new(false),
                clock: Mutex::new(Clock {
                    accumulated: Duration::ZERO,
                    running_since: None,
                    database_ok: false,
                    consuming: false,
                }),
                readiness,
            }),
        }
    }

    #[cfg(test)]
    pub(crate) fn for_tests(ok: bool) -> Self {
        let h = Self::new(Readiness::default());
        h.set_consuming(true);
        h.set_database(ok, "test");
        h
    }

    /// Whether the last database operation succeeded.
    pub fn database_ok(&self) -> bool {
        self.inner.database_ok.load(Ordering::SeqCst)
    }

    /// Records the outcome of a database operation.
    pub fn set_database(&self, ok: bool, reason: &str) {
        let mut clock = self.inner.clock.lock().expect("not poisoned");
        let was = self.inner.database_ok.swap(ok, Ordering::SeqCst);
        clock.database_ok = ok;
        clock.update();
        drop(clock);
        if was != ok {
            self.inner.readiness.set(READINESS_CHECK, ok);
            metrics::gauge!(m::DATABASE_UP).set(if ok { 1.0 } else { 0.0 });
            if ok {
                info!(reason, "database usable");
            } else {
                warn!(reason, "database unusable; consumption paused until it is back");
            }
        }
    }

    /// Records whether the recorder owns partitions of the predictions topic.
    pub fn set_consuming(&self, consuming: bool) {
        let mut clock = self.inner.clock.lock().expect("not poisoned");
        if clock.consuming != consuming {
            debug!(consuming, "reorder clock {}", if consuming { "runs" } else { "paused" });
        }
        clock.consuming = consuming;
        clock.update();
    }

    /// Time predictions could arrive since start (the database usable and partitions owned):
    /// the detector's clock.
    pub fn now(&self) -> Duration {
        let clock = self.inner.clock.lock().expect("not poisoned");
        clock.accumulated + clock.running_since.map_or(Duration::ZERO, |s| s.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_stops_while_the_database_is_down() {
        let readiness = Readiness::default();
        let h = Health::new(readiness.clone());
        h.set_consuming(true);
        assert_eq!(h.now(), Duration::ZERO);
        assert!(!readiness.status().0);
        h.set_database(true, "test");
        assert!(readiness.status().0);
        std::thread::sleep(Duration::from_millis(20));
        h.set_database(false, "test");
        assert_eq!(readiness.status().1, vec![READINESS_CHECK]);
        let stopped = h.now();
        assert!(stopped >= Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(h.now(), stopped);
        h.set_database(true, "test");
        assert!(h.now() >= stopped);
    }

    #[test]
    fn the_clock_runs_only_while_partitions_are_owned() {
        let h = Health::new(Readiness::default());
        h.set_database(true, "test");
        assert_eq!(h.now(), Duration::ZERO, "no partitions yet: no prediction can arrive");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(h.now(), Duration::ZERO);
        h.set_consuming(true);
        std::thread::sleep(Duration::from_millis(20));
        h.set_consuming(false);
        let stopped = h.now();
        assert!(stopped >= Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(h.now(), stopped, "a rebalance pauses the clock");
        h.set_consuming(true);
        assert!(h.now() >= stopped);
    }
}
