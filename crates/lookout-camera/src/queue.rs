//! The small queue between capture and publishing.
//!
//! A live source cannot wait: when publishing falls behind (brokers slow or down), the queue
//! drops its *oldest* frame to make room, so what does get published is as recent as
//! possible and memory stays bounded. A source that can wait (a file or a generated source
//! run with `--no-pace`) is held back instead and loses nothing.

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard, PoisonError},
};

use tokio::sync::Notify;

/// What happens when a frame arrives at a full queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Drop the oldest queued frame.
    DropOldest,
    /// Wait for room.
    Wait,
}

/// A bounded frame queue for one producer and one consumer.
#[derive(Debug)]
pub(crate) struct FrameQueue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    overflow: Overflow,
    not_empty: Notify,
    not_full: Notify,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> FrameQueue<T> {
    pub(crate) fn new(capacity: usize, overflow: Overflow) -> Self {
        let capacity = capacity.max(1);
        Self {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity + 1),
                closed: false,
            }),
            capacity,
            overflow,
            not_empty: Notify::new(),
            not_full: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a frame. Returns the frame dropped to make room (drop-oldest), if any; waits for
    /// room instead when the queue was made with [`Overflow::Wait`].
    pub(crate) async fn push(&self, item: T) -> Option<T> {
        if self.overflow == Overflow::Wait {
            // One producer: room seen here is still there when it pushes.
            while self.lock().items.len() >= self.capacity {
                self.not_full.notified().await;
            }
        }
        let dropped = {
            let mut s = self.lock();
            s.items.push_back(item);
            if s.items.len() > self.capacity { s.items.pop_front() } else { None }
        };
        self.not_empty.notify_one();
        dropped
    }

    /// Takes the oldest frame, waiting for one; `None` once the queue is closed and empty.
    /// Cancel-safe: a frame is only taken by a call that returns it.
    pub(crate) async fn pop(&self) -> Option<T> {
        loop {
            {
                let mut s = self.lock();
                if let Some(item) = s.items.pop_front() {
                    drop(s);
                    self.not_full.notify_one();
                    return Some(item);
                }
                if s.closed {
                    return None;
                }
            }
            self.not_empty.notified().await;
        }
    }

    /// No more frames will come; [`pop`](Self::pop) returns what is left, then `None`.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_one();
    }

    /// Frames queued now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().items.len()
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    #[tokio::test]
    async fn a_full_drop_oldest_queue_keeps_the_newest_frames() {
        let q = FrameQueue::new(3, Overflow::DropOldest);
        for i in 0..3 {
            assert_eq!(q.push(i).await, None);
        }
        assert_eq!(q.push(3).await, Some(0));
        assert_eq!(q.push(4).await, Some(1));
        assert_eq!(q.len(), 3);
        q.close();
        assert_eq!(q.pop().await, Some(2));
        assert_eq!(q.pop().await, Some(3));
        assert_eq!(q.pop().await, Some(4));
        assert_eq!(q.pop().await, None);
    }

    #[tokio::test]
    async fn a_waiting_queue_holds_the_producer_back_and_loses_nothing() {
        let q = Arc::new(FrameQueue::new(2, Overflow::Wait));
        let producer = {
            let q = Arc::clone(&q);
            tokio::spawn(async move {
                for i in 0..100 {
                    assert_eq!(q.push(i).await, None);
                }
                q.close();
            })
        };
        let mut got = Vec::new();
        while let Some(i) = q.pop().await {
            assert!(q.len() <= 2);
            got.push(i);
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        producer.await.unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn pop_waits_for_a_frame_and_is_woken_by_close() {
        let q = Arc::new(FrameQueue::<u8>::new(1, Overflow::DropOldest));
        let waiter = tokio::spawn({
            let q = Arc::clone(&q);
            async move { q.pop().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        q.close();
        assert_eq!(waiter.await.unwrap(), None);
    }
}
