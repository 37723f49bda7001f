//! scheduler-svc: for now it serves its probes; the monthly reset command builds on this.

use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::{Value, json};
use shared::{config::Settings, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = Settings::path_from_args(std::env::args());
    let settings = Settings::load(path.as_ref())?;
    telemetry::init(&settings.telemetry);
    let nats = nats_host_port(&settings.nats.url);
    let router = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": { "code": "NOT_FOUND", "message": "no such route" } })),
            )
        })
        .with_state(nats);
    let listener = tokio::net::TcpListener::bind(&settings.scheduler.http_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "scheduler-svc serving");
    axum::serve(listener, router)
        .with_graceful_shutdown(shared::shutdown::signal())
        .await?;
    Ok(())
}

/// `nats://host:port` → `host:port`.
fn nats_host_port(url: &str) -> String {
    url.trim_start_matches("nats://")
        .trim_end_matches('/')
        .to_owned()
}

/// Ready when NATS accepts connections.
async fn readyz(State(nats): State<String>) -> (StatusCode, Json<Value>) {
    let connect = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(&nats),
    );
    match connect.await {
        Ok(Ok(_)) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": { "code": "UNAVAILABLE", "message": "NATS is unreachable" } })),
        ),
    }
}
