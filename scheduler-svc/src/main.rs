use scheduler_svc::app::Application;
use shared::{clock::Clock, config::Settings, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let paths = Settings::paths_from_args(std::env::args());
    let settings = Settings::load_files(&paths, None)?;
    let spans = telemetry::init_service(&settings.telemetry, "scheduler-svc");
    let app = Application::build(&settings, Clock::system()).await?;
    let stopped = app.run_until_stopped(shared::shutdown::signal()).await;
    spans.shutdown().await;
    stopped
}
