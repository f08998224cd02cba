//! The JSON form of an alert, which every sink delivers.
//!
//! ```json
//! {"event_type":"person-at-door","rule":"person-at-door","camera":"door","label":"person","score":0.91,
//!  "episode":"person-at-door/door/1042","source":"predictions","model":"yolo",
//!  "first_sequence":1042,"first_time":"2026-05-01T10:00:01.2Z",
//!  "last_sequence":1045,"last_time":"2026-05-01T10:00:01.5Z",
//!  "box":{"x":0.41,"y":0.35,"width":0.12,"height":0.5},
//!  "alert_time":"2026-05-01T10:00:01.53Z","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}
//! ```
//!
//! `event_type` repeats the rule for Home Assistant (an MQTT `event` entity takes the event's
//! type from it). Times are RFC 3339 in UTC; `box` is in normalised frame coordinates and `null` for a
//! classifier's label; `episode` is the same for every copy of one episode's alert, so a
//! receiver can drop the duplicates that at-least-once delivery may bring.

use lookout_proto::v1::{Alert, AlertSource};
use serde::Serialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// An alert as JSON.
#[derive(Debug, Serialize)]
pub struct AlertJson<'a> {
    /// The rule's name again, under the key Home Assistant's MQTT `event` entities read.
    event_type: &'a str,
    rule: &'a str,
    camera: &'a str,
    label: &'a str,
    score: f32,
    episode: &'a str,
    source: &'static str,
    model: &'a str,
    first_sequence: u64,
    first_time: Option<String>,
    last_sequence: u64,
    last_time: Option<String>,
    #[serde(rename = "box")]
    bbox: Option<BoxJson>,
    alert_time: Option<String>,
    trace_id: &'a str,
}

#[derive(Debug, Serialize)]
struct BoxJson {
    x: f32,
    y: f32,
    width: f32,
    height: f32,
}

impl<'a> AlertJson<'a> {
    /// The JSON form of `alert`.
    pub fn new(alert: &'a Alert) -> Self {
        let source = match AlertSource::try_from(alert.source) {
            Ok(AlertSource::Changes) => "changes",
            Ok(AlertSource::Predictions) => "predictions",
            _ => "unspecified",
        };
        Self {
            event_type: &alert.rule,
            rule: &alert.rule,
            camera: &alert.camera_id,
            label: &alert.label,
            score: alert.score,
            episode: &alert.episode_id,
            source,
            model: alert.model.as_ref().map_or("", |m| m.name.as_str()),
            first_sequence: alert.first_sequence,
            first_time: alert.first_time.as_ref().and_then(rfc3339),
            last_sequence: alert.last_sequence,
            last_time: alert.last_time.as_ref().and_then(rfc3339),
            bbox: alert.r#box.map(|b| BoxJson { x: b.x, y: b.y, width: b.width, height: b.height }),
            alert_time: alert.alert_time.as_ref().and_then(rfc3339),
            trace_id: &alert.trace_id,
        }
    }

    /// The encoded body.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an alert always serialises")
    }
}

fn rfc3339(t: &lookout_proto::Timestamp) -> Option<String> {
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?.format(&Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use lookout_proto::v1::{BoundingBox, ModelRef};

    use super::*;

    #[test]
    fn alerts_render_with_times_and_box() {
        let alert = Alert {
            rule: "r".into(),
            camera_id: "door".into(),
            label: "person".into(),
            score: 0.5,
            first_sequence: 7,
            first_time: Some(lookout_proto::timestamp_from_millis(1_700_000_000_250)),
            r#box: Some(BoundingBox { x: 0.25, y: 0.5, width: 0.25, height: 0.5 }),
            episode_id: "r/door/7".into(),
            model: Some(ModelRef { name: "yolo".into(), ..Default::default() }),
            source: AlertSource::Predictions as i32,
            ..Default::default()
        };
        let v: serde_json::Value =
            serde_json::from_slice(&AlertJson::new(&alert).to_bytes()).unwrap();
        assert_eq!(v["first_time"], "2023-11-14T22:13:20.25Z");
        assert_eq!(v["box"]["width"], 0.25);
        assert_eq!(v["episode"], "r/door/7");
        assert_eq!(v["event_type"], "r");
        assert_eq!(v["source"], "predictions");
        assert_eq!(v["model"], "yolo");
        assert!(v["last_time"].is_null());
    }
}
