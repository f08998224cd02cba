use std::{fmt, str::FromStr};

use rdkafka::ClientConfig;

use crate::BusError;

/// Producer compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// No compression: best for JPEG frames, which do not compress.
    None,
    /// LZ4: cheap, good for logs and predictions.
    #[default]
    Lz4,
    /// Zstandard: smallest, costs more CPU.
    Zstd,
}

impl Compression {
    fn as_kafka(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

impl FromStr for Compression {
    type Err = BusError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "lz4" => Ok(Self::Lz4),
            "zstd" => Ok(Self::Zstd),
            _ => Err(BusError::BadCompression(s.to_owned())),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_kafka())
    }
}

/// A librdkafka property given as `key=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaOpt {
    /// Property name, e.g. `security.protocol`.
    pub key: String,
    /// Property value.
    pub value: String,
}

impl FromStr for KafkaOpt {
    type Err = BusError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok(Self { key: k.trim().to_owned(), value: v.trim().to_owned() })
            }
            _ => Err(BusError::BadOption(s.to_owned())),
        }
    }
}

/// How a service connects to Kafka and names itself on the bus.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Extra librdkafka properties (SASL, TLS, timeouts…); applied last, so they win.
    pub kafka_opts: Vec<KafkaOpt>,
    /// Prepended to every topic name, e.g. `staging.` (empty by default).
    pub topic_prefix: String,
    /// Producing service, in the Kafka client id (`service@instance`).
    pub service: String,
    /// Producing replica, in the Kafka client id.
    pub instance: String,
    /// Producer compression.
    pub compression: Compression,
}

impl BusConfig {
    /// A configuration with defaults for everything but the brokers and the service name.
    pub fn new(brokers: impl Into<String>, service: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            kafka_opts: Vec::new(),
            topic_prefix: String::new(),
            service: service.into(),
            instance: default_instance(),
            compression: Compression::default(),
        }
    }

    /// Adds a librdkafka property.
    pub fn with_opt(mut self, key: &str, value: &str) -> Self {
        self.kafka_opts.push(KafkaOpt { key: key.to_owned(), value: value.to_owned() });
        self
    }

    /// Sets the topic prefix.
    pub fn with_topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = prefix.into();
        self
    }

    /// A client configuration with the brokers and the user's properties.
    pub(crate) fn client_config(&self, base: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", format!("{}@{}", self.service, self.instance));
        for (k, v) in base {
            c.set(*k, *v);
        }
        for opt in &self.kafka_opts {
            c.set(&opt.key, &opt.value);
        }
        c
    }

    /// The producer configuration.
    pub(crate) fn producer_config(&self) -> ClientConfig {
        self.client_config(&[
            ("enable.idempotence", "true"),
            ("compression.type", self.compression.as_kafka()),
            ("linger.ms", "5"),
            ("message.timeout.ms", "30000"),
        ])
    }

    /// The value of a property, as the user set it or else as given.
    pub(crate) fn opt_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.kafka_opts.iter().rev().find(|o| o.key == key).map_or(default, |o| &o.value)
    }
}

/// `hostname-pid`: unique per process on a machine, readable in logs.
pub fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_opts_parse() {
        let o: KafkaOpt = "security.protocol=SASL_SSL".parse().unwrap();
        assert_eq!(o.key, "security.protocol");
        assert_eq!(o.value, "SASL_SSL");
        let o: KafkaOpt = "sasl.password=a=b".parse().unwrap();
        assert_eq!(o.value, "a=b", "only the first = splits");
        assert!("novalue".parse::<KafkaOpt>().is_err());
        assert!("=x".parse::<KafkaOpt>().is_err());
    }

    #[test]
    fn user_options_override_defaults() {
        let c = BusConfig::new("b:9092", "svc").with_opt("enable.idempotence", "false");
        assert_eq!(c.producer_config().get("enable.idempotence"), Some("false"));
        assert_eq!(c.producer_config().get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(c.opt_or("message.max.bytes", "1000000"), "1000000");
    }

    #[test]
    fn compression_names() {
        assert_eq!("ZSTD".parse::<Compression>().unwrap(), Compression::Zstd);
        assert!("gzip2".parse::<Compression>().is_err());
    }
}
