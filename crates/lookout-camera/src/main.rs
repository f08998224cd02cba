//! `lookout-camera`: parses the command line and runs [`lookout_camera::main`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lookout_camera::main(lookout_service::parse_args()).await
}
