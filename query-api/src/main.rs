use clap::Parser;

/// mimalloc instead of glibc's malloc: a read allocates and frees many
/// small buffers across two worker threads, where glibc's arenas spent a
/// fifth of the CPU (docs/stack.md, "The query API's allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
