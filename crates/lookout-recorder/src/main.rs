//! `lookout-recorder`: parses the command line and runs [`lookout_recorder::main`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lookout_recorder::main(lookout_service::parse_args()).await
}
