//! Messages as the bus hands them out: raw records, and decoded messages with where they
//! came from.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use lookout_proto::BusMessage;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};

use crate::headers::{ContentType, Headers, HeadersBuilder, TraceContext};

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
    /// Copies a record out of librdkafka: key, headers and payload into one allocation.
    pub(crate) fn copy_from(m: &BorrowedMessage<'_>, topic: &Arc<str>) -> Self {
        let key = m.key();
        let payload = m.payload();
        let headers = m.headers();
        let header_bytes: usize = headers
            .map(|hs| hs.iter().map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len)).sum())
            .unwrap_or(0);
        let key_len = key.map_or(0, <[u8]>::len);
        let payload_len = payload.map_or(0, <[u8]>::len);
        let mut buf = BytesMut::with_capacity(key_len + payload_len);
        if let Some(k) = key {
            buf.extend_from_slice(k);
        }
        if let Some(p) = payload {
            buf.extend_from_slice(p);
        }
        let buf = buf.freeze();
        let mut hb = HeadersBuilder::with_capacity(header_bytes);
        if let Some(hs) = headers {
            for h in hs.iter() {
                hb.push(h.key, h.value);
            }
        }
        Self {
            topic: topic.clone(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: key.map(|_| buf.slice(..key_len)),
            payload: payload.map(|_| buf.slice(key_len..)),
            headers: hb.finish(),
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
        let expected = M::full_name();
        match self.headers.content_type() {
            None | Some(ContentType::Protobuf(None)) => {}
            Some(ContentType::Protobuf(Some(named))) if named == expected => {}
            Some(ContentType::Protobuf(Some(named))) => {
                return Err(format!("content-type names {named} where {expected} was expected"));
            }
            Some(ContentType::Other(other)) => {
                return Err(format!("content-type {other} where protobuf {expected} was expected"));
            }
        }
        let Some(payload) = &self.payload else {
            return Err("no payload (a tombstone)".into());
        };
        let message =
            M::decode(payload.clone()).map_err(|e| format!("cannot decode {expected}: {e}"))?;
        Ok(Incoming { message, meta: self.meta() })
    }
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
