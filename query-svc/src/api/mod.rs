//! The REST API for the frontend (API.md, "REST"), one router per resource:
//!
//! - [`account`]: `GET /api/v1/billing/account`.
//! - [`records`]: `GET /api/v1/billing/records`.
//! - [`export`]: `GET /api/v1/billing/records/export`, the same records as CSV, streamed.
//! - [`orders`]: `POST /api/v1/billing/recharge`, `GET /api/v1/billing/recharge/orders[/{no}]`.
//! - [`usage`]: `GET /api/v1/billing/usage`, charges per day or per API.
//! - [`alerts`]: `GET`, `PUT` and `PATCH /api/v1/billing/alerts`; the changes forwarded to
//!   command-svc.
//! - [`console`]: `GET /console`, the developer console that uses the routes above.
//! - [`auth`]: the JWT every `/api/v1/billing/*` handler requires; [`command`]: the gRPC client
//!   that forwards recharges to command-svc; [`cursor`]: page sizes and cursors; [`error`]: every
//!   failure as one JSON shape, the framework's own rejections, unknown routes and wrong methods
//!   included; [`fresh`]: `min_version` read-your-writes; [`openapi`]: `GET /openapi.json`, the
//!   OpenAPI document generated from the routes themselves.
//!
//! Instants are RFC 3339 in UTC with microseconds (`2026-11-30T16:00:00.000000Z`): exact to
//! what is stored, and of one width.

pub mod account;
pub mod alerts;
pub mod auth;
pub mod command;
pub mod console;
pub mod cursor;
pub mod error;
pub mod export;
pub mod fresh;
pub mod openapi;
pub mod orders;
pub mod records;
pub mod usage;

use axum::{Extension, Json, Router, extract::State};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::app::AppState;
use error::{ApiError, ErrorBody};

pub fn router(state: AppState) -> Router {
    let (routes, api) = openapi_router().split_for_parts();
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(openapi::Document::new(&api)))
        .layer(axum::middleware::from_fn(shared::telemetry::observe_http))
        .with_state(state)
}

/// Every route with its documentation. Each is registered from its handler's `#[utoipa::path]`,
/// so a route cannot be served undocumented, nor documented unserved.
pub fn openapi_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi::document))
        .merge(account::router())
        .merge(records::router())
        .merge(export::router())
        .merge(orders::router())
        .merge(usage::router())
        .merge(alerts::router())
        .merge(console::router())
}

/// The OpenAPI document `GET /openapi.json` serves.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    openapi_router().into_openapi()
}

/// What a probe answers.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Probe)]
pub struct ProbeJson {
    /// `ok` (liveness) or `ready` (readiness).
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: the process is alive.
#[utoipa::path(
    get,
    path = shared::endpoints::LIVENESS,
    tag = openapi::OPERATIONS_TAG,
    responses((status = 200, description = "Alive: `{\"status\": \"ok\"}`", body = ProbeJson))
)]
async fn healthz() -> Json<ProbeJson> {
    Json(ProbeJson { status: "ok" })
}

/// Readiness: can serve reads.
///
/// MySQL answers and the read model's tables are at this build's schema. Redis, NATS and
/// command-svc being away only degrade the service.
#[utoipa::path(
    get,
    path = shared::endpoints::READINESS,
    tag = openapi::OPERATIONS_TAG,
    responses(
        (status = 200, description = "Ready: `{\"status\": \"ready\"}`", body = ProbeJson),
        (status = 503, description = "MySQL is unreachable or not migrated (`UNAVAILABLE`)",
            body = ErrorBody),
    )
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<ProbeJson>, ApiError> {
    if state.store.is_ready().await {
        Ok(Json(ProbeJson { status: "ready" }))
    } else {
        Err(ApiError::Unavailable {
            reason: error::UNAVAILABLE.to_owned(),
            message: "MySQL is unreachable or not migrated".to_owned(),
        })
    }
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(
    get,
    path = shared::endpoints::METRICS,
    tag = openapi::OPERATIONS_TAG,
    responses((status = 200, description = "The metrics", content_type = "text/plain",
        body = String))
)]
async fn metrics() -> String {
    shared::telemetry::metrics().render()
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
