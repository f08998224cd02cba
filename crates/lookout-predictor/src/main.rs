//! `lookout-predictor`: see the library documentation.

use std::process::ExitCode;

use clap::Parser;
use lookout_predictor::PredictorArgs;
use lookout_service::CommonArgs;

/// Labels camera frames with an ONNX model and publishes the predictions.
#[derive(Debug, Parser)]
#[command(name = "lookout-predictor", version)]
struct Args {
    #[command(flatten)]
    predictor: PredictorArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = lookout_service::parse_args();
    lookout_service::main("lookout-predictor", args.common.clone(), |svc| async move {
        let bus = svc.bus()?;
        tokio::spawn(lookout_service::watch_kafka(
            bus.clone(),
            svc.readiness.clone(),
            std::time::Duration::from_secs(5),
            svc.shutdown.clone(),
        ));
        lookout_predictor::run(args.predictor, bus, svc.shutdown.clone()).await?;
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
