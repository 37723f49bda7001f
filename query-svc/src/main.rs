//! `query-svc [-conf PATH]`: serves the REST API and runs the projection. Operations on the read
//! model (rebuild, reconcile, dead-letter replay) are `billingctl` commands.

use query_svc::app::Application;
use shared::{clock::Clock, config::Settings, telemetry};

// Many small allocations per request from many threads: an allocator made for that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let paths = Settings::paths_from_args(std::env::args());
    let settings = Settings::load_files(&paths, None)?;
    let spans = telemetry::init_service(&settings.telemetry, "query-svc");
    let app = Application::build(&settings, Clock::system()).await?;
    let stopped = app.run_until_stopped(shared::shutdown::signal()).await;
    spans.shutdown().await;
    stopped
}
