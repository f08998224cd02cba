//! The service entry point shared by `lookout-viewer` and `lookout viewer`.

use std::process::ExitCode;

use crate::ViewerArgs;
use anyhow::Context as _;
use lookout_service::{CommonArgs, Service};
use tokio::net::TcpListener;

/// Shows the cameras' live video and labels in the browser, for any number of viewers.
#[derive(Debug, clap::Parser)]
#[command(name = "lookout-viewer", version)]
pub struct Args {
    /// Service options.
    #[command(flatten)]
    pub viewer: ViewerArgs,
    /// Options every service takes.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs the service (`lookout-viewer`, `lookout viewer`).
pub async fn main(args: Args) -> ExitCode {
    lookout_service::main("lookout-viewer", args.common.clone(), |svc| run(args, svc)).await
}

async fn run(args: Args, svc: Service) -> anyhow::Result<()> {
    let bus = svc.bus()?;
    let listen = args.viewer.listen;
    let listener =
        TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    svc.watch_kafka(&bus);
    crate::run(args.viewer, listener, bus, svc.shutdown.clone()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        super::Args::command().debug_assert();
    }

    #[test]
    fn defaults_are_local_and_bounded() {
        use clap::Parser as _;
        let args = super::Args::try_parse_from(["lookout-viewer"]).unwrap();
        assert_eq!(args.viewer.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(args.viewer.max_clients, 64);
        assert!(!args.viewer.overlay_default);
        let args = super::Args::try_parse_from([
            "lookout-viewer",
            "--listen",
            "0.0.0.0:9000",
            "--max-clients",
            "2",
            "--overlay-default",
        ])
        .unwrap();
        assert_eq!(args.viewer.max_clients, 2);
        assert!(args.viewer.overlay_default);
        assert!(super::Args::try_parse_from(["x", "--overlay-quality", "0"]).is_err());
    }
}
