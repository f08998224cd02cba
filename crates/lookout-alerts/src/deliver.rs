//! The sink stage: alerts in from `lookout.alerts`, out to every sink.
//!
//! The handler delivers an alert to each sink in turn and returns only when every sink has
//! it; then the bus stores the offset. A sink that fails transiently makes the handler
//! answer [`HandlerError::Transient`]: the partition is paused and the same alert offered
//! again after a backoff, for ever if need be (the `sinks` readiness check is red meanwhile);
//! the sinks that already took it are not asked again. A sink that refuses an alert for good
//! gets it dead-lettered.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use lookout_bus::{Handler, HandlerError, Incoming};
use lookout_proto::v1::Alert;
use lookout_service::Readiness;
use tracing::{debug, warn};

use crate::{SinkError, metrics as m, payload::AlertJson, sink::Sink};

/// The readiness check that is false while a sink does not take alerts.
pub const READINESS_CHECK: &str = "sinks";

/// Most alerts remembered as partly delivered (one per paused partition is the usual).
const MAX_PARTLY_DELIVERED: usize = 1024;

/// The sink stage's handler; clones share the sinks.
#[derive(Debug, Clone)]
pub(crate) struct Delivering(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    sinks: Vec<Box<dyn Sink>>,
    readiness: Readiness,
    /// Sinks (by index) that took an alert not yet taken by all, by partition and offset.
    partly: Mutex<HashMap<(i32, i64), HashSet<usize>>>,
}

impl Delivering {
    pub(crate) fn new(sinks: Vec<Box<dyn Sink>>, readiness: Readiness) -> Self {
        readiness.set(READINESS_CHECK, true);
        Self(Arc::new(Shared { sinks, readiness, partly: Mutex::new(HashMap::new()) }))
    }
}

impl Handler<Alert> for Delivering {
    async fn handle(&self, incoming: Incoming<Alert>) -> Result<(), HandlerError> {
        self.0.deliver(incoming).await
    }
}

impl Shared {
    fn partly(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, i64), HashSet<usize>>> {
        self.partly.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn deliver(&self, incoming: Incoming<Alert>) -> Result<(), HandlerError> {
        let Incoming { message: alert, meta } = incoming;
        let key = (meta.partition, meta.offset);
        let body = AlertJson::new(&alert).to_bytes();
        let mut done = self.partly().remove(&key).unwrap_or_default();
        for (i, sink) in self.sinks.iter().enumerate() {
            if done.contains(&i) {
                continue;
            }
            match sink.deliver(&alert, &body).await {
                Ok(()) => {
                    done.insert(i);
                    metrics::counter!(m::ALERTS_DELIVERED, "sink" => sink.kind()).increment(1);
                    debug!(sink = sink.name(), episode = %alert.episode_id, "alert delivered");
                }
                Err(SinkError::Transient(reason)) => {
                    metrics::counter!(m::SINK_ERRORS, "sink" => sink.kind()).increment(1);
                    self.readiness.set(READINESS_CHECK, false);
                    warn!(
                        sink = sink.name(),
                        episode = %alert.episode_id,
                        error = %reason,
                        "sink did not take the alert; will retry",
                    );
                    let mut partly = self.partly();
                    if partly.len() >= MAX_PARTLY_DELIVERED {
                        partly.clear();
                    }
                    partly.insert(key, done);
                    return Err(HandlerError::Transient(reason));
                }
                Err(SinkError::Permanent(reason)) => {
                    metrics::counter!(m::ALERTS_REFUSED, "sink" => sink.kind()).increment(1);
                    warn!(
                        sink = sink.name(),
                        episode = %alert.episode_id,
                        error = %reason,
                        "sink refused the alert; dead-lettering it",
                    );
                    return Err(HandlerError::Permanent(reason));
                }
            }
        }
        self.readiness.set(READINESS_CHECK, true);
        if let Some(fired) = alert.alert_time.as_ref().and_then(lookout_proto::system_time) {
            let delay = SystemTime::now().duration_since(fired).unwrap_or_default();
            metrics::histogram!(m::DELIVERY_DELAY).record(delay.as_secs_f64());
        }
        Ok(())
    }
}
