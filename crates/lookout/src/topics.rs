//! `lookout topics`: the registry's topics on the brokers, their offsets and consumer-group
//! lag; `--create` creates the missing ones with their partitions and retention, `--check`
//! reports topics whose settings differ from what Lookout wants.

use std::{collections::BTreeMap, fmt, io::Write as _, str::FromStr, time::Duration};

use anyhow::{Context as _, bail};
use lookout_bus::{Bus, admin};
use lookout_proto::{Retention, TopicSpec};
use lookout_service::CommonArgs;

/// Consumer groups of Lookout's services, shown when the brokers cannot list groups.
const SERVICE_GROUPS: &[&str] =
    &["predictor", "recorder", "logship", "alerts", "alerts-changes", "alerts-sinks"];

#[derive(Debug, clap::Args)]
pub(crate) struct TopicsArgs {
    /// Show the lag of this consumer group (repeatable). By default the groups the brokers
    /// list, or Lookout's service groups where listing is not supported (the embedded broker).
    #[arg(long = "group")]
    groups: Vec<String>,

    /// Create the registry's topics that are missing, with their partitions and retention
    /// (real Kafka; `lookout broker` creates them itself). Existing topics are left alone.
    #[arg(long)]
    create: bool,

    /// Compare the registry's topics on the brokers with what Lookout wants (partitions,
    /// retention.ms, segment.ms, retention.bytes); exit 1 when one is missing or differs.
    /// The embedded broker cannot describe topic configs.
    #[arg(long)]
    check: bool,

    /// How long a topic keeps messages, TOPIC=DURATION (repeatable; in the environment
    /// comma-separated), e.g. frames=2h. Defaults: frames 1h, logs 2d, predictions 7d,
    /// dlq 7d, changes 30d, alerts 30d.
    #[arg(
        long = "retention",
        env = "LOOKOUT_TOPICS_RETENTION",
        value_delimiter = ',',
        value_name = "TOPIC=DURATION"
    )]
    retention: Vec<Setting<Millis>>,

    /// How long a topic's segment stays open before it is closed (and can be deleted),
    /// TOPIC=DURATION, e.g. frames=5m. Defaults: frames 10m, logs 1h, the others 1d.
    #[arg(
        long = "segment",
        env = "LOOKOUT_TOPICS_SEGMENT",
        value_delimiter = ',',
        value_name = "TOPIC=DURATION"
    )]
    segment: Vec<Setting<Millis>>,

    /// Most bytes a topic keeps per partition, TOPIC=SIZE (`512MiB`, `2GiB`, or `none`), e.g.
    /// frames=4GiB. Defaults: predictions 2GiB, the others 1GiB.
    #[arg(
        long = "retention-bytes",
        env = "LOOKOUT_TOPICS_RETENTION_BYTES",
        value_delimiter = ',',
        value_name = "TOPIC=SIZE"
    )]
    retention_bytes: Vec<Setting<Size>>,

    #[command(flatten)]
    common: CommonArgs,
}

/// A value for one registry topic: `frames=2h` or `lookout.frames=2h`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Setting<T> {
    /// The topic's registry name (`lookout.frames`).
    topic: &'static str,
    value: T,
}

impl<T: FromStr<Err = String>> FromStr for Setting<T> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (topic, value) =
            s.split_once('=').ok_or_else(|| format!("{s:?}: expected TOPIC=VALUE"))?;
        let topic = topic.trim();
        let spec = lookout_proto::topics::all()
            .into_iter()
            .find(|t| t.name == topic || t.name.strip_prefix("lookout.") == Some(topic))
            .ok_or_else(|| {
                format!("unknown topic {topic:?}: frames, predictions, changes, logs or dlq")
            })?;
        Ok(Self { topic: spec.name, value: value.trim().parse()? })
    }
}

/// A duration in whole milliseconds (`2h`, `30m`, `7d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Millis(i64);

impl FromStr for Millis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d: Duration = lookout_service::parse_duration(s)?;
        if d.is_zero() {
            return Err(format!("{s:?}: a topic keeps its messages for more than 0"));
        }
        Ok(Self(i64::try_from(d.as_millis()).map_err(|_| format!("{s:?} is too long"))?))
    }
}

