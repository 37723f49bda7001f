//! The REST API for the frontend (API.md, "REST"), one router per resource:
//!
//! - [`account`]: `GET /api/v1/billing/account`.
//! - [`records`]: `GET /api/v1/billing/records`.
//! - [`export`]: `GET /api/v1/billing/records/export`, the same records as CSV, streamed.
//! - [`orders`]: `POST /api/v1/billing/recharge`, `GET /api/v1/billing/recharge/orders[/{no}]`.
//! - [`usage`]: `GET /api/v1/billing/usage`, charges per day or per API.
//! - [`auth`]: the JWT every `/api/v1/billing/*` handler requires; [`command`]: the gRPC client
//!   that forwards recharges to command-svc; [`cursor`]: page sizes and cursors; [`error`]: every
//!   failure as one JSON shape, the framework's own rejections, unknown routes and wrong methods
//!   included; [`fresh`]: `min_version` read-your-writes.
//!
//! Instants are RFC 3339 in UTC with microseconds (`2026-11-30T16:00:00.000000Z`): exact to
//! what is stored, and of one width.

pub mod account;
pub mod auth;
pub mod command;
pub mod cursor;
pub mod error;
pub mod export;
pub mod fresh;
pub mod orders;
pub mod records;
pub mod usage;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    routing::get,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::app::AppState;
use error::ApiError;

/// Request bodies are a few fields; anything larger is refused (413) before it is parsed.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(shared::endpoints::LIVENESS, get(healthz))
        .route(shared::endpoints::READINESS, get(readyz))
        .route(
            shared::endpoints::METRICS,
            get(|| async { shared::telemetry::metrics().render() }),
        )
        .merge(account::router())
        .merge(records::router())
        .merge(export::router())
        .merge(orders::router())
        .merge(usage::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(shared::telemetry::observe_http))
        .with_state(state)
}

/// The process is alive.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Can serve reads: MySQL answers and the read model's tables are at this build's schema.
/// Redis, NATS and command-svc being away only degrade the service.
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.store.is_ready().await {
        Ok(Json(json!({ "status": "ready" })))
    } else {
        Err(ApiError::Unavailable {
            reason: error::UNAVAILABLE.to_owned(),
            message: "MySQL is unreachable or not migrated".to_owned(),
        })
    }
}

async fn not_found() -> ApiError {
    ApiError::NoRoute
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// An instant as every answer writes it.
pub(crate) fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}
