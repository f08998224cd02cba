use std::{io::Write as _, net::SocketAddr};

use anyhow::Context as _;
use lookout_bus::embedded::EmbeddedBroker;
use lookout_telemetry::LogFormat;

#[derive(Debug, clap::Args)]
pub(crate) struct BrokerArgs {
    /// Address to serve on; port 0 picks a free port (printed on the first line of stdout).
    #[arg(long, env = "LOOKOUT_BROKER_LISTEN", default_value = "127.0.0.1:9092")]
    listen: SocketAddr,

    /// Prefix of the topics to create, e.g. `staging.`.
    #[arg(long, env = "LOOKOUT_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,

    /// Log format on stderr.
    #[arg(long, env = "LOOKOUT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
}

pub(crate) async fn run(args: BrokerArgs) -> anyhow::Result<()> {
    lookout_telemetry::init(args.log_format)?;
    let shutdown = lookout_service::shutdown::on_signals();
    let broker = EmbeddedBroker::start().context("cannot start the embedded broker")?;
    broker.create_registry_topics(&args.topic_prefix)?;
    crate::replay::create_replay_topic(&broker, &args.topic_prefix)?;
    let addr = broker.listen(args.listen, shutdown.clone()).await.with_context(|| {
        format!("cannot listen on {} (is another broker running there?)", args.listen)
    })?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    writeln!(out, "  export LOOKOUT_BROKERS={addr}")?;
    writeln!(out, "topics:")?;
    for t in lookout_proto::topics::all() {
        let ty = if t.message_type.is_empty() { "raw bytes" } else { t.message_type.as_str() };
        writeln!(
            out,
            "  {}{} ({} partitions, {ty}, key: {})",
            args.topic_prefix, t.name, t.partitions, t.key
        )?;
    }
    writeln!(
        out,
        "This is librdkafka's mock cluster: nothing is kept on disk and each partition keeps \
         only its newest ~5 MiB. Ctrl-C stops it."
    )?;
    out.flush()?;
    drop(out);

    shutdown.cancelled().await;
    drop(broker);
    Ok(())
}