/// Bytes per partition (`512MiB`, `2GiB`, `1000000`), or -1 for `none` (no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size(i64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("none") || s == "-1" {
            return Ok(Self(-1));
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: i64 = num.parse().map_err(|_| format!("{s:?} is not a size like 512MiB or 2GiB"))?;
        let scale: i64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            u => return Err(format!("unknown unit {u:?} in {s:?}: use B, KiB, MiB, GiB or TiB")),
        };
        match n.checked_mul(scale) {
            Some(bytes) if bytes > 0 => Ok(Self(bytes)),
            _ => Err(format!("{s:?}: a size above 0, or none")),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The registry's topics with the retention the options ask for.
fn wanted(args: &TopicsArgs) -> Vec<TopicSpec> {
    let mut specs = lookout_proto::topics::all();
    for spec in &mut specs {
        let Some(r) = spec.retention.as_mut() else { continue };
        for s in args.retention.iter().filter(|s| s.topic == spec.name) {
            r.ms = s.value.0;
        }
        for s in args.segment.iter().filter(|s| s.topic == spec.name) {
            r.segment_ms = s.value.0;
        }
        for s in args.retention_bytes.iter().filter(|s| s.topic == spec.name) {
            r.bytes = s.value.0;
        }
    }
    specs
}

/// One way a topic on the brokers differs from what Lookout wants.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Difference {
    topic: String,
    setting: &'static str,
    wanted: String,
    actual: String,
}

/// How each of `specs` (full names in `names`) differs on the brokers: missing, fewer
/// partitions, or other retention configs. `partitions` and `configs` are the brokers' answers,
/// by full name.
fn differences(
    specs: &[TopicSpec],
    names: &[String],
    partitions: &BTreeMap<String, usize>,
    configs: &BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<Difference> {
    let mut out = Vec::new();
    for (spec, name) in specs.iter().zip(names) {
        let diff = |setting, wanted: String, actual: String| Difference {
            topic: name.clone(),
            setting,
            wanted,
            actual,
        };
        let Some(&count) = partitions.get(name) else {
            out.push(diff("topic", "exists".into(), "missing".into()));
            continue;
        };
        if (count as i32) < spec.partitions {
            out.push(diff("partitions", spec.partitions.to_string(), count.to_string()));
        }
        let Some(retention) = spec.retention else { continue };
        let actual = configs.get(name);
        for (key, value) in Retention::configs(&retention) {
            let have = actual.and_then(|c| c.get(key)).cloned().unwrap_or_else(|| "-".into());
            if have != value {
                out.push(diff(key, value, have));
            }
        }
    }
    out
}

pub(crate) async fn run(args: TopicsArgs) -> anyhow::Result<()> {
    let bus = Bus::new(args.common.bus_config("lookout-cli"))?;
    let specs = wanted(&args);
    if args.create {
        let created = admin::ensure_topics(&bus, &specs).await.context("cannot create topics")?;
        for t in &created {
            println!("created {t}");
        }
        if created.len() < specs.len() {
            println!(
                "topics that existed keep their settings; `lookout topics --check` compares them"
            );
        }
    }
    let topics = admin::describe(&bus)
        .await
        .with_context(|| format!("cannot reach the brokers at {}", args.common.brokers))?;
    if args.check {
        return check(&bus, &specs, &topics).await;
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<40} {:>10} {:>12}  partitions (low..high)",
        "TOPIC", "PARTITIONS", "MESSAGES"
    )?;
    for t in &topics {
        let messages: i64 = t.partitions.iter().map(|p| p.high - p.low).sum();
        let ranges: Vec<String> =
            t.partitions.iter().map(|p| format!("{}:{}..{}", p.id, p.low, p.high)).collect();
        writeln!(
            out,
            "{:<40} {:>10} {:>12}  {}",
            t.name,
            t.partitions.len(),
            messages,
            ranges.join(" ")
        )?;
    }

    let groups: Vec<String> = if !args.groups.is_empty() {
        args.groups.clone()
    } else {
        match admin::groups(&bus).await {
            Ok(list) => list.into_iter().map(|g| g.name).collect(),
            Err(e) => {
                writeln!(
                    out,
                    "\nconsumer groups: the brokers cannot list them ({e}); the embedded broker \
                     does not support ListGroups. Showing Lookout's service groups; name others with --group."
                )?;
                SERVICE_GROUPS.iter().map(|g| (*g).to_owned()).collect()
            }
        }
    };
    if groups.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\n{:<20} {:<40} {:>10}  per partition (committed/high)",
        "GROUP", "TOPIC", "LAG"
    )?;
    for g in &groups {
        for t in &topics {
            let lag = admin::group_lag(&bus, g, t).await?;
            if lag.iter().all(|l| l.committed.is_none()) {
                continue;
            }
            let total: i64 = lag.iter().map(|l| l.lag).sum();
            let parts: Vec<String> = lag
                .iter()
                .map(|l| {
                    let c = l.committed.map_or("-".to_owned(), |c| c.to_string());
                    format!("{}:{c}/{}", l.partition, l.high)
                })
                .collect();
            writeln!(out, "{:<20} {:<40} {:>10}  {}", g, t.name, total, parts.join(" "))?;
        }
    }
    Ok(())
}

