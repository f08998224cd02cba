use std::io::Write as _;

use anyhow::Context as _;
use lookout_bus::{Bus, admin};
use lookout_service::CommonArgs;

/// Consumer groups of Lookout's services, shown when the brokers cannot list groups.
const SERVICE_GROUPS: &[&str] = &["predictor", "recorder", "logship"];

#[derive(Debug, clap::Args)]
pub(crate) struct TopicsArgs {
    /// Show the lag of this consumer group (repeatable). By default the groups the brokers
    /// list, or Lookout's service groups where listing is not supported (the embedded broker).
    #[arg(long = "group")]
    groups: Vec<String>,

    /// Create the registry's topics that are missing (real Kafka; `lookout broker` creates them itself).
    #[arg(long)]
    create: bool,

    #[command(flatten)]
    common: CommonArgs,
}

pub(crate) async fn run(args: TopicsArgs) -> anyhow::Result<()> {
    let bus = Bus::new(args.common.bus_config("lookout-cli"))?;
    if args.create {
        let created = admin::ensure_topics(&bus, &lookout_proto::topics::all())
            .await
            .context("cannot create topics")?;
        for t in created {
            println!("created {t}");
        }
    }
    let topics = admin::describe(&bus)
        .await
        .with_context(|| format!("cannot reach the brokers at {}", args.common.brokers))?;
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
