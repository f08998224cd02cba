//! An embedded Kafka broker: librdkafka's mock cluster, for tests and the local demo.
//!
//! It speaks the Kafka protocol over TCP on 127.0.0.1, so other processes (our services,
//! Python clients, `kcat`) can use it. Its limits, measured on our machines and documented in
//! `docs/ARCHITECTURE.md`:
//! - at most 5 MiB (or 100k batches) kept per partition: a consumer further behind jumps ahead;
//! - no CreateTopics over the admin API: topics are created here, through the mock API;
//! - no ListGroups/DescribeGroups: group lag is shown only for a named group;
//! - every rebalance re-delivers in-flight messages (commits during a rebalance are refused);
//! - nothing is persisted: stopping the broker loses every topic.
#![allow(unsafe_code)] // librdkafka's mock API is reachable only through rdkafka-sys.

use std::{
    ffi::{CStr, CString},
    net::SocketAddr,
    time::Duration,
};

use rdkafka::bindings as sys;
use rdkafka::{
    ClientConfig,
    producer::{BaseProducer, Producer as _},
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::BusError;

/// The id librdkafka gives the single broker of the cluster.
const BROKER_ID: i32 = 1;

/// A running mock Kafka cluster with one broker. Dropping it stops the broker.
pub struct EmbeddedBroker {
    // The mock cluster belongs to this client handle and lives exactly as long as it.
    handle: BaseProducer,
    cluster: *mut sys::rd_kafka_mock_cluster_t,
    bootstrap: String,
}

// The mock cluster runs on its own thread; its API is thread-safe (each call locks or posts
// an operation to that thread).
unsafe impl Send for EmbeddedBroker {}
unsafe impl Sync for EmbeddedBroker {}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker").field("bootstrap", &self.bootstrap).finish()
    }
}

impl EmbeddedBroker {
    /// Starts a one-broker mock cluster on an ephemeral port of 127.0.0.1.
    pub fn start() -> Result<Self, BusError> {
        let handle: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .set("log_level", "3")
            .create()
            .map_err(BusError::Config)?;
        // SAFETY: `handle` is a live client; the returned cluster is owned by it.
        let cluster = unsafe { sys::rd_kafka_handle_mock_cluster(handle.client().native_ptr()) };
        if cluster.is_null() {
            return Err(BusError::Embedded("librdkafka did not create a mock cluster".into()));
        }
        // SAFETY: `cluster` is valid while `handle` lives; the string is copied at once.
        let bootstrap = unsafe { CStr::from_ptr(sys::rd_kafka_mock_cluster_bootstraps(cluster)) }
            .to_string_lossy()
            .into_owned();
        let broker = Self { handle, cluster, bootstrap };
        // Groups form at once instead of after librdkafka's default 3 s delay.
        broker.set_initial_rebalance_delay(Duration::from_millis(100));
        Ok(broker)
    }

    /// The bootstrap address clients connect to.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (idempotent on the mock: an existing topic is kept as it is).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), BusError> {
        let c_name = CString::new(name)
            .map_err(|_| BusError::Embedded(format!("topic name {name:?} contains NUL")))?;
        // SAFETY: the cluster is alive; librdkafka copies the name.
        let err = unsafe {
            sys::rd_kafka_mock_topic_create(self.cluster, c_name.as_ptr(), partitions, 1)
        };
        if err != sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(BusError::Embedded(format!("cannot create topic {name}: {err:?}")));
        }
        debug!(topic = name, partitions, "topic created on the embedded broker");
        Ok(())
    }

    /// Creates every topic of the registry (with `prefix` before each name).
    pub fn create_registry_topics(&self, prefix: &str) -> Result<(), BusError> {
        for spec in lookout_proto::topics::all() {
            self.create_topic(&format!("{prefix}{}", spec.name), spec.partitions)?;
        }
        Ok(())
    }

    /// How long a new consumer group waits for more members before its first assignment.
    pub fn set_initial_rebalance_delay(&self, delay: Duration) {
        let ms = i32::try_from(delay.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the cluster is alive.
        unsafe { sys::rd_kafka_mock_group_initial_rebalance_delay_ms(self.cluster, ms) };
    }

    /// Makes the broker advertise `addr` in its metadata instead of the port it listens on:
    /// after bootstrapping, clients connect to `addr` only. Whatever listens there must forward
    /// to [`EmbeddedBroker::bootstrap_servers`], which stays where it was ([`EmbeddedBroker::listen`]
    /// does this; tests put a fault-injecting proxy there).
    pub fn advertise(&self, addr: SocketAddr) {
        let host = CString::new(addr.ip().to_string()).expect("an IP address has no NUL");
        // SAFETY: the cluster is alive; librdkafka copies the host.
        unsafe {
            sys::rd_kafka_mock_broker_set_host_port(
                self.cluster,
                BROKER_ID,
                host.as_ptr(),
                i32::from(addr.port()),
            );
        }
        debug!(advertised = %addr, "embedded broker advertises another address");
    }

    /// Serves the broker on `addr` (e.g. `127.0.0.1:9092`) instead of its ephemeral port:
    /// connections are forwarded to the mock broker, which now advertises `addr` in its
    /// metadata so clients keep using it. Runs until `shutdown` is cancelled. Returns the
    /// bound address (useful with port 0).
    pub async fn listen(
        &self,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<SocketAddr, BusError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BusError::Listener { addr: addr.to_string(), source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| BusError::Listener { addr: addr.to_string(), source })?;
        let target = self.bootstrap.clone();
        self.advertise(bound);
        info!(listen = %bound, "embedded broker listening");
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = shutdown.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut client, peer)) = accepted else { continue };
                let target = target.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(&target).await else {
                        debug!(%peer, "embedded broker unreachable");
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    }
                });
            }
        });
        Ok(bound)
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        // Give pending mock operations a moment; the cluster is destroyed with `handle`.
        let _ = self.handle.flush(Duration::from_millis(100));
    }
}