/// `--check`: prints how the registry's topics differ from what Lookout wants; an error when
/// they do.
async fn check(bus: &Bus, specs: &[TopicSpec], topics: &[admin::TopicInfo]) -> anyhow::Result<()> {
    let names: Vec<String> = specs.iter().map(|s| bus.topic_name(s.name)).collect();
    let partitions: BTreeMap<String, usize> =
        topics.iter().map(|t| (t.name.clone(), t.partitions.len())).collect();
    let present: Vec<String> =
        names.iter().filter(|n| partitions.contains_key(*n)).cloned().collect();
    let configs = admin::topic_configs(bus, &present).await.context(
        "cannot read the topics' configs (DescribeConfigs, which the embedded broker does not \
         support)",
    )?;
    let diffs = differences(specs, &names, &partitions, &configs);
    let mut out = std::io::stdout().lock();
    if diffs.is_empty() {
        writeln!(out, "{} topics have the partitions and retention Lookout wants", specs.len())?;
        return Ok(());
    }
    writeln!(out, "{:<40} {:<16} {:>14} {:>14}", "TOPIC", "SETTING", "WANTED", "ACTUAL")?;
    for d in &diffs {
        writeln!(out, "{:<40} {:<16} {:>14} {:>14}", d.topic, d.setting, d.wanted, d.actual)?;
    }
    bail!(
        "{} settings differ: create missing topics with --create; change others with \
         kafka-configs.sh --alter (or your operator's topic resources)",
        diffs.len()
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        topics: TopicsArgs,
    }

    fn args(argv: &[&str]) -> Result<TopicsArgs, clap::Error> {
        Cli::try_parse_from([&["topics"], argv].concat()).map(|c| c.topics)
    }

    #[test]
    fn settings_name_a_registry_topic() {
        let a = args(&["--retention", "frames=2h", "--retention-bytes", "lookout.logs=512MiB"])
            .unwrap();
        assert_eq!(a.retention, [Setting { topic: "lookout.frames", value: Millis(7_200_000) }]);
        assert_eq!(a.retention_bytes[0].value, Size(512 << 20));
        assert!(args(&["--retention", "videos=2h"]).is_err(), "not a registry topic");
        assert!(args(&["--retention", "frames"]).is_err());
        assert!(args(&["--retention", "frames=0s"]).is_err());
        assert!(args(&["--retention-bytes", "frames=2GB"]).is_err(), "GiB, not GB");
        assert_eq!("none".parse::<Size>().unwrap(), Size(-1));
        assert_eq!("7d".parse::<Millis>().unwrap(), Millis(604_800_000));
    }

    #[test]
    fn options_change_only_the_topics_they_name() {
        let a = args(&["--retention", "frames=2h", "--segment", "frames=5m"]).unwrap();
        let specs = wanted(&a);
        let frames = specs.iter().find(|s| s.name == "lookout.frames").unwrap();
        let r = frames.retention.unwrap();
        assert_eq!((r.ms, r.segment_ms), (7_200_000, 300_000));
        assert_eq!(r.bytes, lookout_proto::topics::FRAMES_RETENTION.bytes);
        let logs = specs.iter().find(|s| s.name == "lookout.logs").unwrap();
        assert_eq!(logs.retention, Some(lookout_proto::topics::LOGS_RETENTION));
    }

    #[test]
    fn differences_name_missing_topics_and_settings() {
        let specs = wanted(&args(&[]).unwrap());
        let names: Vec<String> = specs.iter().map(|s| format!("p.{}", s.name)).collect();
        let mut partitions = BTreeMap::new();
        let mut configs = BTreeMap::new();
        for (spec, name) in specs.iter().zip(&names) {
            partitions.insert(name.clone(), spec.partitions as usize);
            let c: BTreeMap<String, String> = spec
                .retention
                .unwrap()
                .configs()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            configs.insert(name.clone(), c);
        }
        assert_eq!(differences(&specs, &names, &partitions, &configs), []);

        // A broker-default frames topic (7 days), one partition short, and no dead letters.
        let frames = names.iter().find(|n| n.ends_with("frames")).unwrap();
        configs.get_mut(frames).unwrap().insert("retention.ms".into(), "604800000".into());
        *partitions.get_mut(frames).unwrap() = 5;
        partitions.remove("p.lookout.dlq");
        let d = differences(&specs, &names, &partitions, &configs);
        let found: Vec<(&str, &str, &str)> =
            d.iter().map(|d| (d.setting, d.wanted.as_str(), d.actual.as_str())).collect();
        assert_eq!(
            found,
            [
                ("partitions", "6", "5"),
                ("retention.ms", "3600000", "604800000"),
                ("topic", "exists", "missing"),
            ]
        );
    }
}
