//! `lookout-logship`: see the library documentation.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lookout_logship::main(lookout_service::parse_args()).await
}
