//! The HTTP side of command-svc: the payment webhook and the probes. Every error, the framework's
//! own rejections included, is a JSON body.

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use serde_json::{Value, json};

use super::{error::HttpError, webhook};
use crate::commands::Commands;

#[derive(Clone)]
pub struct HttpState {
    pub commands: Commands,
    pub webhook: webhook::WebhookKeys,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route(shared::endpoints::LIVENESS, get(healthz))
        .route(shared::endpoints::READINESS, get(readyz))
        .route(
            shared::endpoints::METRICS,
            get(|| async { shared::telemetry::metrics().render() }),
        )
        .route(
            "/api/v1/billing/recharge/callback",
            post(webhook::recharge_callback),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(shared::telemetry::observe_http))
        .with_state(state)
}

/// The process is alive.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Can take commands: MySQL reachable and migrated. NATS and Redis never make it unready.
async fn readyz(State(state): State<HttpState>) -> Result<Json<Value>, HttpError> {
    if state.commands.store().is_ready().await {
        Ok(Json(json!({ "status": "ready" })))
    } else {
        Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "MySQL is unreachable or not migrated",
        ))
    }
}

async fn not_found() -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route")
}

async fn method_not_allowed() -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "method not allowed on this route",
    )
}
