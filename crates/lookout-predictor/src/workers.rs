//! The labelling workers: `--workers` OS threads that decode, preprocess and run the model, fed
//! through a bounded queue (one job waiting per worker).
//!
//! They are plain threads, not tokio's blocking pool, on purpose: the runtime waits for its
//! blocking tasks when it shuts down, so a frame in progress would hold up the exit after
//! SIGTERM. Nothing waits for these threads; a frame still in progress when the process exits
//! is dropped with it (its offset was not stored, so another replica labels it).

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
};

use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce(usize) + Send>;

/// A fixed set of worker threads.
#[derive(Debug)]
pub(crate) struct Workers {
    jobs: mpsc::Sender<Job>,
}

impl Workers {
    /// Starts `n` threads (at least one).
    pub(crate) fn start(n: usize) -> std::io::Result<Self> {
        let n = n.max(1);
        let (tx, rx) = mpsc::channel::<Job>(n);
        let rx = Arc::new(Mutex::new(rx));
        for worker in 0..n {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("lookout-label-{worker}")).spawn(
                move || loop {
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).blocking_recv();
                    let Some(job) = job else { return };
                    // A job that panics drops its reply (the caller sees `None`); the worker
                    // goes on with the next.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(worker)));
                },
            )?;
        }
        Ok(Self { jobs: tx })
    }

    /// Runs `f` on the next free worker, with that worker's index, and returns its result;
    /// `None` if `f` panicked. Waits while every worker is busy and one job is queued for each.
    pub(crate) async fn run<R, F>(&self, f: F) -> Option<R>
    where
        R: Send + 'static,
        F: FnOnce(usize) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |worker| {
            let _ = tx.send(f(worker));
        });
        self.jobs.send(job).await.ok()?;
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_job_leaves_the_worker_running() {
        let workers = Workers::start(1).unwrap();
        assert_eq!(workers.run(|w| w + 1).await, Some(1));
        assert_eq!(workers.run(|_| -> usize { panic!("test panic") }).await, None);
        assert_eq!(workers.run(|w| w + 2).await, Some(2));
    }
}
