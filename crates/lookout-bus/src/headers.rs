//! The headers every Lookout message carries, and W3C trace context.

use std::time::SystemTime;

use rdkafka::message::{Header, Headers, OwnedHeaders};

/// Fully qualified protobuf type of the payload, e.g. `lookout.v1.Frame`.
pub const CONTENT_TYPE: &str = "content-type";
/// Name of the producing service, e.g. `lookout-camera`.
pub const SERVICE: &str = "lookout-service";
/// The producing replica.
pub const INSTANCE: &str = "lookout-instance";
/// When the message was handed to the producer, Unix milliseconds as decimal text.
pub const PRODUCED_AT: &str = "lookout-produced-at";
/// W3C trace context: `00-<trace id>-<span id>-<flags>`.
pub const TRACEPARENT: &str = "traceparent";

/// Dead-letter headers: where the message came from and why it was dead-lettered.
pub const DLQ_TOPIC: &str = "dlq-original-topic";
/// Original partition, decimal.
pub const DLQ_PARTITION: &str = "dlq-original-partition";
/// Original offset, decimal.
pub const DLQ_OFFSET: &str = "dlq-original-offset";
/// The decoding or handling error.
pub const DLQ_ERROR: &str = "dlq-error";
/// The consumer group that gave up on it.
pub const DLQ_GROUP: &str = "dlq-group";

/// A W3C trace context (<https://www.w3.org/TR/trace-context/>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 128-bit trace id, never zero.
    pub trace_id: u128,
    /// 64-bit id of the span that produced the message, never zero.
    pub span_id: u64,
    /// Whether the trace is sampled.
    pub sampled: bool,
}

impl TraceContext {
    /// Starts a new trace.
    pub fn new_root() -> Self {
        Self { trace_id: nonzero_u128(), span_id: nonzero_u64(), sampled: true }
    }

    /// A new span in the same trace, for a message derived from this one.
    pub fn child(&self) -> Self {
        Self { span_id: nonzero_u64(), ..*self }
    }

    /// The 32 hex digit trace id.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The `traceparent` header value.
    pub fn to_header(&self) -> String {
        format!("00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, u8::from(self.sampled))
    }

    /// Parses a `traceparent` header value; `None` when malformed or all-zero.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self { trace_id, span_id, sampled: flags & 1 == 1 })
    }
}

fn nonzero_u128() -> u128 {
    loop {
        let v: u128 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

pub use lookout_proto::unix_millis;

/// The standard headers of a message.
pub(crate) fn standard(
    content_type: &str,
    service: &str,
    instance: &str,
    trace: &TraceContext,
) -> OwnedHeaders {
    let produced_at = unix_millis(SystemTime::now()).to_string();
    let traceparent = trace.to_header();
    OwnedHeaders::new_with_capacity(5)
        .insert(Header { key: CONTENT_TYPE, value: Some(content_type) })
        .insert(Header { key: SERVICE, value: Some(service) })
        .insert(Header { key: INSTANCE, value: Some(instance) })
        .insert(Header { key: PRODUCED_AT, value: Some(&produced_at) })
        .insert(Header { key: TRACEPARENT, value: Some(&traceparent) })
}

/// The headers of a received message, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageHeaders {
    /// `content-type`.
    pub content_type: Option<String>,
    /// `lookout-service`.
    pub service: Option<String>,
    /// `lookout-instance`.
    pub instance: Option<String>,
    /// `lookout-produced-at`, Unix milliseconds.
    pub produced_at_ms: Option<i64>,
    /// `traceparent`.
    pub trace: Option<TraceContext>,
}

impl MessageHeaders {
    /// Reads the standard headers; unknown headers are ignored.
    pub fn from_kafka<H: Headers>(headers: Option<&H>) -> Self {
        let mut out = Self::default();
        let Some(headers) = headers else { return out };
        for h in headers.iter() {
            let Some(value) = h.value.and_then(|v| std::str::from_utf8(v).ok()) else {
                continue;
            };
            match h.key {
                CONTENT_TYPE => out.content_type = Some(value.to_owned()),
                SERVICE => out.service = Some(value.to_owned()),
                INSTANCE => out.instance = Some(value.to_owned()),
                PRODUCED_AT => out.produced_at_ms = value.parse().ok(),
                TRACEPARENT => out.trace = TraceContext::parse(value),
                _ => {}
            }
        }
        out
    }
}

/// Every header of a message as (key, UTF-8 lossy value) pairs, for inspection tools.
pub fn all<H: Headers>(headers: Option<&H>) -> Vec<(String, String)> {
    headers
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    let v = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                    (h.key.to_owned(), v.into_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let t = TraceContext::new_root();
        assert_eq!(TraceContext::parse(&t.to_header()), Some(t));
        let c = t.child();
        assert_eq!(c.trace_id, t.trace_id);
        assert_ne!(c.span_id, t.span_id);
    }

    #[test]
    fn traceparent_rejects_malformed_values() {
        assert_eq!(TraceContext::parse("garbage"), None);
        let zero = format!("00-{}-{}-01", "0".repeat(32), "1".repeat(16));
        assert_eq!(TraceContext::parse(&zero), None);
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::parse(ok).unwrap();
        assert_eq!(t.to_header(), ok);
        assert!(t.sampled);
    }
}
