//! The layer that turns `tracing` events into [`LogRecord`]s, and the filter that decides
//! which events are shipped.

use std::{
    cell::Cell,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use lookout_proto::v1::{Level as RecordLevel, LogRecord};
use tokio::sync::mpsc::{self, error::TrySendError};
use tracing::{
    Event, Level, Metadata, Subscriber,
    field::{Field, Visit},
    level_filters::LevelFilter,
    span,
    subscriber::Interest,
};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::{
    layer::{Context, Filter, Layer},
    registry::LookupSpan,
};

use crate::{metrics as m, ship::Item};

/// Targets whose events are never shipped: the Kafka client's own logs (they report on the
/// publishing of log records, among others) and the shipping code itself. A target matches
/// when it is one of these or a module below one.
const NEVER_SHIPPED: &[&str] =
    &["rdkafka", "librdkafka", "lookout_telemetry", "lookout_bus::publisher"];

/// Span and event fields that fill [`LogRecord::camera_id`].
const CAMERA_FIELDS: &[&str] = &["camera_id", "camera"];
/// Span and event fields that fill [`LogRecord::frame_sequence`] when they hold a number.
const SEQUENCE_FIELDS: &[&str] = &["frame_sequence", "sequence"];
/// The span or event field that fills [`LogRecord::trace_id`].
const TRACE_FIELD: &str = "trace_id";

thread_local! {
    /// True while events of this thread must not be shipped: on the shipping thread always,
    /// elsewhere inside [`console_only`].
    static SUPPRESSED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with log shipping suppressed on the current thread: the events it emits go to the
/// console only. For code whose own events would feed back into the logs topic, such as the
/// log shipper's per-batch events. Do not `.await` inside `f`; wrap single statements.
pub fn console_only<R>(f: impl FnOnce() -> R) -> R {
    let previous = SUPPRESSED.with(|s| s.replace(true));
    let _restore = Restore(previous);
    f()
}

struct Restore(bool);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = SUPPRESSED.try_with(|s| s.set(self.0));
    }
}

/// Marks the current thread as the shipping thread for the rest of its life.
pub(crate) fn suppress_this_thread() {
    SUPPRESSED.with(|s| s.set(true));
}

fn suppressed() -> bool {
    SUPPRESSED.try_with(Cell::get).unwrap_or(true)
}

