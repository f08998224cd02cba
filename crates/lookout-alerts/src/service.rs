//! The service entry point shared by `lookout-alerts` and `lookout alerts`.

use std::process::ExitCode;

use lookout_service::{CommonArgs, EXIT_USAGE};

use crate::{AlertsArgs, Rules};

/// Fires alert rules over predictions and changes and delivers the alerts to MQTT, webhooks
/// and stdout.
#[derive(Debug, clap::Parser)]
#[command(name = "lookout-alerts", version)]
pub struct Args {
    /// Service options.
    #[command(flatten)]
    pub alerts: AlertsArgs,
    /// Options every service takes.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs the service (`lookout-alerts`, `lookout alerts`). An unusable rules file is refused
/// before anything starts, with its line and the reason, and exit code 64.
pub async fn main(args: Args) -> ExitCode {
    let rules = match Rules::load(&args.alerts.config) {
        Ok(rules) => rules,
        Err(e) => {
            eprintln!("lookout-alerts: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    lookout_service::main("lookout-alerts", args.common.clone(), |svc| async move {
        if rules.is_empty() {
            tracing::warn!(config = %args.alerts.config.display(), "the file has no [[alert]] rules");
        }
        let bus = svc.bus()?;
        svc.watch_kafka(&bus);
        crate::run(args.alerts, rules, bus, svc.readiness.clone(), svc.shutdown.clone()).await?;
        Ok(())
    })
    .await
}
