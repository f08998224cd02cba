//! What every Lookout service shares: command-line and environment configuration
//! ([`CommonArgs`], parsed by [`parse_args`]: empty variables count as unset, secret values
//! stay out of `--help` and errors), logging with the service's logs shipped on the logs topic (unless
//! `--no-ship-logs`), signal handling and shutdown ([`shutdown`]), and the admin HTTP server
//! with `/livez`, `/readyz` and `/metrics` ([`admin`]), and credentials masked in URLs and
//! text that show them ([`redact`]), and the site file that lists a site's cameras and models
//! ([`site`]).
//!
//! A service's `main` stays thin:
//!
//! ```no_run
//! # #[derive(clap::Parser)] struct Args { #[command(flatten)] common: lookout_service::CommonArgs }
//! # async fn run(_: Args, _: lookout_service::Service) -> anyhow::Result<()> { Ok(()) }
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     let args: Args = lookout_service::parse_args();
//!     lookout_service::main("lookout-example", args.common.clone(), |svc| run(args, svc)).await
//! }
//! ```

pub mod admin;
mod args;
pub mod cli;
pub mod redact;
pub mod shutdown;
pub mod site;

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context as _;
use lookout_bus::{Bus, BusError};
use lookout_telemetry::{ShipConfig, Telemetry, TelemetryError};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use admin::Readiness;
pub use args::{CommonArgs, parse_bytes, parse_duration};
pub use cli::{SECRET_ENV, parse_args};

/// Exit code for bad configuration (BSD `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

/// How long a stopping service waits for its last log records to reach the brokers.
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How often [`Service::watch_kafka`] asks the brokers for metadata.
const KAFKA_CHECK_EVERY: Duration = Duration::from_secs(5);

/// A running service's shared parts.
#[derive(Debug, Clone)]
pub struct Service {
    /// The service name, e.g. `lookout-camera`.
    pub name: &'static str,
    /// The common configuration.
    pub args: CommonArgs,
    /// Cancelled on SIGINT/SIGTERM, or when a task fails.
    pub shutdown: CancellationToken,
    /// Named readiness checks, reported on `/readyz`.
    pub readiness: Readiness,
    /// Where the admin server listens.
    pub admin_addr: SocketAddr,
    telemetry: Telemetry,
}

impl Service {
    /// A bus client named after this service.
    pub fn bus(&self) -> anyhow::Result<Bus> {
        Bus::new(self.args.bus_config(self.name)).context("cannot create the Kafka client")
    }

    /// Keeps the `kafka` readiness check up to date from `bus`, until shutdown: ready while the
    /// brokers answer a metadata request, checked every 5 s.
    pub fn watch_kafka(&self, bus: &Bus) {
        tokio::spawn(watch_kafka(
            bus.clone(),
            self.readiness.clone(),
            KAFKA_CHECK_EVERY,
            self.shutdown.clone(),
        ));
    }

    /// The Prometheus rendering of the process's metrics.
    pub fn render_metrics(&self) -> String {
        self.telemetry.render_metrics()
    }
}

/// Runs a service: sets up telemetry (console logs, logs shipped on the logs topic unless
/// `--no-ship-logs`, metrics), signals and the admin server, then runs `body` until it returns
/// or a signal arrives; after a signal the body gets `args.shutdown_grace` to finish. The last
/// log records are flushed before it returns. Returns the process exit code (64 for
/// configuration errors, 1 for failures).
pub async fn main<F, Fut>(name: &'static str, args: CommonArgs, body: F) -> ExitCode
where
    F: FnOnce(Service) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let (telemetry, no_log_bus) = match init_telemetry(name, &args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Some(e) = no_log_bus {
        // The body's own Kafka client will fail the same way and say so.
        warn!(error = %e, "logs are not shipped: cannot create the Kafka client");
    }
    let code = run(name, args, telemetry.clone(), body).await;
    if !telemetry.flush_logs(LOG_FLUSH_TIMEOUT).await {
        eprintln!("{name}: not every log record reached the brokers");
    }
    code
}

/// Console logging and metrics, plus log shipping on a Kafka client of its own unless turned
/// off. A Kafka client that cannot be created is returned, not fatal.
fn init_telemetry(
    name: &'static str,
    args: &CommonArgs,
) -> Result<(Telemetry, Option<BusError>), TelemetryError> {
    if args.no_ship_logs {
        return Ok((lookout_telemetry::init(args.log_format)?, None));
    }
    match Bus::new(args.bus_config(name)) {
        Ok(bus) => {
            let ship = ShipConfig::new(bus).level(args.ship_logs_level);
            Ok((lookout_telemetry::init_with_shipping(args.log_format, ship)?, None))
        }
        Err(e) => Ok((lookout_telemetry::init(args.log_format)?, Some(e))),
    }
}

async fn run<F, Fut>(
    name: &'static str,
    args: CommonArgs,
    telemetry: Telemetry,
    body: F,
) -> ExitCode
where
    F: FnOnce(Service) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let shutdown = shutdown::on_signals();
    let readiness = Readiness::default();
    let admin_state = admin::AdminState::new(readiness.clone(), telemetry.clone());
    let admin_addr = match admin::serve(args.admin_addr, admin_state, shutdown.clone()).await {
        Ok(a) => a,
        Err(e) => {
            error!(error = %e, addr = %args.admin_addr, "cannot start the admin server");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    info!(
        service = name,
        instance = %args.instance,
        admin = %admin_addr,
        brokers = %args.brokers,
        ship_logs = telemetry.log_shipper().is_some(),
        "starting",
    );
    let grace = args.shutdown_grace;
    let svc = Service {
        name,
        args,
        shutdown: shutdown.clone(),
        readiness: readiness.clone(),
        admin_addr,
        telemetry,
    };
    let body = body(svc);
    tokio::pin!(body);
    let result = tokio::select! {
        r = &mut body => r,
        () = shutdown.cancelled() => {
            info!(grace_ms = grace.as_millis() as u64, "shutting down");
            match tokio::time::timeout(grace, &mut body).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("did not stop within {grace:?}")),
            }
        }
    };
    let code = outcome(name, result, &readiness);
    shutdown.cancel();
    code
}

/// The readiness check that a failed service turns red before it exits.
pub const RUNNING_CHECK: &str = "running";

/// The exit code for the body's result. A failure (a handler that panicked, a fatal error)
/// turns readiness red at once, so probes see it before the process is gone.
fn outcome(name: &str, result: anyhow::Result<()>, readiness: &Readiness) -> ExitCode {
    match result {
        Ok(()) => {
            info!(service = name, "stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            readiness.set(RUNNING_CHECK, false);
            error!(service = name, error = format!("{e:#}"), "failed");
            ExitCode::FAILURE
        }
    }
}

async fn watch_kafka(bus: Bus, readiness: Readiness, every: Duration, shutdown: CancellationToken) {
    loop {
        let ok = lookout_bus::admin::describe(&bus).await.is_ok();
        readiness.set("kafka", ok);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_body_turns_readiness_red_and_exits_non_zero() {
        let readiness = Readiness::default();
        readiness.set("kafka", true);
        assert_eq!(outcome("x", Ok(()), &readiness), ExitCode::SUCCESS);
        assert!(readiness.status().0);
        let panicked = lookout_bus::BusError::HandlerPanicked {
            topic: "t".into(),
            partition: 0,
            message: "a bug".into(),
        };
        assert_eq!(outcome("x", Err(panicked.into()), &readiness), ExitCode::FAILURE);
        assert_eq!(readiness.status(), (false, vec![RUNNING_CHECK]));
    }
}
