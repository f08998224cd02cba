//! `lookout`: run an embedded broker, inspect topics, tap messages as JSON.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod broker;
mod changes;
mod demo;
mod healthcheck;
mod json;
mod replay;
mod tap;
mod topics;

/// Lookout: camera feeds labelled by ONNX models, over protobuf-typed Kafka topics.
#[derive(Debug, Parser)]
#[command(name = "lookout", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an embedded Kafka broker (librdkafka's mock cluster) with Lookout's topics, for
    /// local runs and tests. Nothing is stored on disk; at most 5 MiB are kept per partition.
    Broker(broker::BrokerArgs),
    /// List topics with partitions and offsets, and consumer-group lag.
    Topics(topics::TopicsArgs),
    /// Print a topic's messages as JSON lines, decoded by their protobuf type.
    Tap(tap::TapArgs),
    /// List the label changes (and a detector's object events, `+person -car`) the recorder
    /// stored (from its database).
    Changes(changes::ChangesArgs),
    /// Label stored frames again with a model (any, e.g. a new version) into a topic of their
    /// own, from a time to a time, and list the label changes found; the live groups are not
    /// touched.
    Replay(replay::ReplayArgs),
    /// Write the JPEG stored with a change: `lookout snapshot ID > f.jpg`.
    Snapshot(changes::SnapshotArgs),
    /// Run the whole pipeline locally: embedded broker, camera, predictor(s), viewer, recorder
    /// (SQLite) and log shipper, each as its own process. Ctrl-C stops everything.
    Demo(demo::DemoArgs),
    /// Run the camera service (same as `lookout-camera`).
    Camera(lookout_camera::Args),
    /// Run the predictor service (same as `lookout-predictor`).
    Predictor(lookout_predictor::Args),
    /// Run the viewer service (same as `lookout-viewer`).
    Viewer(lookout_viewer::Args),
    /// Run the recorder service (same as `lookout-recorder`).
    Recorder(lookout_recorder::Args),
    /// Run the log shipper (same as `lookout-logship`).
    Logship(lookout_logship::Args),
    /// Run the alerts service (same as `lookout-alerts`): rules over predictions and changes,
    /// alerts to MQTT, webhooks and stdout.
    Alerts(lookout_alerts::Args),
    /// Exit 0 when an HTTP URL answers 200 (container healthchecks).
    Healthcheck(healthcheck::HealthcheckArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = lookout_service::parse_args();
    let result = match cli.command {
        Command::Broker(args) => broker::run(args).await,
        Command::Topics(args) => topics::run(args).await,
        Command::Tap(args) => tap::run(args).await,
        Command::Changes(args) => changes::run_changes(args).await,
        Command::Snapshot(args) => changes::run_snapshot(args).await,
        Command::Replay(args) => replay::run(args).await,
        Command::Healthcheck(args) => healthcheck::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Camera(args) => return lookout_camera::main(args).await,
        Command::Predictor(args) => return lookout_predictor::main(args).await,
        Command::Viewer(args) => return lookout_viewer::main(args).await,
        Command::Recorder(args) => return lookout_recorder::main(args).await,
        Command::Logship(args) => return lookout_logship::main(args).await,
        Command::Alerts(args) => return lookout_alerts::main(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lookout: {e:#}");
            // A site file that does not load is bad configuration, as a bad flag is.
            match e.downcast_ref::<lookout_service::site::SiteError>() {
                Some(_) => ExitCode::from(lookout_service::EXIT_USAGE),
                None => ExitCode::FAILURE,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
