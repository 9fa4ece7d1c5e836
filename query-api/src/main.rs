use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = query_api::config::Config::parse();
    platform::telemetry::init(config.log.format);
    match query_api::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "query-api stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
