use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = projector::config::Config::parse();
    platform::telemetry::init(config.log.format);
    match projector::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "projector stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
