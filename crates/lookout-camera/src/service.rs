//! The service entry point shared by `lookout-camera` and `lookout camera`.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use lookout_bus::Bus;
use lookout_service::Service;

use crate::{Args, Camera};

/// How often the `kafka` readiness check asks the brokers.
const KAFKA_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Runs the camera service (`lookout-camera`, `lookout camera`): `--list`, or capture and
/// publish until a signal.
pub async fn main(args: Args) -> ExitCode {
    if args.camera.list {
        return match crate::source::webcam::list_text() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lookout-camera: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = args.camera.validate() {
        eprintln!("lookout-camera: {e}");
        return ExitCode::from(lookout_service::EXIT_USAGE);
    }
    lookout_service::main("lookout-camera", args.common.clone(), |svc| run_service(args, svc)).await
}

async fn run_service(args: Args, svc: Service) -> anyhow::Result<()> {
    // The source first: a missing camera or file fails before Kafka is contacted.
    let camera =
        Camera::open(args.camera, svc.readiness.clone()).await.context("cannot open the source")?;
    let config = crate::producer_config(svc.args.bus_config(svc.name));
    let bus = Bus::new(config).context("cannot create the Kafka client")?;
    // The readiness probe gets the user's options only: the camera's producer settings would
    // make librdkafka warn on every probe consumer.
    let probe = svc.bus()?;
    tokio::spawn(lookout_service::watch_kafka(
        probe,
        svc.readiness.clone(),
        KAFKA_CHECK_EVERY,
        svc.shutdown.clone(),
    ));
    camera.run(bus, svc.shutdown.clone()).await.context("the camera stopped")?;
    Ok(())
}
