//! The headers Lookout messages carry, how `content-type` values are read, and W3C trace
//! context.
//!
//! Every message is published with two headers:
//!
//! | header | value |
//! |---|---|
//! | `content-type` | `application/x-protobuf; messageType=lookout.v1.Frame` |
//! | `traceparent` | W3C trace context; a message derived from another continues its trace |
//!
//! The producing service and replica are in the Kafka client id (`service@instance`), and the
//! produce time is the record's Kafka timestamp.

use bytes::{Bytes, BytesMut};

/// The payload's type: `application/x-protobuf; messageType=<full protobuf name>`.
pub const CONTENT_TYPE: &str = "content-type";
/// W3C trace context: `00-<trace id>-<span id>-<flags>`.
pub const TRACEPARENT: &str = "traceparent";

/// What Lookout's `content-type` values start with, before the full type name.
pub const PROTOBUF_PREFIX: &str = "application/x-protobuf; messageType=";

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
/// Set when the payload was cut to fit the producer's size limit: the original size in bytes.
pub const DLQ_TRUNCATED: &str = "dlq-truncated-from";

/// What a `content-type` header says about a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType<'a> {
    /// Protobuf, naming the message type (`lookout.v1.Frame`) or not (`None`).
    Protobuf(Option<&'a str>),
    /// Anything else (`application/json`, …).
    Other(&'a str),
}

/// Reads a `content-type` header value. Accepted protobuf forms:
///
/// - `application/x-protobuf; messageType=lookout.v1.Frame` (what Lookout publishes),
/// - `application/protobuf; proto=lookout.v1.Frame` (either parameter with either media type),
/// - `application/x-protobuf` or `application/protobuf` without a type,
/// - the bare full name, `lookout.v1.Frame`.
///
/// Media types and parameter names are case-insensitive; parameter values may be quoted.
pub fn parse_content_type(value: &str) -> ContentType<'_> {
    let value = value.trim();
    let mut parts = value.split(';');
    let media = parts.next().unwrap_or_default().trim();
    if !media.contains('/') {
        // A bare type name: `lookout.v1.Frame`.
        return if media.is_empty() || value.contains(';') {
            ContentType::Other(value)
        } else {
            ContentType::Protobuf(Some(media))
        };
    }
    let protobuf =
        ["application/x-protobuf", "application/protobuf", "application/vnd.google.protobuf"]
            .iter()
            .any(|m| media.eq_ignore_ascii_case(m));
    if !protobuf {
        return ContentType::Other(value);
    }
    let named = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        let k = k.trim();
        (k.eq_ignore_ascii_case("messageType") || k.eq_ignore_ascii_case("proto"))
            .then(|| v.trim().trim_matches('"'))
            .filter(|v| !v.is_empty())
    });
    ContentType::Protobuf(named)
}

/// A record's headers in their order, keys as text and values as bytes, all in one buffer.
/// Cheap to clone: the bytes are shared, and up to [`INLINE_HEADERS`] headers are described
/// without an allocation.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    buf: Bytes,
    spans: Spans,
}

/// How many headers [`Headers`] describes without allocating.
pub const INLINE_HEADERS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Span {
    key: (u32, u32),
    /// `None` for a header without a value.
    value: Option<(u32, u32)>,
}

/// The spans of the headers: inline up to [`INLINE_HEADERS`], then on the heap.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Spans {
    Inline(u8, [Span; INLINE_HEADERS]),
    Heap(Vec<Span>),
}

impl Default for Spans {
    fn default() -> Self {
        Self::Inline(0, [Span::default(); INLINE_HEADERS])
    }
}

impl Spans {
    fn as_slice(&self) -> &[Span] {
        match self {
            Self::Inline(n, spans) => &spans[..usize::from(*n)],
            Self::Heap(spans) => spans,
        }
    }

