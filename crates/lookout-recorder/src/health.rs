//! Whether the database is usable, reported on `/readyz`, and the detector's clock.
//!
//! The reorder window's time limit is measured on a clock that runs only while the database
//! is usable: during an outage predictions are not handled (their offsets do not move), so a
//! missing prediction that is queued right behind them must not be given up on meanwhile.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lookout_service::Readiness;
use tracing::{info, warn};

use crate::metrics as m;

/// The readiness check this module sets.
pub const READINESS_CHECK: &str = "database";

#[derive(Debug)]
struct Clock {
    accumulated: Duration,
    running_since: Option<Instant>,
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
                clock: Mutex::new(Clock { accumulated: Duration::ZERO, running_since: None }),
                readiness,
            }),
        }
    }

    #[cfg(test)]
    pub(crate) fn for_tests(ok: bool) -> Self {
        let h = Self::new(Readiness::default());
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
        match (ok, clock.running_since) {
            (true, None) => clock.running_since = Some(Instant::now()),
            (false, Some(since)) => {
                clock.accumulated += since.elapsed();
                clock.running_since = None;
            }
            _ => {}
        }
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

    /// Time the database has been usable since start: the detector's clock.
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
}
