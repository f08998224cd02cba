//! The service entry point shared by `lookout-camera` and `lookout camera`.

use std::process::ExitCode;

use anyhow::Context as _;
use lookout_bus::Bus;
use lookout_service::{Service, site::SiteFile};

use crate::{Args, Camera, site};

/// Runs the camera service (`lookout-camera`, `lookout camera`): `--list`, or capture and
/// publish until a signal; with `--config`, every camera of the site file.
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
    // Everything that can be checked before starting: a bad option or site file is a usage error.
    let checked = match &args.camera.config {
        Some(path) => SiteFile::load(path)
            .and_then(|s| site::cameras(&s, &args.camera))
            .map(Some)
            .map_err(|e| e.to_string()),
        None => args.camera.validate().map(|()| None).map_err(|e| e.to_string()),
    };
    let site = match checked {
        Ok(site) => site,
        Err(e) => {
            eprintln!("lookout-camera: {e}");
            return ExitCode::from(lookout_service::EXIT_USAGE);
        }
    };
    lookout_service::main("lookout-camera", args.common.clone(), |svc| async move {
        match site {
            Some(cameras) => run_site(cameras, svc).await,
            None => run_service(args, svc).await,
        }
    })
    .await
}

async fn run_service(args: Args, svc: Service) -> anyhow::Result<()> {
    // The source first: a missing camera or file fails before Kafka is contacted.
    let camera =
        Camera::open(args.camera, svc.readiness.clone()).await.context("cannot open the source")?;
    let bus = producer(&svc)?;
    camera.run(bus, svc.shutdown.clone()).await.context("the camera stopped")?;
    Ok(())
}

/// The cameras of a site file, each in its own task; see [`site`].
async fn run_site(cameras: Vec<crate::CameraArgs>, svc: Service) -> anyhow::Result<()> {
    let bus = producer(&svc)?;
    site::run_site(cameras, bus, svc.readiness.clone(), svc.shutdown.clone())
        .await
        .context("the cameras stopped")?;
    Ok(())
}

/// The camera's producer, and the `kafka` readiness check kept up to date.
fn producer(svc: &Service) -> anyhow::Result<Bus> {
    let config = crate::producer_config(svc.args.bus_config(svc.name));
    let bus = Bus::new(config).context("cannot create the Kafka client")?;
    // The readiness probe gets the user's options only: the camera's producer settings would
    // make librdkafka warn on every probe consumer.
    let probe = svc.bus()?;
    svc.watch_kafka(&probe);
    Ok(bus)
}
