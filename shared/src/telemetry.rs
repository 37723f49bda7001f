//! Logging and metrics, set up once per process. `RUST_LOG` overrides the configured filter.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogFormat, TelemetrySettings};

/// Installs the global subscriber. A second call (several apps in one test process) is a no-op.
pub fn init(settings: &TelemetrySettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    let _already_set = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// The process's metrics recorder, installed on first use; `/metrics` renders it in the
/// Prometheus text format. Several services in one test process share it.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness); then this one stays local.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
