//! The bus's producer: one librdkafka producer per [`Bus`](crate::Bus), polled by a thread of
//! its own. Each message carries an [`Ack`] that its delivery report completes: one message's
//! (an allocation per message, awaited by [`Publisher::enqueue`](crate::Publisher::enqueue)'s
//! caller) or a whole batch's (shared by every message of the batch: no allocation per
//! message, one wake-up when the last is acknowledged).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rdkafka::{
    ClientContext, Message as _,
    error::{KafkaError, RDKafkaErrorCode},
    message::OwnedHeaders,
    producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer},
};
use tokio::sync::Notify;

/// The producer every publisher of a bus shares.
pub(crate) type Producer = ThreadedProducer<Acks>;

/// Pause between attempts while the producer's queue is full.
pub(crate) const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(2);

/// Routes delivery reports to the messages' [`Ack`]s.
#[derive(Debug)]
pub(crate) struct Acks;

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Arc<Ack>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Arc<Ack>) {
        let outcome = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.clone()),
        };
        ack.complete(outcome);
    }
}

/// Where a delivery report goes.
#[derive(Debug)]
pub(crate) enum Ack {
    /// One message's.
    One(One),
    /// Every message of a batch.
    Batch(BatchState),
}

/// One message's acknowledgement: (partition, offset) or the error.
#[derive(Debug, Default)]
pub(crate) struct One {
    result: Mutex<Option<Result<(i32, i64), KafkaError>>>,
    done: Notify,
}

/// A batch's acknowledgements.
#[derive(Debug, Default)]
pub(crate) struct BatchState {
    outstanding: AtomicUsize,
    delivered: AtomicUsize,
    error: Mutex<Option<KafkaError>>,
    done: Notify,
}

impl Ack {
    pub(crate) fn one() -> Arc<Self> {
        Arc::new(Self::One(One::default()))
    }

    pub(crate) fn batch() -> Arc<Self> {
        Arc::new(Self::Batch(BatchState::default()))
    }

    fn complete(&self, outcome: Result<(i32, i64), KafkaError>) {
        match self {
            Self::One(one) => {
                *one.result.lock().expect("not poisoned") = Some(outcome);
                one.done.notify_one();
            }
            Self::Batch(batch) => {
                match outcome {
                    Ok(_) => {
                        batch.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        batch.error.lock().expect("not poisoned").get_or_insert(e);
                    }
                }
                if batch.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
                    batch.done.notify_one();
                }
            }
        }
    }

    /// A message of this batch is handed to the producer.
    pub(crate) fn expect_one_more(&self) {
        if let Self::Batch(b) = self {
            b.outstanding.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A message counted by [`Ack::expect_one_more`] was not handed over after all.
    pub(crate) fn expect_one_less(&self) {
        if let Self::Batch(b) = self {
            b.outstanding.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Waits for one message's acknowledgement.
    pub(crate) async fn wait_one(&self) -> Result<(i32, i64), KafkaError> {
        let Self::One(one) = self else { unreachable!("a batch is waited for with wait_batch") };
        loop {
            let done = one.done.notified();
            if let Some(result) = one.result.lock().expect("not poisoned").take() {
                return result;
            }
            done.await;
        }
    }

    /// Waits until every message of the batch was acknowledged: how many were delivered, or
    /// the first failure.
    pub(crate) async fn wait_batch(&self) -> Result<usize, KafkaError> {
        let Self::Batch(batch) = self else {
            unreachable!("one message is waited for with wait_one")
        };
        loop {
            let done = batch.done.notified();
            if batch.outstanding.load(Ordering::Acquire) == 0 {
                break;
            }
            done.await;
        }
        match batch.error.lock().expect("not poisoned").take() {
            Some(e) => Err(e),
            None => Ok(batch.delivered.load(Ordering::Relaxed)),
        }
    }
}

/// Whether a producer error means its queue is full (try again shortly).
pub(crate) fn queue_full(e: &KafkaError) -> bool {
    matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
}

/// Sends one record and waits for its acknowledgement, retrying while the producer's queue is
/// full for at most `queue_timeout`.
pub(crate) async fn send_one(
    producer: &Producer,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: OwnedHeaders,
    queue_timeout: Duration,
) -> Result<(i32, i64), KafkaError> {
    let ack = Ack::one();
    let mut record: BaseRecord<'_, [u8], [u8], Arc<Ack>> =
        BaseRecord::with_opaque_to(topic, ack.clone()).headers(headers);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(p) = payload {
        record = record.payload(p);
    }
    let started = Instant::now();
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((e, r)) if queue_full(&e) && started.elapsed() < queue_timeout => {
                record = r;
                tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
    ack.wait_one().await
}
