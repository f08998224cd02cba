//! Messages as the bus hands them out: raw records, and decoded messages with where they
//! came from.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use lookout_proto::BusMessage;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};

use crate::headers::{self, ContentType, Headers, HeadersBuilder, TraceContext};

/// A Kafka record as read: bytes and headers, not decoded. Cheap to clone (the bytes are
/// shared).
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// Full topic name.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Kafka timestamp (the producer's create time unless the topic says otherwise), Unix ms.
    pub timestamp_ms: Option<i64>,
    /// Key.
    pub key: Option<Bytes>,
    /// Payload; `None` for a tombstone.
    pub payload: Option<Bytes>,
    /// Headers, in order.
    pub headers: Headers,
}

impl RawMessage {
    /// Copies a record out of librdkafka: key, payload and headers into one allocation.
    pub(crate) fn copy_from(m: &BorrowedMessage<'_>, topic: &Arc<str>) -> Self {
        let key = m.key();
        let payload = m.payload();
        let key_len = key.map_or(0, <[u8]>::len);
        let payload_len = payload.map_or(0, <[u8]>::len);
        let headers = m.headers();
        // Lookout's records carry two headers of about 110 bytes: room for them up front.
        let room = headers.map_or(0, |h| h.count() * 64);
        let mut buf = BytesMut::with_capacity(key_len + payload_len + room);
        if let Some(k) = key {
            buf.extend_from_slice(k);
        }
        if let Some(p) = payload {
            buf.extend_from_slice(p);
        }
        let mut hb = HeadersBuilder::default();
        if let Some(hs) = headers {
            for h in hs.iter() {
                hb.push(&mut buf, h.key.as_bytes(), h.value);
            }
        }
        let buf = buf.freeze();
        Self {
            topic: topic.clone(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: key.map(|_| buf.slice(..key_len)),
            payload: payload.map(|_| buf.slice(key_len..key_len + payload_len)),
            headers: hb.finish(buf),
        }
    }

    /// A record with the origin and headers of `meta` and this payload (to dead-letter a
    /// message as re-encoded, say).
    pub fn from_meta(meta: MessageMeta, payload: Option<Bytes>) -> Self {
        Self {
            topic: meta.topic,
            partition: meta.partition,
            offset: meta.offset,
            timestamp_ms: meta.timestamp_ms,
            key: meta.key,
            payload,
            headers: meta.headers,
        }
    }

    /// The key, when it is UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref().and_then(|k| std::str::from_utf8(k).ok())
    }

    /// Where the record came from, and its headers.
    pub fn meta(&self) -> MessageMeta {
        MessageMeta {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.clone(),
            headers: self.headers.clone(),
        }
    }

    /// Decodes the payload as `M`, checking the `content-type` header when there is one:
    /// a header naming another type, or a type that is not protobuf, is refused. A record
    /// without the header is taken to be the topic's type. The reason is for the dead-letter
    /// topic.
    pub fn decode<M: BusMessage>(&self) -> Result<Incoming<M>, String> {
        if let Some(value) = self.headers.get(headers::CONTENT_TYPE) {
            check_content_type::<M>(value)?;
        }
        let Some(payload) = &self.payload else {
            return Err("no payload (a tombstone)".into());
        };
        let message = M::decode(payload.clone())
            .map_err(|e| format!("cannot decode {}: {e}", M::full_name()))?;
        Ok(Incoming { message, meta: self.meta() })
    }
}

/// Whether a `content-type` header value says the payload is an `M`: the form Lookout
/// publishes is checked without parsing or allocating, the others are parsed.
fn check_content_type<M: BusMessage>(value: &[u8]) -> Result<(), String> {
    if let Some(named) = value.strip_prefix(headers::PROTOBUF_PREFIX.as_bytes())
        && is_full_name::<M>(named)
    {
        return Ok(());
    }
    let value = std::str::from_utf8(value).map_err(|_| "content-type is not UTF-8".to_owned())?;
    match headers::parse_content_type(value) {
        ContentType::Protobuf(None) => Ok(()),
        ContentType::Protobuf(Some(named)) if is_full_name::<M>(named.as_bytes()) => Ok(()),
        ContentType::Protobuf(Some(named)) => {
            Err(format!("content-type names {named} where {} was expected", M::full_name()))
        }
        ContentType::Other(other) => {
            Err(format!("content-type {other} where protobuf {} was expected", M::full_name()))
        }
    }
}

/// Whether `name` is `M`'s full protobuf name (`package.Name`), without building it.
fn is_full_name<M: BusMessage>(name: &[u8]) -> bool {
    let (package, short) = (M::PACKAGE.as_bytes(), M::NAME.as_bytes());
    name.len() == package.len() + 1 + short.len()
        && name.starts_with(package)
        && name[package.len()] == b'.'
        && name.ends_with(short)
}

/// Where a message came from and its headers.
#[derive(Debug, Clone)]
pub struct MessageMeta {
    /// Full topic name.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Kafka timestamp, Unix milliseconds.
    pub timestamp_ms: Option<i64>,
    /// Key.
    pub key: Option<Bytes>,
    /// Headers, in order.
    pub headers: Headers,
}

impl MessageMeta {
    /// The key, when it is UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref().and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The trace the message was sent in (`traceparent`).
    pub fn trace(&self) -> Option<TraceContext> {
        self.headers.trace()
    }
}

/// A decoded message and where it came from.
#[derive(Debug, Clone)]
pub struct Incoming<M> {
    /// The decoded message.
    pub message: M,
    /// Topic, partition, offset and headers.
    pub meta: MessageMeta,
}

#[cfg(test)]
mod tests {
    use lookout_proto::v1::{Frame, Prediction};

    use super::*;

    #[test]
    fn content_types_are_checked_without_building_names() {
        assert!(is_full_name::<Frame>(b"lookout.v1.Frame"));
        assert!(!is_full_name::<Frame>(b"lookout.v1.Frames"));
        assert!(!is_full_name::<Frame>(b"lookout.v2.Frame"));
        assert!(!is_full_name::<Prediction>(b"lookout.v1.Frame"));
        let ours = lookout_proto::topics::FRAMES.content_type();
        assert!(ours.starts_with(headers::PROTOBUF_PREFIX), "{ours}");
        assert_eq!(check_content_type::<Frame>(ours.as_bytes()), Ok(()));
        assert_eq!(check_content_type::<Frame>(b"lookout.v1.Frame"), Ok(()));
        assert!(
            check_content_type::<Prediction>(ours.as_bytes())
                .unwrap_err()
                .contains("names lookout.v1.Frame")
        );
        assert!(check_content_type::<Frame>(b"application/json").is_err());
    }

    #[test]
    fn more_headers_than_fit_inline_are_kept() {
        let mut h = Headers::new();
        for i in 0..10 {
            h = h.with(&format!("k{i}"), i.to_string());
        }
        assert_eq!(h.len(), 10);
        assert_eq!(h.get_str("k9"), Some("9"));
        assert_eq!(h.clone(), h);
    }
}
