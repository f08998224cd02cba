//! The rule stage: predictions and changes in, alerts out on `lookout.alerts`.
//!
//! Each partition's handler asks the [`Engine`] what a message does, publishes the alerts it
//! decided (continuing the message's trace) and waits for the brokers' acknowledgement; only
//! then are the new states kept and the handler returns, so the bus stores the offset. A
//! publish that fails is a transient error: the same message comes again and decides the
//! same way.

use std::{
    sync::{Arc, Mutex},
    time::SystemTime,
};

use lookout_bus::{
    Bus, Handler, HandlerError, Incoming, MessageMeta, Publisher, TraceContext, topics,
};
use lookout_proto::v1::{Alert, Prediction, PredictionChange};
use tracing::info;

use crate::{
    engine::{Engine, Step},
    metrics as m,
};

/// The rule stage's handler of predictions and changes; clones share the engine.
#[derive(Debug, Clone)]
pub(crate) struct Firing(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    engine: Mutex<Engine>,
    alerts: Publisher<Alert>,
}

impl Handler<Prediction> for Firing {
    async fn handle(&self, incoming: Incoming<Prediction>) -> Result<(), HandlerError> {
        let time = incoming.message.capture_time;
        self.0.fire(incoming, time, Engine::on_prediction).await
    }
}

impl Handler<PredictionChange> for Firing {
    async fn handle(&self, incoming: Incoming<PredictionChange>) -> Result<(), HandlerError> {
        let time = incoming.message.time;
        self.0.fire(incoming, time, Engine::on_change).await
    }
}

impl Firing {
    pub(crate) fn new(engine: Engine, bus: &Bus) -> Self {
        Self(Arc::new(Shared {
            engine: Mutex::new(engine),
            alerts: bus.publisher(&topics::ALERTS),
        }))
    }
}

impl Shared {
    /// Asks the engine what `incoming`, captured at `time`, does, and publishes that.
    async fn fire<M>(
        &self,
        incoming: Incoming<M>,
        time: Option<lookout_proto::Timestamp>,
        decide: impl FnOnce(&Engine, &M, i64) -> Step,
    ) -> Result<(), HandlerError> {
        let Incoming { message, meta } = incoming;
        let time_ms = capture_ms(time.as_ref(), &meta);
        let step = decide(&self.engine(), &message, time_ms);
        self.publish(step, &meta).await
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn publish(&self, mut step: Step, meta: &MessageMeta) -> Result<(), HandlerError> {
        let parent = meta.trace().unwrap_or_else(TraceContext::new_root);
        let now = lookout_proto::timestamp(SystemTime::now());
        for alert in &mut step.alerts {
            alert.trace_id = parent.trace_id_hex();
            alert.alert_time = Some(now);
            self.alerts
                .send_traced(alert, &parent)
                .await
                .map_err(|e| HandlerError::transient(format!("publishing the alert: {e}")))?;
            metrics::counter!(m::ALERTS_FIRED, "rule" => alert.rule.clone()).increment(1);
            info!(
                rule = %alert.rule,
                camera = %alert.camera_id,
                episode = %alert.episode_id,
                score = alert.score,
                "alert",
            );
        }
        self.engine().apply(step);
        Ok(())
    }
}

/// A message's capture time in Unix milliseconds, or its Kafka timestamp without one.
fn capture_ms(time: Option<&lookout_proto::Timestamp>, meta: &MessageMeta) -> i64 {
    time.map(lookout_proto::timestamp_millis).or(meta.timestamp_ms).unwrap_or_default()
}
