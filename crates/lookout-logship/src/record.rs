//! A log record as the sinks see it, and its renderings: JSON lines (files, stdout), a human
//! line (stdout) and an Elastic Common Schema document (Elasticsearch, OpenSearch).

use std::{borrow::Cow, collections::BTreeMap, fmt::Write as _, time::SystemTime};

use lookout_proto::v1::{Level, LogRecord};
use serde::Serialize;
use time::{Date, OffsetDateTime, format_description::well_known::Rfc3339};

/// The ECS version the documents follow.
pub const ECS_VERSION: &str = "8.11.0";

/// Where a record was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Full topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka timestamp, Unix milliseconds.
    pub timestamp_ms: Option<i64>,
}

/// A record to write.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The record.
    pub record: LogRecord,
    /// Where it was read from.
    pub origin: Origin,
}

impl Entry {
    /// When the event happened: the record's time, else the Kafka timestamp, else now.
    pub fn time(&self) -> OffsetDateTime {
        let from_record = self.record.time.as_ref().and_then(|t| {
            let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
            OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
        });
        let from_kafka = || {
            self.origin.timestamp_ms.and_then(|ms| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            })
        };
        from_record.or_else(from_kafka).unwrap_or_else(|| OffsetDateTime::from(SystemTime::now()))
    }

    /// A document id that is the same each time this Kafka message is delivered, and differs
    /// for a message at the same offset of a recreated topic (its timestamp differs).
    pub fn id(&self) -> String {
        let o = &self.origin;
        format!("{}-{}-{}-{}", o.topic, o.partition, o.offset, o.timestamp_ms.unwrap_or_default())
    }

    /// The lower-case level name.
    pub fn level(&self) -> &'static str {
        match Level::try_from(self.record.level).unwrap_or(Level::Unspecified) {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Unspecified => "unspecified",
        }
    }
}

/// RFC 3339 in UTC with the record's precision, e.g. `2026-05-01T12:00:00.123456Z`.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The UTC day of a time, `YYYY.MM.DD`, as used in daily index names.
pub fn dotted_day(date: Date) -> String {
    format!("{:04}.{:02}.{:02}", date.year(), u8::from(date.month()), date.day())
}

/// One JSON line of a file or of stdout in JSON format: the record's own field names.
#[derive(Debug, Serialize)]
struct JsonLine<'a> {
    time: String,
    level: &'static str,
    service: &'a str,
    instance: &'a str,
    target: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    camera_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    frame_sequence: Option<u64>,
    #[serde(skip_serializing_if = "str::is_empty")]
    trace_id: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    fields: BTreeMap<&'a str, &'a str>,
}

/// The record as one line of JSON, without the newline.
pub fn json_line(entry: &Entry) -> String {
    let r = &entry.record;
    let line = JsonLine {
        time: rfc3339(entry.time()),
        level: entry.level(),
        service: &r.service,
        instance: &r.instance,
        target: &r.target,
        message: &r.message,
        camera_id: &r.camera_id,
        frame_sequence: r.frame_sequence,
        trace_id: &r.trace_id,
        fields: r.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// The record as a line for people:
/// `2026-05-01T12:00:00.1Z  INFO lookout-predictor[box-1] target: message camera_id=lobby …`.
/// Control characters in any of the record's text are escaped (`\n`, `\u{1b}`), so a record
/// is always one line and cannot send escape sequences to a terminal.
pub fn human_line(entry: &Entry) -> String {
    let r = &entry.record;
    let mut line = format!(
        "{} {:>5} {}[{}] {}: {}",
        rfc3339(entry.time()),
        entry.level().to_uppercase(),
        plain(&r.service),
        plain(&r.instance),
        plain(&r.target),
        plain(&r.message)
    );
    let mut pair = |k: &str, v: &str| {
        let k = plain(k);
        if v.is_empty()
            || v.contains(char::is_whitespace)
            || v.contains(['"', '\\'])
            || v.contains(char::is_control)
        {
            let _ = write!(line, " {k}={v:?}");
        } else {
            let _ = write!(line, " {k}={v}");
        }
    };
    if !r.camera_id.is_empty() {
        pair("camera_id", &r.camera_id);
    }
    if let Some(seq) = r.frame_sequence {
        pair("frame_sequence", &seq.to_string());
    }
    let sorted: BTreeMap<_, _> = r.fields.iter().collect();
    for (k, v) in sorted {
        pair(k, v);
    }
    if !r.trace_id.is_empty() {
        pair("trace_id", &r.trace_id);
    }
    line
}

/// `text` with its control characters escaped as Rust writes them (`\n`, `\t`, `\u{1b}`).
fn plain(text: &str) -> Cow<'_, str> {
    if !text.contains(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_debug());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

/// An Elastic Common Schema document.
#[derive(Debug, Serialize)]
struct EcsDocument<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    message: &'a str,
    log: EcsLog<'a>,
    service: EcsService<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<EcsId<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, serde_json::Value>,
    ecs: EcsVersion,
}

#[derive(Debug, Serialize)]
struct EcsLog<'a> {
    level: &'static str,
    logger: &'a str,
}

#[derive(Debug, Serialize)]
struct EcsService<'a> {
    name: &'a str,
    instance: EcsId<'a>,
}

#[derive(Debug, Serialize)]
struct EcsId<'a> {
    id: &'a str,
}

