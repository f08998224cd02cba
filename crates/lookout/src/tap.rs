use std::{
    io::Write as _,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use lookout_bus::{Bus, HandlerError, OwnedMessage, RawHandler, StartAt, headers};
use lookout_service::CommonArgs;
use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{Consumer as _, StreamConsumer},
};
use serde_json::{Map, Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio_util::sync::CancellationToken;

use crate::json::{BytesMode, render};

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub(crate) struct TapArgs {
    /// Topic to read, without the prefix, e.g. lookout.frames.
    topic: String,

    /// Where to start: `beginning`, `end`, an offset (`120`), the last N messages of each
    /// partition (`-10`), or a time (RFC 3339, `2026-11-22T18:00:00Z`).
    #[arg(long, default_value = "beginning", allow_hyphen_values = true)]
    from: From,

    /// Read only this partition.
    #[arg(long)]
    partition: Option<i32>,

    /// Stop after this many messages.
    #[arg(long, short = 'n')]
    count: Option<u64>,

    /// Read as a member of this consumer group and commit what was printed (at least once),
    /// like a service would; `--from` must then be `beginning` or `end`.
    #[arg(long)]
    group: Option<String>,

    /// How to print `bytes` fields such as a frame's JPEG.
    #[arg(long, value_enum, default_value_t = BytesMode::Len)]
    bytes: BytesMode,

    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Clone)]
enum From {
    Beginning,
    End,
    Offset(i64),
    Last(i64),
    Time(OffsetDateTime),
}

impl FromStr for From {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "beginning" | "earliest" => Ok(Self::Beginning),
            "end" | "latest" => Ok(Self::End),
            _ => {
                if let Ok(n) = s.parse::<i64>() {
                    return Ok(if n < 0 { Self::Last(-n) } else { Self::Offset(n) });
                }
                OffsetDateTime::parse(s, &Rfc3339).map(Self::Time).map_err(|_| {
                    format!("{s:?}: expected beginning, end, an offset, -N or an RFC 3339 time")
                })
            }
        }
    }
}

pub(crate) async fn run(args: TapArgs) -> anyhow::Result<()> {
    let bus = Bus::new(args.common.bus_config("lookout-tap"))?;
    let name = bus.topic_name(&args.topic);
    let shutdown = lookout_service::shutdown::on_signals();
    let printer = Printer {
        registry_type: lookout_proto::topics::message_type_of(&args.topic),
        bytes: args.bytes,
        printed: Arc::new(AtomicU64::new(0)),
        limit: args.count,
        shutdown: shutdown.clone(),
    };
    if let Some(group) = &args.group {
        let start = match args.from {
            From::Beginning => StartAt::Earliest,
            From::End => StartAt::Latest,
            _ => bail!("with --group, --from must be beginning or end"),
        };
        bus.raw_subscriber(&[name], group).start_at(start).run(printer, shutdown).await?;
        return Ok(());
    }

    let consumer: StreamConsumer = bus
        .client_config(&[("group.id", "lookout-tap"), ("enable.auto.commit", "false")])
        .create()?;
    let topics = lookout_bus::admin::describe(&bus).await?;
    let Some(topic) = topics.iter().find(|t| t.name == name) else {
        let known: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
        bail!(
            "topic {name} does not exist on {}; topics there: {}",
            args.common.brokers,
            known.join(", ")
        );
    };
    let mut tpl = TopicPartitionList::new();
    for p in &topic.partitions {
        if args.partition.is_some_and(|want| want != p.id) {
            continue;
        }
        let offset = match &args.from {
            From::Beginning => Offset::Beginning,
            From::End => Offset::End,
            From::Offset(o) => Offset::Offset(*o),
            From::Last(n) => Offset::Offset((p.high - n).max(p.low)),
            From::Time(t) => Offset::Offset((t.unix_timestamp_nanos() / 1_000_000) as i64),
        };
        tpl.add_partition_offset(&name, p.id, offset)?;
    }
    if tpl.count() == 0 {
        bail!("topic {name} has no partition {}", args.partition.unwrap_or_default());
    }
    if matches!(args.from, From::Time(_)) {
        tpl = consumer.offsets_for_times(tpl, TIMEOUT).context("cannot look up offsets by time")?;
    }
    consumer.assign(&tpl)?;
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            m = consumer.recv() => m,
        };
        match received {
            Ok(m) => {
                let _ = printer.handle(&m.detach()).await;
            }
            Err(e) => eprintln!("lookout tap: {e}"),
        }
    }
}

struct Printer {
    registry_type: Option<String>,
    bytes: BytesMode,
    printed: Arc<AtomicU64>,
    limit: Option<u64>,
    shutdown: CancellationToken,
}

impl Printer {
    fn line(&self, m: &OwnedMessage) -> Value {
        let all = headers::all(m.headers());
        let content_type = all
            .iter()
            .find(|(k, _)| k == headers::CONTENT_TYPE)
            .map(|(_, v)| v.clone())
            .or_else(|| self.registry_type.clone());
        let value = match (&content_type, m.payload()) {
            (_, None) => Value::Null,
            (Some(t), Some(p)) => render(t, p, self.bytes)
                .unwrap_or_else(|e| json!({ "error": e, "raw": format!("<{} bytes>", p.len()) })),
            (None, Some(p)) => Value::String(format!("<{} bytes>", p.len())),
        };
        let timestamp = m.timestamp().to_millis().and_then(|ms| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
        });
        let headers: Map<String, Value> =
            all.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        json!({
            "topic": m.topic(),
            "partition": m.partition(),
            "offset": m.offset(),
            "timestamp": timestamp,
            "key": m.key().map(String::from_utf8_lossy),
            "headers": headers,
            "type": content_type,
            "value": value,
        })
    }
}

impl RawHandler for Printer {
    async fn handle(&self, message: &OwnedMessage) -> Result<(), HandlerError> {
        if self.limit.is_some_and(|l| self.printed.load(Ordering::SeqCst) >= l) {
            self.shutdown.cancel();
            return Err(HandlerError::Retry("limit reached".into()));
        }
        let line = self.line(message).to_string();
        let mut out = std::io::stdout().lock();
        // A closed stdout (`| head`) ends the tap.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            self.shutdown.cancel();
            return Err(HandlerError::Retry("stdout closed".into()));
        }
        let n = self.printed.fetch_add(1, Ordering::SeqCst) + 1;
        if self.limit.is_some_and(|l| n >= l) {
            self.shutdown.cancel();
        }
        Ok(())
    }
}
