//! `lookout-alerts`: see the library documentation.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lookout_alerts::main(lookout_service::parse_args()).await
}
