//! query-svc: for now it serves its probes; the projections and the REST API build on this.

use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::{Value, json};
use shared::{config::Settings, telemetry};
use sqlx::{MySqlPool, mysql::MySqlPoolOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = Settings::path_from_args(std::env::args());
    let settings = Settings::load(path.as_ref())?;
    telemetry::init(&settings.telemetry);
    let pool = MySqlPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(settings.database.url.expose())?;
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
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(&settings.query.http_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "query-svc serving");
    axum::serve(listener, router)
        .with_graceful_shutdown(shared::shutdown::signal())
        .await?;
    Ok(())
}

/// Ready when its MySQL tables are reachable.
async fn readyz(State(pool): State<MySqlPool>) -> (StatusCode, Json<Value>) {
    match sqlx::query("SELECT 1").execute(&pool).await {
        Ok(_) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": { "code": "UNAVAILABLE", "message": "MySQL is unreachable" } })),
        ),
    }
}