#[derive(Debug, Serialize)]
struct EcsVersion {
    version: &'static str,
}

/// The record as an ECS document: `@timestamp`, `message`, `log.level`, `log.logger` (the
/// target), `service.name`, `service.instance.id`, `trace.id`, and `labels.camera_id`,
/// `labels.frame_sequence` and every other field under `labels.*` (dots in names become `_`,
/// as ECS label keys may not contain dots).
pub fn ecs_document(entry: &Entry) -> String {
    let r = &entry.record;
    let mut labels = BTreeMap::new();
    for (k, v) in &r.fields {
        labels.insert(k.replace('.', "_"), serde_json::Value::from(v.as_str()));
    }
    if !r.camera_id.is_empty() {
        labels.insert("camera_id".to_owned(), r.camera_id.as_str().into());
    }
    if let Some(seq) = r.frame_sequence {
        labels.insert("frame_sequence".to_owned(), seq.into());
    }
    let doc = EcsDocument {
        timestamp: rfc3339(entry.time()),
        message: &r.message,
        log: EcsLog { level: entry.level(), logger: &r.target },
        service: EcsService { name: &r.service, instance: EcsId { id: &r.instance } },
        trace: (!r.trace_id.is_empty()).then_some(EcsId { id: &r.trace_id }),
        labels,
        ecs: EcsVersion { version: ECS_VERSION },
    };
    serde_json::to_string(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    pub(crate) fn entry() -> Entry {
        let mut record = LogRecord {
            time: Some(lookout_proto::Timestamp { seconds: 1_777_636_800, nanos: 5_000_000 }),
            service: "lookout-predictor".into(),
            instance: "box-1".into(),
            level: Level::Warn as i32,
            target: "lookout_predictor::run".into(),
            message: "slow frame".into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            camera_id: "lobby".into(),
            frame_sequence: Some(42),
            ..Default::default()
        };
        record.fields.insert("elapsed_ms".into(), "87".into());
        record.fields.insert("model.name".into(), "mobilenet v2".into());
        let origin = Origin {
            topic: "lookout.logs".into(),
            partition: 2,
            offset: 17,
            timestamp_ms: Some(1_777_636_800_010),
        };
        Entry { record, origin }
    }

    #[test]
    fn json_lines_keep_the_record_fields() {
        let v: Value = serde_json::from_str(&json_line(&entry())).unwrap();
        assert_eq!(v["time"], "2026-05-01T12:00:00.005Z");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["service"], "lookout-predictor");
        assert_eq!(v["camera_id"], "lobby");
        assert_eq!(v["frame_sequence"], 42);
        assert_eq!(v["fields"]["model.name"], "mobilenet v2");
        let mut bare = entry();
        bare.record.camera_id.clear();
        bare.record.frame_sequence = None;
        let v: Value = serde_json::from_str(&json_line(&bare)).unwrap();
        assert!(v.get("camera_id").is_none() && v.get("frame_sequence").is_none());
    }

    #[test]
    fn ecs_documents_use_ecs_names() {
        let v: Value = serde_json::from_str(&ecs_document(&entry())).unwrap();
        assert_eq!(v["@timestamp"], "2026-05-01T12:00:00.005Z");
        assert_eq!(v["log"]["level"], "warn");
        assert_eq!(v["log"]["logger"], "lookout_predictor::run");
        assert_eq!(v["message"], "slow frame");
        assert_eq!(v["service"]["name"], "lookout-predictor");
        assert_eq!(v["service"]["instance"]["id"], "box-1");
        assert_eq!(v["trace"]["id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["labels"]["camera_id"], "lobby");
        assert_eq!(v["labels"]["frame_sequence"], 42);
        assert_eq!(v["labels"]["model_name"], "mobilenet v2");
        assert_eq!(v["labels"]["elapsed_ms"], "87");
        assert_eq!(v["ecs"]["version"], ECS_VERSION);
    }

    #[test]
    fn human_lines_read_well() {
        let line = human_line(&entry());
        assert_eq!(
            line,
            "2026-05-01T12:00:00.005Z  WARN lookout-predictor[box-1] lookout_predictor::run: \
             slow frame camera_id=lobby frame_sequence=42 elapsed_ms=87 \
             model.name=\"mobilenet v2\" trace_id=4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    /// A message cannot forge a second line or colour a terminal (found by the `records`
    /// fuzz target).
    #[test]
    fn human_lines_escape_control_characters() {
        let mut e = entry();
        e.record.message = "ok\n2026-05-01T12:00:00Z ERROR forged: \u{1b}[31mred".into();
        e.record.target = "t\r".into();
        e.record.fields.clear();
        e.record.fields.insert("k\u{7}".into(), "v\u{1b}".into());
        let line = human_line(&e);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(
            line.contains("t\\r: ok\\n2026-05-01T12:00:00Z ERROR forged: \\u{1b}[31mred"),
            "{line}"
        );
        assert!(line.contains(" k\\u{7}=\"v\\u{1b}\""), "{line}");
    }

    #[test]
    fn ids_and_days() {
        let e = entry();
        assert_eq!(e.id(), "lookout.logs-2-17-1777636800010");
        assert_eq!(dotted_day(e.time().date()), "2026.05.01");
        let mut untimed = entry();
        untimed.record.time = None;
        assert_eq!(rfc3339(untimed.time()), "2026-05-01T12:00:00.01Z");
    }
}
