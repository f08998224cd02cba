//! Topic administration: create the registry's topics, describe topics and consumer groups.

use std::{collections::BTreeMap, time::Duration};

use lookout_proto::TopicSpec;
use rdkafka::{
    Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::RDKafkaErrorCode,
};
use tracing::{info, warn};

use crate::{Bus, BusError};

const TIMEOUT: Duration = Duration::from_secs(10);

/// One partition's offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition id.
    pub id: i32,
    /// Oldest retained offset.
    pub low: i64,
    /// Offset the next message will get.
    pub high: i64,
}

/// A topic and its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Full name.
    pub name: String,
    /// Partitions with offsets.
    pub partitions: Vec<PartitionInfo>,
}

/// A consumer group's position on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    /// Partition id.
    pub partition: i32,
    /// Committed offset, `None` when the group has committed nothing there.
    pub committed: Option<i64>,
    /// The partition's end offset.
    pub high: i64,
    /// Messages not yet committed by the group.
    pub lag: i64,
}

/// A consumer group as the brokers list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// Group id.
    pub name: String,
    /// State, e.g. `Stable`.
    pub state: String,
    /// Number of members.
    pub members: usize,
}

fn kafka(topic: &str) -> impl FnOnce(rdkafka::error::KafkaError) -> BusError + '_ {
    move |source| BusError::Kafka { topic: topic.to_owned(), source }
}

fn probe(bus: &Bus, group: &str) -> Result<BaseConsumer, BusError> {
    bus.client_config(&[
        ("group.id", group),
        ("enable.auto.commit", "false"),
        ("allow.auto.create.topics", "false"),
    ])
    .create()
    .map_err(BusError::Config)
}

/// The partition count of a topic (blocking).
pub(crate) fn partition_count_blocking(bus: &Bus, topic: &str) -> Result<i32, BusError> {
    Ok(partitions_blocking(bus, topic)?.len() as i32)
}

/// The partition ids of `topic` (its full name, prefix included), from the brokers' metadata;
/// [`BusError::UnknownTopic`] when it does not exist (asking does not create it, whatever the
/// brokers' `auto.create.topics.enable`). Blocking: call it off the async threads.
pub fn partitions_blocking(bus: &Bus, topic: &str) -> Result<Vec<i32>, BusError> {
    let metadata =
        probe(bus, "lookout-admin")?.fetch_metadata(Some(topic), TIMEOUT).map_err(kafka(topic))?;
    let ids: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if ids.is_empty() {
        return Err(BusError::UnknownTopic {
            topic: topic.to_owned(),
            brokers: bus.config().brokers.clone(),
            hint: " (create the topics with `lookout topics --create`, or start `lookout broker`)",
        });
    }
    Ok(ids)
}

/// Creates the topics of `specs` (names get the bus's prefix) that do not exist yet, with
/// their configured partition counts and retention (topic configs `retention.ms`, `segment.ms`,
/// `retention.bytes`). Existing topics are left alone, so this is idempotent; [`topic_configs`]
/// tells whether their settings differ.
pub async fn ensure_topics(bus: &Bus, specs: &[TopicSpec]) -> Result<Vec<String>, BusError> {
    let existing = describe(bus).await?;
    let mut missing = Vec::new();
    for spec in specs {
        let name = bus.topic_name(spec.name);
        match existing.iter().find(|t| t.name == name) {
            Some(t) if (t.partitions.len() as i32) < spec.partitions => warn!(
                topic = %name,
                partitions = t.partitions.len(),
                wanted = spec.partitions,
                "topic has fewer partitions than configured",
            ),
            Some(_) => {}
            None => missing.push((name, spec.partitions, spec.retention.map(|r| r.configs()))),
        }
    }
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let admin: AdminClient<DefaultClientContext> =
        bus.client_config(&[]).create().map_err(BusError::Config)?;
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|(name, partitions, configs)| {
            let topic = NewTopic::new(name, *partitions, TopicReplication::Fixed(-1));
            configs.iter().flatten().fold(topic, |t, (k, v)| t.set(k, v))
        })
        .collect();
    let options =
        AdminOptions::new().operation_timeout(Some(TIMEOUT)).request_timeout(Some(TIMEOUT));
    let results = admin.create_topics(&new, &options).await.map_err(|source| BusError::Kafka {
        topic: missing.iter().map(|(n, ..)| n.as_str()).collect::<Vec<_>>().join(","),
        source,
    })?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => {
                info!(topic = %name, "topic created");
                created.push(name);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(BusError::Kafka {
                    topic: name,
                    source: rdkafka::error::KafkaError::AdminOp(code),
                });
            }
        }
    }
    Ok(created)
}

