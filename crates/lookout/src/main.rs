//! `lookout`: run an embedded broker, inspect topics, tap messages as JSON.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod broker;
mod json;
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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = lookout_service::parse_args();
    let result = match cli.command {
        Command::Broker(args) => broker::run(args).await,
        Command::Topics(args) => topics::run(args).await,
        Command::Tap(args) => tap::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lookout: {e:#}");
            ExitCode::FAILURE
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