fn never_shipped(target: &str) -> bool {
    NEVER_SHIPPED.iter().any(|t| {
        target.strip_prefix(t).is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// Decides which events are shipped: those at or above the shipping level, except those of the
/// never-shipped targets (`rdkafka`, `librdkafka`, `lookout_telemetry`,
/// `lookout_bus::publisher` and modules below them) and those emitted on a suppressed thread
/// (the shipping thread, or inside [`console_only`]). Spans are
/// enabled down to `DEBUG` (or to the shipping level when it is lower) so that an `info!` inside
/// a `debug_span!` still carries the span's camera and frame fields.
#[derive(Debug, Clone, Copy)]
pub struct ShipFilter {
    events: LevelFilter,
    spans: LevelFilter,
}

impl ShipFilter {
    /// A filter shipping events at `level` and above.
    pub fn new(level: LevelFilter) -> Self {
        let spans = if level == LevelFilter::OFF { level } else { level.max(LevelFilter::DEBUG) };
        Self { events: level, spans }
    }
}

impl<S> Filter<S> for ShipFilter {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        if meta.is_span() {
            return meta.level() <= &self.spans;
        }
        meta.level() <= &self.events && !never_shipped(meta.target()) && !suppressed()
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if meta.is_span() {
            return if meta.level() <= &self.spans {
                Interest::always()
            } else {
                Interest::never()
            };
        }
        if meta.level() > &self.events || never_shipped(meta.target()) {
            Interest::never()
        } else {
            // Whether the emitting thread is suppressed is known only per event.
            Interest::sometimes()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.spans.max(self.events))
    }
}

/// Turns each event it sees, with the fields of its spans, into a [`LogRecord`] and hands it to
/// the shipping thread through a bounded queue. It never waits: when the queue is full the
/// record is dropped and counted in [`LOG_RECORDS_DROPPED`](m::LOG_RECORDS_DROPPED).
///
/// Attach it with its [`ShipFilter`], as [`log_layer`](crate::log_layer) does.
pub struct LogLayer {
    tx: mpsc::Sender<Item>,
    service: String,
    instance: String,
    dropped: Arc<AtomicU64>,
}

impl fmt::Debug for LogLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogLayer")
            .field("service", &self.service)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl LogLayer {
    pub(crate) fn new(
        tx: mpsc::Sender<Item>,
        service: String,
        instance: String,
        dropped: Arc<AtomicU64>,
    ) -> Self {
        Self { tx, service, instance, dropped }
    }

    fn record<S>(&self, event: &Event<'_>, meta: &Metadata<'_>, ctx: &Context<'_, S>) -> LogRecord
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        // Fields of the spans, outermost first, then of the event: inner values win.
        let mut fields = Fields::default();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(own) = span.extensions().get::<Fields>() {
                    for (name, value) in &own.0 {
                        fields.put(name, value.clone());
                    }
                }
            }
        }
        event.record(&mut fields);

        let mut record = LogRecord {
            time: Some(lookout_proto::timestamp(SystemTime::now())),
            service: self.service.clone(),
            instance: self.instance.clone(),
            level: record_level(meta.level()) as i32,
            target: meta.target().to_owned(),
            ..Default::default()
        };
        for (name, value) in fields.0 {
            if name == "message" {
                record.message = value;
            } else if name == TRACE_FIELD && record.trace_id.is_empty() {
                record.trace_id = value;
            } else if CAMERA_FIELDS.contains(&name) && record.camera_id.is_empty() {
                record.camera_id = value;
            } else if SEQUENCE_FIELDS.contains(&name)
                && record.frame_sequence.is_none()
                && let Ok(seq) = value.parse::<u64>()
            {
                record.frame_sequence = Some(seq);
            } else if !name.starts_with("log.") {
                // `log.*` are tracing-log's copies of the metadata of `log` records.
                record.fields.insert(name.to_owned(), value);
            }
        }
        record
    }
}

impl<S> Layer<S> for LogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        match extensions.get_mut::<Fields>() {
            Some(fields) => values.record(fields),
            None => {
                let mut fields = Fields::default();
                values.record(&mut fields);
                extensions.insert(fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // `log` records arrive with the target `log`; their real target is in their fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if never_shipped(meta.target()) || suppressed() {
            return;
        }
        let record = self.record(event, meta, &ctx);
        match self.tx.try_send(Item::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => count_drop(&self.dropped, "queue_full"),
            Err(TrySendError::Closed(_)) => count_drop(&self.dropped, "closed"),
        }
    }
}

/// Counts a record that was not shipped.
pub(crate) fn count_drop(dropped: &AtomicU64, reason: &'static str) {
    dropped.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(m::LOG_RECORDS_DROPPED, "reason" => reason).increment(1);
}

fn record_level(level: &Level) -> RecordLevel {
    match *level {
        Level::TRACE => RecordLevel::Trace,
        Level::DEBUG => RecordLevel::Debug,
        Level::INFO => RecordLevel::Info,
        Level::WARN => RecordLevel::Warn,
        Level::ERROR => RecordLevel::Error,
    }
}