/// The configs of the topics `names` (full names) as the brokers report them (DescribeConfigs),
/// topic by topic; a topic that does not exist is left out. The embedded broker does not
/// support DescribeConfigs: that is an error.
pub async fn topic_configs(
    bus: &Bus,
    names: &[String],
) -> Result<BTreeMap<String, BTreeMap<String, String>>, BusError> {
    let admin: AdminClient<DefaultClientContext> =
        bus.client_config(&[]).create().map_err(BusError::Config)?;
    let resources: Vec<ResourceSpecifier<'_>> =
        names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
    let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let results = admin
        .describe_configs(&resources, &options)
        .await
        .map_err(|source| BusError::Kafka { topic: names.join(","), source })?;
    let mut out = BTreeMap::new();
    for (name, result) in names.iter().zip(results) {
        match result {
            Ok(resource) => {
                let entries =
                    resource.entries.into_iter().filter_map(|e| Some((e.name, e.value?))).collect();
                out.insert(name.clone(), entries);
            }
            Err(RDKafkaErrorCode::UnknownTopicOrPartition) => {}
            Err(code) => {
                return Err(BusError::Kafka {
                    topic: name.clone(),
                    source: rdkafka::error::KafkaError::AdminOp(code),
                });
            }
        }
    }
    Ok(out)
}

/// Every topic on the brokers with its partitions' low and high offsets.
pub async fn describe(bus: &Bus) -> Result<Vec<TopicInfo>, BusError> {
    let bus = bus.clone();
    tokio::task::spawn_blocking(move || describe_blocking(&bus))
        .await
        .map_err(|e| BusError::Embedded(format!("metadata task failed: {e}")))?
}

fn describe_blocking(bus: &Bus) -> Result<Vec<TopicInfo>, BusError> {
    let probe = probe(bus, "lookout-admin")?;
    let metadata = probe.fetch_metadata(None, TIMEOUT).map_err(kafka("*"))?;
    let mut topics = Vec::new();
    for t in metadata.topics() {
        if t.name().starts_with("__") {
            continue;
        }
        let mut partitions = Vec::new();
        for p in t.partitions() {
            let (low, high) =
                probe.fetch_watermarks(t.name(), p.id(), TIMEOUT).map_err(kafka(t.name()))?;
            partitions.push(PartitionInfo { id: p.id(), low, high });
        }
        partitions.sort_by_key(|p| p.id);
        topics.push(TopicInfo { name: t.name().to_owned(), partitions });
    }
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(topics)
}

/// Lists consumer groups. Real Kafka supports this; librdkafka's mock cluster does not
/// (it answers `UNSUPPORTED_FEATURE`), which is returned as an error.
pub async fn groups(bus: &Bus) -> Result<Vec<GroupInfo>, BusError> {
    let bus = bus.clone();
    tokio::task::spawn_blocking(move || {
        let probe = probe(&bus, "lookout-admin")?;
        let list = probe.fetch_group_list(None, TIMEOUT).map_err(kafka("*"))?;
        Ok(list
            .groups()
            .iter()
            .map(|g| GroupInfo {
                name: g.name().to_owned(),
                state: g.state().to_owned(),
                members: g.members().len(),
            })
            .collect())
    })
    .await
    .map_err(|e| BusError::Embedded(format!("metadata task failed: {e}")))?
}

/// A group's committed offsets and lag on each partition of a topic. Works on the mock
/// cluster too (it answers offset fetches), given the group's name.
pub async fn group_lag(
    bus: &Bus,
    group: &str,
    topic: &TopicInfo,
) -> Result<Vec<GroupLag>, BusError> {
    let bus = bus.clone();
    let group = group.to_owned();
    let topic = topic.clone();
    tokio::task::spawn_blocking(move || {
        let probe = probe(&bus, &group)?;
        let mut tpl = TopicPartitionList::new();
        for p in &topic.partitions {
            tpl.add_partition(&topic.name, p.id);
        }
        let committed = probe.committed_offsets(tpl, TIMEOUT).map_err(kafka(&topic.name))?;
        Ok(topic
            .partitions
            .iter()
            .map(|p| {
                let c =
                    committed.find_partition(&topic.name, p.id).and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                GroupLag {
                    partition: p.id,
                    committed: c,
                    high: p.high,
                    lag: p.high - c.unwrap_or(p.low),
                }
            })
            .collect())
    })
    .await
    .map_err(|e| BusError::Embedded(format!("metadata task failed: {e}")))?
}
