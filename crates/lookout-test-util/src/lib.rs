//! Fixtures for Lookout's tests.
//!
//! [`TestBus`] gives each test its own broker (librdkafka's mock cluster, embedded in the test
//! process and reachable over TCP by child processes) and its own topic prefix, or, when
//! `LOOKOUT_BROKERS` is set, a unique prefix on that real Kafka.

use std::{sync::Arc, time::Duration};

use lookout_bus::{Bus, BusConfig, embedded::EmbeddedBroker};

/// Upper bound for waiting on an event that should come quickly. A test that hits it fails:
/// it is a bound on a hang, never a way to synchronise.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A broker and topic namespace for one test.
#[derive(Debug, Clone)]
pub struct TestBus {
    embedded: Option<Arc<EmbeddedBroker>>,
    brokers: String,
    prefix: String,
}

impl TestBus {
    /// The embedded broker, or the real brokers named by `LOOKOUT_BROKERS`.
    pub fn start() -> Self {
        let prefix = format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        match std::env::var("LOOKOUT_BROKERS").ok().filter(|b| !b.is_empty()) {
            Some(brokers) => Self { embedded: None, brokers, prefix },
            None => {
                let broker = EmbeddedBroker::start().expect("the embedded broker starts");
                let brokers = broker.bootstrap_servers().to_owned();
                Self { embedded: Some(Arc::new(broker)), brokers, prefix }
            }
        }
    }

    /// Bootstrap servers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// This test's topic prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether this is the embedded broker.
    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// Group timing that makes rebalances quick (real Kafka's floor is 6 s).
    pub fn fast_group_opts(&self) -> Vec<(&'static str, &'static str)> {
        if self.is_embedded() {
            vec![("session.timeout.ms", "3000"), ("heartbeat.interval.ms", "300")]
        } else {
            vec![("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "500")]
        }
    }

    /// A bus configuration for `service` in this test's namespace.
    pub fn config(&self, service: &str) -> BusConfig {
        let mut c = BusConfig::new(&self.brokers, service).with_topic_prefix(&self.prefix);
        for (k, v) in self.fast_group_opts() {
            c = c.with_opt(k, v);
        }
        c
    }

    /// A bus for `service` in this test's namespace.
    pub fn bus(&self, service: &str) -> Bus {
        Bus::new(self.config(service)).expect("the bus client is created")
    }

    /// Arguments that point a Lookout binary at this test's broker and namespace.
    pub fn child_args(&self) -> Vec<String> {
        let mut args = vec![
            "--brokers".to_owned(),
            self.brokers.clone(),
            "--topic-prefix".to_owned(),
            self.prefix.clone(),
        ];
        for (k, v) in self.fast_group_opts() {
            args.push("--kafka-opt".to_owned());
            args.push(format!("{k}={v}"));
        }
        args
    }

    /// Creates a topic (name without prefix) with `partitions` partitions.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let full = format!("{}{name}", self.prefix);
        match &self.embedded {
            Some(b) => b.create_topic(&full, partitions).expect("topic created"),
            None => {
                let bus = self.bus("lookout-test");
                let spec = lookout_proto::TopicSpec {
                    name: Box::leak(name.to_owned().into_boxed_str()),
                    partitions,
                    message_type: String::new(),
                    key: "",
                };
                lookout_bus::admin::ensure_topics(&bus, &[spec]).await.expect("topic created");
            }
        }
    }

    /// Creates every registry topic (and the dead-letter topic) in this namespace.
    pub async fn create_registry_topics(&self) {
        for spec in lookout_proto::topics::all() {
            self.create_topic(spec.name, spec.partitions).await;
        }
    }
}