/// Field values rendered as strings, in the order they were first recorded; kept in each span's
/// extensions and collected for each event.
#[derive(Debug, Default)]
struct Fields(Vec<(&'static str, String)>);

impl Fields {
    fn put(&mut self, name: &'static str, value: String) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field.name(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field.name(), value.to_owned());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field.name(), value.to_string());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field.name(), value.to_string());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field.name(), value.to_string());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field.name(), value.to_string());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        self.put(field.name(), text);
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// This crate's own targets are never shipped: test events name an application's.
    const APP: &str = "lookout_predictor::run";

    fn capture(
        capacity: usize,
        level: LevelFilter,
    ) -> (impl Subscriber, mpsc::Receiver<Item>, Arc<AtomicU64>) {
        let (tx, rx) = mpsc::channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let layer = LogLayer::new(tx, "lookout-test".into(), "box-1".into(), dropped.clone());
        let subscriber =
            tracing_subscriber::registry().with(layer.with_filter(ShipFilter::new(level)));
        (subscriber, rx, dropped)
    }

    fn records(rx: &mut mpsc::Receiver<Item>) -> Vec<LogRecord> {
        let mut out = Vec::new();
        while let Ok(item) = rx.try_recv() {
            if let Item::Record(r) = item {
                out.push(*r);
            }
        }
        out
    }

    #[test]
    fn events_carry_the_fields_of_their_spans() {
        let (subscriber, mut rx, _) = capture(16, LevelFilter::INFO);
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("camera", camera_id = "lobby");
            let _o = outer.enter();
            let inner = tracing::debug_span!(
                "frame",
                sequence = 42u64,
                trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
                stage = tracing::field::Empty
            );
            let _i = inner.enter();
            inner.record("stage", "decode");
            tracing::info!(target: APP, score = 0.5, label = %"cat", "labelled");
        });
        let got = records(&mut rx);
        assert_eq!(got.len(), 1, "{got:?}");
        let r = &got[0];
        assert_eq!(r.message, "labelled");
        assert_eq!(r.camera_id, "lobby");
        assert_eq!(r.frame_sequence, Some(42));
        assert_eq!(r.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(r.service, "lookout-test");
        assert_eq!(r.instance, "box-1");
        assert_eq!(r.level, RecordLevel::Info as i32);
        assert_eq!(r.target, APP);
        assert_eq!(r.fields.get("score").map(String::as_str), Some("0.5"));
        assert_eq!(r.fields.get("label").map(String::as_str), Some("cat"));
        assert_eq!(r.fields.get("stage").map(String::as_str), Some("decode"));
        assert!(!r.fields.contains_key("camera_id"), "promoted fields are not repeated");
        assert!(r.time.is_some());
    }

    #[test]
    fn level_targets_and_suppressed_threads_are_not_shipped() {
        let (subscriber, mut rx, _) = capture(16, LevelFilter::INFO);
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: APP, "too verbose");
            tracing::warn!(target: "librdkafka", "librdkafka: FAIL broker down");
            tracing::warn!(target: "rdkafka::client", "client error");
            tracing::warn!(target: "lookout_bus::publisher", "queue full");
            tracing::warn!(target: "lookout_telemetry::ship", "records dropped");
            console_only(|| tracing::error!(target: APP, "console only"));
            tracing::error!(target: "lookout_telemetry", "this crate");
            tracing::warn!(target: "rdkafkaesque", "a different crate");
            tracing::error!(target: APP, sequence = "not a number", "shipped");
        });
        let got = records(&mut rx);
        let messages: Vec<&str> = got.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(messages, ["a different crate", "shipped"]);
        assert_eq!(got[1].frame_sequence, None);
        assert_eq!(got[1].fields.get("sequence").map(String::as_str), Some("not a number"));
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (subscriber, mut rx, dropped) = capture(2, LevelFilter::WARN);
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..10 {
                tracing::warn!(target: APP, i, "burst");
            }
            tracing::info!(target: APP, "below the shipping level");
        });
        assert_eq!(records(&mut rx).len(), 2);
        assert_eq!(dropped.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn errors_are_rendered_with_their_sources() {
        let (subscriber, mut rx, _) = capture(4, LevelFilter::INFO);
        let err = ChainError(std::io::Error::other("disk full"));
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: APP, error = &err as &(dyn std::error::Error + 'static), "write failed");
        });
        let got = records(&mut rx);
        assert_eq!(got[0].fields["error"], "cannot write: disk full");
    }

    #[derive(Debug)]
    struct ChainError(std::io::Error);
    impl fmt::Display for ChainError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot write")
        }
    }
    impl std::error::Error for ChainError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
