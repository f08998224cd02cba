//! `lookout-alerts`: rules over predictions and changes, alerts delivered to MQTT, webhooks
//! and stdout.
//!
//! Two stages, each a consumer group on the bus like every Lookout service:
//!
//! 1. **Rules** ([`fire`](mod@fire), [`engine`]): consume `lookout.predictions` (group
//!    `<group>`) and `lookout.changes` (group `<group>-changes`), keep per rule and camera
//!    the state of the current episode, and publish an [`Alert`] on `lookout.alerts` once per
//!    episode. An offset is stored after the alerts its message fired were acknowledged.
//! 2. **Sinks** ([`deliver`], [`sink`]): consume `lookout.alerts` (group `<group>-sinks`) and
//!    deliver each alert to every sink; the offset is stored only after every sink took it.
//!    A sink that is away pauses the partition and the alert is retried with a backoff: it is
//!    delayed, never lost.
//!
//! The rules come from the `[[alert]]` tables of a site file ([`rules`]); the sinks from
//! `--sink` ([`SinkSpec`]). Delivery is at least once; every copy of an episode's alert
//! carries the same episode id. Modules: [`rules`], [`engine`], [`payload`] (the JSON form),
//! [`sink`], [`metrics`].

mod deliver;
pub mod engine;
mod error;
mod fire;
pub mod metrics;
pub mod payload;
pub mod rules;
mod service;
pub mod sink;

use std::{path::PathBuf, time::Duration};

use lookout_bus::{Bus, StartAt, topics};
use lookout_service::{Readiness, parse_duration};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use deliver::READINESS_CHECK;
pub use error::{AlertsError, SinkError};
pub use rules::{Rules, RulesError};
pub use service::{Args, main};
pub use sink::SinkSpec;

use crate::{
    deliver::Delivering,
    engine::Engine,
    fire::Firing,
    rules::Source,
    sink::{
        Sink,
        mqtt::{MqttConfig, MqttSink},
        stdout::StdoutSink,
        webhook::WebhookSink,
    },
};

/// Which stages a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// The rules and the sinks.
    All,
    /// Only the rules: predictions and changes to alerts.
    Rules,
    /// Only the sinks: alerts to MQTT, webhooks and stdout.
    Sinks,
}

/// Where a new consumer group of the rules starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Start {
    /// Only messages produced from now on.
    Latest,
    /// The oldest retained message.
    Earliest,
}

/// The alerts service's options. Each is also an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct AlertsArgs {
    /// Site file whose `[[alert]]` tables are the rules (other tables are ignored).
    #[arg(long = "config", env = "LOOKOUT_CONFIG", value_name = "FILE")]
    pub config: PathBuf,

    /// Where alerts go (repeatable; in the environment, comma-separated): stdout,
    /// mqtt://[USER:PASSWORD@]HOST[:PORT] or an http(s):// webhook URL.
    #[arg(
        long = "sink",
        env = "LOOKOUT_ALERTS_SINKS",
        value_delimiter = ',',
        default_value = "stdout",
        value_name = "SINK"
    )]
    pub sinks: Vec<SinkSpec>,

    /// Which stages to run.
    #[arg(long, env = "LOOKOUT_ALERTS_STAGE", value_enum, default_value_t = Stage::All)]
    pub stage: Stage,

    /// Where the rules start reading when their consumer groups have no committed offsets:
    /// `latest` (only what comes from now on: no alerts about the past) or `earliest` (every
    /// retained prediction and change). The sinks always start at the earliest alert.
    #[arg(long, env = "LOOKOUT_ALERTS_START", value_enum, default_value_t = Start::Latest)]
    pub start: Start,

    /// Consumer group of the rules on predictions; `<group>-changes` reads changes and
    /// `<group>-sinks` the alerts.
    #[arg(long, env = "LOOKOUT_ALERTS_GROUP", default_value = "alerts")]
    pub group: String,

    /// First level of the MQTT topics: `<prefix>/<camera>/<rule>`.
    #[arg(long, env = "LOOKOUT_ALERTS_MQTT_TOPIC_PREFIX", default_value = "lookout")]
    pub mqtt_topic_prefix: String,

    /// MQTT client id [default: lookout-alerts-<instance>].
    #[arg(long, env = "LOOKOUT_ALERTS_MQTT_CLIENT_ID")]
    pub mqtt_client_id: Option<String>,

    /// Key of the HMAC-SHA256 signature of webhook bodies (header
    /// `x-lookout-signature-256: sha256=<hex>`); unsigned when unset.
    #[arg(
        long,
        env = "LOOKOUT_ALERTS_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub webhook_secret: Option<String>,

    /// Longest wait for one delivery (an MQTT PUBACK, a webhook's answer) before it is retried.
    #[arg(long, env = "LOOKOUT_ALERTS_SINK_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub sink_timeout: Duration,
}

