//! The operational HTTP paths every service serves, named once: the routers use them and the
//! deployment's manifests are checked against them.

/// The process is alive (liveness probe).
pub const LIVENESS: &str = "/healthz";
/// The service can do its work (readiness probe).
pub const READINESS: &str = "/readyz";
/// Prometheus metrics in the text format.
pub const METRICS: &str = "/metrics";
