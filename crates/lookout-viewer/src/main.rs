//! `lookout-viewer`: see the library documentation.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lookout_viewer::main(lookout_service::parse_args()).await
}