    fn push(&mut self, span: Span) {
        match self {
            Self::Inline(n, spans) if usize::from(*n) < INLINE_HEADERS => {
                spans[usize::from(*n)] = span;
                *n += 1;
            }
            Self::Inline(_, spans) => {
                let mut heap = spans.to_vec();
                heap.push(span);
                *self = Self::Heap(heap);
            }
            Self::Heap(spans) => spans.push(span),
        }
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, v)| (k, v.map(String::from_utf8_lossy))))
            .finish()
    }
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// These headers plus one more (a builder, for raw publishing and tests).
    pub fn with(self, key: &str, value: impl AsRef<[u8]>) -> Self {
        let mut buf = BytesMut::with_capacity(self.buf.len() + key.len() + 64);
        let mut b = HeadersBuilder::default();
        for (k, v) in self.iter() {
            b.push(&mut buf, k.as_bytes(), v);
        }
        b.push(&mut buf, key.as_bytes(), Some(value.as_ref()));
        b.finish(buf.freeze())
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.spans.as_slice().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every header in order: (key, value). A key that is not UTF-8 reads as empty.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.spans.as_slice().iter().map(|s| {
            let key = std::str::from_utf8(self.key_bytes(s)).unwrap_or_default();
            (key, s.value.map(|(a, b)| &self.buf[a as usize..b as usize]))
        })
    }

    fn key_bytes(&self, s: &Span) -> &[u8] {
        &self.buf[s.key.0 as usize..s.key.1 as usize]
    }

    /// The value of the first header named `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        let span = self.spans.as_slice().iter().find(|s| self.key_bytes(s) == key.as_bytes())?;
        span.value.map(|(a, b)| &self.buf[a as usize..b as usize])
    }

    /// The value of the first header named `key`, when it is UTF-8.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header as (key, UTF-8 lossy value) pairs, for inspection tools.
    pub fn to_strings(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.map(String::from_utf8_lossy).unwrap_or_default().into()))
            .collect()
    }

    /// The `content-type` header, read.
    pub fn content_type(&self) -> Option<ContentType<'_>> {
        self.get_str(CONTENT_TYPE).map(parse_content_type)
    }

    /// The `traceparent` header, when present and well-formed.
    pub fn trace(&self) -> Option<TraceContext> {
        self.get_str(TRACEPARENT).and_then(TraceContext::parse)
    }
}

/// Builds [`Headers`] whose bytes live in a buffer shared with other data (a record's key and
/// payload): push each header's bytes into the buffer, then freeze it and finish.
#[derive(Debug, Default)]
pub(crate) struct HeadersBuilder {
    spans: Spans,
}

impl HeadersBuilder {
    pub(crate) fn push(&mut self, buf: &mut BytesMut, key: &[u8], value: Option<&[u8]>) {
        let k0 = buf.len() as u32;
        buf.extend_from_slice(key);
        let k1 = buf.len() as u32;
        let value = value.map(|v| {
            buf.extend_from_slice(v);
            (k1, buf.len() as u32)
        });
        self.spans.push(Span { key: (k0, k1), value });
    }

    /// The headers, over `buf` (the frozen buffer the pushes wrote into).
    pub(crate) fn finish(self, buf: Bytes) -> Headers {
        Headers { buf, spans: self.spans }
    }
}

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
        Self {
            trace_id: rand::random::<u128>() | 1,
            span_id: rand::random::<u64>() | 1,
            sampled: true,
        }
    }

    /// A new span in the same trace, for a message derived from this one.
    pub fn child(&self) -> Self {
        Self { span_id: rand::random::<u64>() | 1, ..*self }
    }

    /// The 32 hex digit trace id.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The `traceparent` header value.
    pub fn to_header(&self) -> String {
        String::from_utf8(self.header_bytes().to_vec()).expect("hex digits are ASCII")
    }

    /// The `traceparent` header value, without allocating: `00-<32 hex>-<16 hex>-<2 hex>`.
    pub fn header_bytes(&self) -> [u8; 55] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'-'; 55];
        out[0] = b'0';
        out[1] = b'0';
        for i in 0..32 {
            out[3 + i] = HEX[((self.trace_id >> (124 - 4 * i)) & 0xf) as usize];
        }
        for i in 0..16 {
            out[36 + i] = HEX[((self.span_id >> (60 - 4 * i)) & 0xf) as usize];
        }
        out[53] = b'0';
        out[54] = if self.sampled { b'1' } else { b'0' };
        out
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

pub use lookout_proto::unix_millis;

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
        let fixed = TraceContext { trace_id: 0xab, span_id: 0xcd, sampled: false };
        assert_eq!(fixed.to_header(), format!("00-{:032x}-{:016x}-00", 0xab, 0xcd));
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

    #[test]
    fn content_type_forms() {
        use ContentType::*;
        let frame = Protobuf(Some("lookout.v1.Frame"));
        assert_eq!(
            parse_content_type("application/x-protobuf; messageType=lookout.v1.Frame"),
            frame
        );
        assert_eq!(
            parse_content_type("Application/X-Protobuf;MessageType=\"lookout.v1.Frame\""),
            frame
        );
        assert_eq!(parse_content_type("application/protobuf; proto=lookout.v1.Frame"), frame);
        assert_eq!(parse_content_type("lookout.v1.Frame"), frame);
        assert_eq!(parse_content_type("application/x-protobuf"), Protobuf(None));
        assert_eq!(parse_content_type("application/json"), Other("application/json"));
        assert_eq!(parse_content_type(""), Other(""));
    }

    #[test]
    fn headers_keep_order_and_values() {
        let h = Headers::new().with("a", "1").with(CONTENT_TYPE, "lookout.v1.Frame").with("a", "2");
        assert_eq!(h.len(), 3);
        assert_eq!(h.get_str("a"), Some("1"), "the first of a repeated key");
        assert_eq!(h.content_type(), Some(ContentType::Protobuf(Some("lookout.v1.Frame"))));
        let pairs = h.to_strings();
        assert_eq!(pairs[2], ("a".to_owned(), "2".to_owned()));
    }
}
