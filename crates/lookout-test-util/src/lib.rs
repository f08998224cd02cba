//! Fixtures for Lookout's tests.
//!
//! [`TestBus`] gives each test its own broker (librdkafka's mock cluster, embedded in the test
//! process and reachable over TCP by child processes) and its own topic prefix, or, when
//! `LOOKOUT_BROKERS` is set, a unique prefix on that real Kafka. [`Collector`] reads a topic
//! in the background through the bus's reader, for tests that check what was published.
//! [`FaultProxy`] cuts and stalls TCP connections; [`TestBus::behind_proxy`] puts one in front
//! of the embedded broker.

mod proxy;

pub use proxy::{Fault, FaultProxy};

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use lookout_bus::{Bus, BusConfig, BusMessage, RawMessage, Start, embedded::EmbeddedBroker};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Upper bound for waiting on an event that should come quickly. A test that hits it fails:
/// it is a bound on a hang, never a way to synchronise.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A topic prefix no other test uses.
fn unique_prefix() -> String {
    format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

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
        let prefix = unique_prefix();
        match std::env::var("LOOKOUT_BROKERS").ok().filter(|b| !b.is_empty()) {
            Some(brokers) => Self { embedded: None, brokers, prefix },
            None => {
                let broker = EmbeddedBroker::start().expect("the embedded broker starts");
                let brokers = broker.bootstrap_servers().to_owned();
                Self { embedded: Some(Arc::new(broker)), brokers, prefix }
            }
        }
    }

    /// The embedded broker (whatever `LOOKOUT_BROKERS` says), reachable only through a
    /// [`FaultProxy`]: the broker advertises the proxy's address in its metadata, so clients
    /// that bootstrap there keep every connection on it, and a cut or a stall of the proxy
    /// makes the broker unreachable for all of them.
    pub async fn behind_proxy() -> (Self, FaultProxy) {
        let prefix = unique_prefix();
        let broker = EmbeddedBroker::start().expect("the embedded broker starts");
        let upstream = broker.bootstrap_servers().parse().expect("the broker's address is IP:port");
        let proxy = FaultProxy::start(upstream).await.expect("the proxy starts");
        broker.advertise(proxy.addr());
        let bus =
            Self { embedded: Some(Arc::new(broker)), brokers: proxy.addr().to_string(), prefix };
        (bus, proxy)
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
                    retention: None,
                };
                lookout_bus::admin::ensure_topics(&bus, &[spec]).await.expect("topic created");
            }
        }
    }

    /// Reads `name` (without prefix) from its beginning in the background, waiting for the
    /// topic to exist, until the collector is dropped.
    pub fn collect(&self, name: &str) -> Collector {
        let bus = self.bus("lookout-test-reader");
        let topic = bus.topic_name(name);
        let stop = CancellationToken::new();
        let (count, _) = watch::channel(0usize);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let collector =
            Collector { messages: messages.clone(), count: count.clone(), stop: stop.clone() };
        tokio::spawn(async move {
            let reader =
                bus.reader(&topic).start(Start::Beginning).wait_for_topic().open(&stop).await;
            let Ok(Some(reader)) = reader else { return };
            loop {
                let received = tokio::select! {
                    () = stop.cancelled() => return,
                    r = reader.recv() => r,
                };
                if let Ok(m) = received {
                    let n = {
                        let mut all = messages.lock().expect("not poisoned");
                        all.push(m);
                        all.len()
                    };
                    count.send_replace(n);
                }
            }
        });
        collector
    }

    /// Creates every registry topic (and the dead-letter topic) in this namespace.
    pub async fn create_registry_topics(&self) {
        for spec in lookout_proto::topics::all() {
            self.create_topic(spec.name, spec.partitions).await;
        }
    }
}

/// The messages of one topic, read in the background from its beginning; see
/// [`TestBus::collect`]. Stops reading when dropped.
#[derive(Debug)]
pub struct Collector {
    messages: Arc<Mutex<Vec<RawMessage>>>,
    count: watch::Sender<usize>,
    stop: CancellationToken,
}

impl Collector {
    /// Every message read so far, in arrival order.
    pub fn messages(&self) -> Vec<RawMessage> {
        self.messages.lock().expect("not poisoned").clone()
    }

    /// Every message read so far, decoded as `M` (those that do not decode are left out).
    pub fn decoded<M: BusMessage>(&self) -> Vec<M> {
        self.messages().iter().filter_map(|m| m.decode::<M>().ok()).map(|i| i.message).collect()
    }

    /// Waits until at least `n` messages were read, and returns them all. Fails the test
    /// after [`EVENT_TIMEOUT`].
    pub async fn wait_for(&self, n: usize) -> Vec<RawMessage> {
        let mut rx = self.count.subscribe();
        let waited = tokio::time::timeout(EVENT_TIMEOUT, rx.wait_for(|c| *c >= n)).await;
        assert!(
            waited.is_ok(),
            "timed out waiting for {n} messages; got {}",
            self.messages().len()
        );
        self.messages()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
