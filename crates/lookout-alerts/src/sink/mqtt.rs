//! MQTT: each alert is published with QoS 1 on `<prefix>/<camera>/<rule>` (default prefix
//! `lookout`), its JSON form as payload, not retained: an event in Home Assistant's terms, one
//! message per episode. The broker's PUBACK is awaited, so an accepted alert is the broker's.
//! Characters MQTT reserves in topic levels (`/`, `+`, `#`) in a camera id become `_`.
//!
//! One connection, opened on first use and again after any failure (a broker that went away,
//! a PUBACK that did not come in time) or after sitting idle longer than the keep-alive.

use std::{fmt, time::Duration};

use lookout_proto::v1::Alert;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
};
use tokio::{sync::Mutex, time::Instant};

use super::{Delivery, Sink};
use crate::SinkError;

/// Where the broker is.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttAddr {
    /// Host name or address.
    pub host: String,
    /// Port (default 1883).
    pub port: u16,
    /// User name and password, when the URL had them.
    pub credentials: Option<(String, String)>,
}

impl MqttAddr {
    /// From `mqtt://[USER[:PASSWORD]@]HOST[:PORT]`.
    pub fn from_url(url: &reqwest::Url) -> Result<Self, String> {
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or("the URL has no host")?;
        if !matches!(url.path(), "" | "/") {
            return Err("the topic prefix is --mqtt-topic-prefix, not part of the URL".into());
        }
        let credentials = (!url.username().is_empty())
            .then(|| (url.username().to_owned(), url.password().unwrap_or("").to_owned()));
        Ok(Self { host: host.to_owned(), port: url.port().unwrap_or(1883), credentials })
    }
}

impl fmt::Display for MqttAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.credentials {
            Some((user, _)) => write!(f, "mqtt://{user}:***@{}:{}", self.host, self.port),
            None => write!(f, "mqtt://{}:{}", self.host, self.port),
        }
    }
}

impl fmt::Debug for MqttAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How the MQTT sink connects and publishes.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// The broker.
    pub addr: MqttAddr,
    /// The MQTT client id.
    pub client_id: String,
    /// First topic level.
    pub topic_prefix: String,
    /// Longest wait for the connection and the PUBACK.
    pub timeout: Duration,
}

/// Keep-alive of the connection; an idle connection older than this is opened again.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// The MQTT sink.
#[derive(Debug)]
pub struct MqttSink {
    config: MqttConfig,
    name: String,
    conn: Mutex<Option<Conn>>,
}

struct Conn {
    client: AsyncClient,
    events: EventLoop,
    used: Instant,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn").field("used", &self.used).finish_non_exhaustive()
    }
}

impl MqttSink {
    /// A sink that connects on first use.
    pub fn new(config: MqttConfig) -> Self {
        Self { name: config.addr.to_string(), config, conn: Mutex::new(None) }
    }

    /// The topic of `alert`.
    pub fn topic(&self, alert: &Alert) -> String {
        topic(&self.config.topic_prefix, &alert.camera_id, &alert.rule)
    }

    fn connect(&self) -> Conn {
        let addr = &self.config.addr;
        let mut options = MqttOptions::new(&self.config.client_id, &addr.host, addr.port);
        options.set_keep_alive(KEEP_ALIVE).set_clean_session(true);
        if let Some((user, password)) = &addr.credentials {
            options.set_credentials(user, password);
        }
        let (client, events) = AsyncClient::new(options, 4);
        Conn { client, events, used: Instant::now() }
    }

    async fn publish(&self, alert: &Alert, body: &[u8]) -> Result<(), SinkError> {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|c| c.used.elapsed() >= KEEP_ALIVE) {
            *slot = None;
        }
        let conn = slot.get_or_insert_with(|| self.connect());
        let result =
            tokio::time::timeout(self.config.timeout, publish(conn, &self.topic(alert), body))
                .await
                .unwrap_or_else(|_| {
                    Err(SinkError::Transient(format!(
                        "{}: no PUBACK within {:?}",
                        self.name, self.config.timeout
                    )))
                });
        match result {
            Ok(()) => conn.used = Instant::now(),
            // Whatever the connection held is dropped with it: the alert is published anew.
            Err(_) => *slot = None,
        }
        result
    }
}

/// Publishes with QoS 1 and drives the connection until the broker acknowledges.
async fn publish(conn: &mut Conn, topic: &str, body: &[u8]) -> Result<(), SinkError> {
    let failed = |e: &dyn fmt::Display| SinkError::Transient(format!("MQTT: {e}"));
    conn.client
        .publish(topic, QoS::AtLeastOnce, false, body.to_vec())
        .await
        .map_err(|e| failed(&e))?;
    let mut ours = None;
    loop {
        match conn.events.poll().await.map_err(|e| failed(&e))? {
            Event::Outgoing(Outgoing::Publish(pkid)) => ours = Some(pkid),
            Event::Incoming(Packet::PubAck(ack)) if Some(ack.pkid) == ours => return Ok(()),
            Event::Incoming(Packet::ConnAck(ack)) if ack.code != ConnectReturnCode::Success => {
                return Err(failed(&format_args!(
                    "the broker refused the connection: {:?}",
                    ack.code
                )));
            }
            _ => {}
        }
    }
}

/// `<prefix>/<camera>/<rule>`, with MQTT's reserved characters in the camera id replaced.
pub fn topic(prefix: &str, camera: &str, rule: &str) -> String {
    let camera: String =
        camera.chars().map(|c| if matches!(c, '/' | '+' | '#') { '_' } else { c }).collect();
    format!("{prefix}/{camera}/{rule}")
}

impl Sink for MqttSink {
    fn kind(&self) -> &'static str {
        "mqtt"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a self, alert: &'a Alert, body: &'a [u8]) -> Delivery<'a> {
        Box::pin(self.publish(alert, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_camera_and_rule() {
        assert_eq!(topic("lookout", "door", "person"), "lookout/door/person");
        assert_eq!(topic("home/lookout", "a/b+#", "r"), "home/lookout/a_b__/r");
    }
}
