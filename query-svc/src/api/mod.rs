//! The REST API for the frontend.

pub mod auth;
pub mod command;

use axum::{Json, Router, routing::get};
use serde_json::json;

use crate::app::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .with_state(state)
}
