use std::{
    io::Write as _,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::bail;
use lookout_bus::{
    Bus, BusError, HandlerError, RawHandler, RawMessage, Start, StartAt, headers::ContentType,
};
use lookout_service::CommonArgs;
use serde_json::{Map, Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio_util::sync::CancellationToken;

use crate::json::{BytesMode, render};

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

    /// Print only the messages of this model (their `model.name`: predictions and changes),
    /// e.g. ssdlite-mobilenet-v2-coco when a classifier and a detector label the same frames.
    #[arg(long)]
    model: Option<String>,

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
        model: args.model.clone(),
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

    let start = match args.from {
        From::Beginning => Start::Beginning,
        From::End => Start::End,
        From::Offset(o) => Start::Offset(o),
        From::Last(n) => Start::Last(n.unsigned_abs()),
        From::Time(t) => Start::Time((t.unix_timestamp_nanos() / 1_000_000) as i64),
    };
    let mut reader = bus.reader(&name).start(start);
    if let Some(p) = args.partition {
        reader = reader.partitions([p]);
    }
    let reader = match reader.open(&shutdown).await {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(()),
        Err(BusError::UnknownTopic { .. }) => {
            let topics = lookout_bus::admin::describe(&bus).await?;
            let known: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
            bail!(
                "topic {name} does not exist on {}; topics there: {}",
                args.common.brokers,
                known.join(", ")
            );
        }
        Err(e) => return Err(e.into()),
    };
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            m = reader.recv() => m,
        };
        match received {
            Ok(m) => {
                let _ = printer.handle(&m).await;
            }
            Err(e) => eprintln!("lookout tap: {e}"),
        }
    }
}

struct Printer {
    registry_type: Option<String>,
    bytes: BytesMode,
    model: Option<String>,
    printed: Arc<AtomicU64>,
    limit: Option<u64>,
    shutdown: CancellationToken,
}

impl Printer {
    fn line(&self, m: &RawMessage) -> Value {
        let all = m.headers.to_strings();
        // The protobuf type named by the header (any accepted form), else the registry's.
        let content_type = match m.headers.content_type() {
            Some(ContentType::Protobuf(Some(name))) => Some(name.to_owned()),
            Some(ContentType::Other(_)) => None,
            Some(ContentType::Protobuf(None)) | None => self.registry_type.clone(),
        };
        let value = match (&content_type, m.payload.as_deref()) {
            (_, None) => Value::Null,
            (Some(t), Some(p)) => render(t, p, self.bytes)
                .unwrap_or_else(|e| json!({ "error": e, "raw": format!("<{} bytes>", p.len()) })),
            (None, Some(p)) => Value::String(format!("<{} bytes>", p.len())),
        };
        let timestamp = m.timestamp_ms.and_then(|ms| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
        });
        let headers: Map<String, Value> =
            all.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        json!({
            "topic": &*m.topic,
            "partition": m.partition,
            "offset": m.offset,
            "timestamp": timestamp,
            "key": m.key.as_deref().map(String::from_utf8_lossy),
            "headers": headers,
            "type": content_type,
            "value": value,
        })
    }
}

impl RawHandler for Printer {
    async fn handle(&self, message: &RawMessage) -> Result<(), HandlerError> {
        if self.limit.is_some_and(|l| self.printed.load(Ordering::SeqCst) >= l) {
            self.shutdown.cancel();
            return Err(HandlerError::Transient("limit reached".into()));
        }
        let line = self.line(message);
        if let Some(model) = &self.model
            && line["value"]["model"]["name"] != model.as_str()
        {
            return Ok(());
        }
        let line = line.to_string();
        let mut out = std::io::stdout().lock();
        // A closed stdout (`| head`) ends the tap.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            self.shutdown.cancel();
            return Err(HandlerError::Transient("stdout closed".into()));
        }
        let n = self.printed.fetch_add(1, Ordering::SeqCst) + 1;
        if self.limit.is_some_and(|l| n >= l) {
            self.shutdown.cancel();
        }
        Ok(())
    }
}