/// Opens every sink of `args`; `instance` names the MQTT client by default.
pub fn open_sinks(args: &AlertsArgs, instance: &str) -> Result<Vec<Box<dyn Sink>>, AlertsError> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::with_capacity(args.sinks.len());
    for spec in &args.sinks {
        match spec {
            SinkSpec::Stdout => sinks.push(Box::new(StdoutSink)),
            SinkSpec::Mqtt(addr) => sinks.push(Box::new(MqttSink::new(MqttConfig {
                addr: addr.clone(),
                client_id: args
                    .mqtt_client_id
                    .clone()
                    .unwrap_or_else(|| format!("lookout-alerts-{instance}")),
                topic_prefix: args.mqtt_topic_prefix.clone(),
                timeout: args.sink_timeout,
            }))),
            SinkSpec::Webhook(url) => sinks.push(Box::new(WebhookSink::new(
                url.clone(),
                args.webhook_secret.clone(),
                args.sink_timeout,
            )?)),
        }
    }
    Ok(sinks)
}

/// Runs the stages of `args.stage` with `rules` until `shutdown`. Sets the `sinks` readiness
/// check (false while a sink does not take alerts).
pub async fn run(
    args: AlertsArgs,
    rules: Rules,
    bus: Bus,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), AlertsError> {
    let sinks = open_sinks(&args, &bus.config().instance)?;
    let names: Vec<&str> = sinks.iter().map(|s| s.name()).collect();
    info!(rules = rules.len(), sinks = ?names, stage = ?args.stage, group = %args.group, "alerting");
    let (on_predictions, on_changes) =
        (rules.watch(Source::Predictions), rules.watch(Source::Changes));
    let firing = Firing::new(Engine::new(rules), &bus);
    let start = match args.start {
        Start::Latest => StartAt::Latest,
        Start::Earliest => StartAt::Earliest,
    };
    let rules_stage = matches!(args.stage, Stage::All | Stage::Rules);
    let sinks_stage = matches!(args.stage, Stage::All | Stage::Sinks);
    let (changes_group, sinks_group) =
        (format!("{}-changes", args.group), format!("{}-sinks", args.group));

    let predictions = when(
        rules_stage && on_predictions,
        bus.subscriber(&topics::PREDICTIONS, &args.group)
            .start_at(start)
            .run(firing.clone(), shutdown.clone()),
    );
    let changes = when(
        rules_stage && on_changes,
        bus.subscriber(&topics::CHANGES, &changes_group)
            .start_at(start)
            .run(firing, shutdown.clone()),
    );
    let delivering = Delivering::new(sinks, readiness);
    let delivering = when(
        sinks_stage,
        bus.subscriber(&topics::ALERTS, &sinks_group).run(delivering, shutdown.clone()),
    );
    // A stage that fails stops the others.
    let stop_on_error = |r: Result<(), lookout_bus::BusError>| {
        if r.is_err() {
            shutdown.cancel();
        }
        r
    };
    let (p, c, d) = tokio::join!(
        async { stop_on_error(predictions.await) },
        async { stop_on_error(changes.await) },
        async { stop_on_error(delivering.await) },
    );
    p?;
    c?;
    d?;
    Ok(())
}

/// Runs `stage` when `on`.
async fn when(
    on: bool,
    stage: impl Future<Output = Result<(), lookout_bus::BusError>>,
) -> Result<(), lookout_bus::BusError> {
    if on { stage.await } else { Ok(()) }
}
