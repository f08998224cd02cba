//! `lookout-predictor`: see the library documentation.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lookout_predictor::main(lookout_service::parse_args()).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        lookout_predictor::Args::command().debug_assert();
    }
}
