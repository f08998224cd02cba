//! The service entry point shared by `lookout-logship` and `lookout logship`.

use std::process::ExitCode;

use crate::LogshipArgs;
use lookout_service::CommonArgs;

/// Delivers every Lookout service's log records from the logs topic to stdout, JSON-lines
/// files, Elasticsearch or OpenSearch.
#[derive(Debug, clap::Parser)]
#[command(name = "lookout-logship", version)]
pub struct Args {
    /// Service options.
    #[command(flatten)]
    pub logship: LogshipArgs,
    /// Options every service takes.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs the service (`lookout-logship`, `lookout logship`).
pub async fn main(args: Args) -> ExitCode {
    lookout_service::main("lookout-logship", args.common.clone(), |svc| async move {
        let bus = svc.bus()?;
        svc.watch_kafka(&bus);
        crate::run(args.logship, bus, svc.readiness.clone(), svc.shutdown.clone()).await?;
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        super::Args::command().debug_assert();
    }
}
