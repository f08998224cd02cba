//! Where alerts go: [`mqtt`], [`webhook`] and [`stdout`](mod@stdout), each behind [`Sink`].
//!
//! A sink takes one alert at a time and answers only once the receiver has it (an MQTT
//! PUBACK, an HTTP 2xx, a flushed line). A transient failure is retried by the bus with a
//! backoff, the alert's partition paused meanwhile; nothing is skipped.

pub mod mqtt;
pub mod stdout;
pub mod webhook;

use std::{fmt, pin::Pin, str::FromStr};

use lookout_proto::v1::Alert;

use crate::{AlertsError, SinkError};

/// What a sink's delivery returns.
pub type Delivery<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// A receiver of alerts.
pub trait Sink: fmt::Debug + Send + Sync {
    /// The sink's kind, the `sink` metric label: `mqtt`, `webhook`, `stdout`.
    fn kind(&self) -> &'static str;

    /// The sink for logs, without credentials.
    fn name(&self) -> &str;

    /// Delivers `alert` (its JSON form is `body`); returns once the receiver has it.
    fn deliver<'a>(&'a self, alert: &'a Alert, body: &'a [u8]) -> Delivery<'a>;
}

/// A sink as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    /// `stdout`: a JSON line per alert.
    Stdout,
    /// `mqtt://[USER:PASSWORD@]HOST[:PORT]`.
    Mqtt(mqtt::MqttAddr),
    /// `http(s)://…`: a webhook.
    Webhook(reqwest::Url),
}

impl FromStr for SinkSpec {
    type Err = AlertsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| AlertsError::BadSink { spec: s.to_owned(), reason: reason.into() };
        if s == "stdout" {
            return Ok(Self::Stdout);
        }
        let url = reqwest::Url::parse(s).map_err(|e| {
            bad(&format!("{e}: expected stdout, mqtt://HOST:PORT or http(s)://URL"))
        })?;
        match url.scheme() {
            "mqtt" => Ok(Self::Mqtt(mqtt::MqttAddr::from_url(&url).map_err(|r| bad(&r))?)),
            "http" | "https" => Ok(Self::Webhook(url)),
            "mqtts" => Err(bad(
                "MQTT over TLS is not supported; put a TLS-terminating proxy in front, or use mqtt://",
            )),
            _ => Err(bad("expected stdout, mqtt://HOST:PORT or http(s)://URL")),
        }
    }
}

impl fmt::Display for SinkSpec {
    /// Never shows credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdout => f.write_str("stdout"),
            Self::Mqtt(addr) => write!(f, "{addr}"),
            Self::Webhook(url) => f.write_str(&lookout_service::redact::url(url.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_parse_and_hide_credentials() {
        assert_eq!("stdout".parse::<SinkSpec>().unwrap(), SinkSpec::Stdout);
        let mqtt: SinkSpec = "mqtt://ha:secret@broker.local".parse().unwrap();
        let SinkSpec::Mqtt(addr) = &mqtt else { panic!("{mqtt:?}") };
        assert_eq!((addr.host.as_str(), addr.port), ("broker.local", 1883));
        assert_eq!(addr.credentials, Some(("ha".into(), "secret".into())));
        assert!(!mqtt.to_string().contains("secret"), "{mqtt}");
        let hook: SinkSpec = "https://user:pw@example.com/hook".parse().unwrap();
        assert!(matches!(hook, SinkSpec::Webhook(_)));
        assert!(!hook.to_string().contains("pw"), "{hook}");
        assert!("mqtts://x".parse::<SinkSpec>().is_err());
        assert!("ftp://x".parse::<SinkSpec>().is_err());
        assert!("stdot".parse::<SinkSpec>().is_err());
    }
}
