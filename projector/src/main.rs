use clap::Parser;

/// mimalloc instead of glibc's malloc (docs/stack.md, "Our own processes
/// under load").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
