use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = command_api::config::Config::parse();
    platform::telemetry::init(config.log.format);
    match command_api::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "command-api stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
