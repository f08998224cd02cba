//! The service entry point shared by `lookout-camera` and `lookout camera`.

use std::process::ExitCode;

use anyhow::Context as _;
use lookout_bus::Bus;
use lookout_service::Service;

use crate::{Args, Camera};

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
    svc.watch_kafka(&probe);
    camera.run(bus, svc.shutdown.clone()).await.context("the camera stopped")?;
    Ok(())
}
