//! A developer's spend limits, `/api/v1/billing/limits`: `GET` reads them with what was spent in
//! each current window, `PUT` replaces the whole set. Both are forwarded to command-svc, which
//! owns them and enforces them inside each charge's transaction (`GetSpendLimits`,
//! `SetSpendLimits` with the `orders` token, actor `user:<id>`). The body is checked here with the
//! same rules command-svc applies ([`shared::limits`]): scope `account`, `api:<api_id>` or
//! `key:<key_id>`, window `day` or `month`, `limit_micros` a JSON integer in 0 ..= 10^15, at most
//! 20 limits, and no other field. A scope and window given more than once keeps its smallest
//! limit, so that every body the OpenAPI document allows is a set.

use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
};
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::{
    ids::UserId,
    limits::{self, SpendLimit},
    proto::v1 as pb,
};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    alerts::SaveFailure,
    auth::AuthUser,
    error::{ApiError, ErrorBody},
    openapi, rfc3339,
};
use crate::app::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(get_limits, put_limits))
}

/// One limit as asked for.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SpendLimitRequest)]
struct LimitBody {
    /// `account`, `api:<api_id>` or `key:<key_id>`.
    #[schema(example = "api:gpt-4o")]
    scope: String,
    /// `day` or `month`, calendar windows of the billing time zone.
    #[schema(example = "day")]
    window: String,
    /// At most this much spent in each window (a JSON integer).
    #[serde(deserialize_with = "super::json_integer")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64, example = 10_000_000)]
    limit_micros: i64,
}

/// The whole set of limits (`PUT`): it replaces the caller's set; an empty list removes them all.
/// A scope and window given more than once keeps its smallest limit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SpendLimitsRequest)]
struct LimitsBody {
    #[schema(max_items = 20)]
    limits: Vec<LimitBody>,
}

/// One limit and where it stands in its current window.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = SpendLimit)]
pub struct LimitJson {
    pub scope: String,
    pub window: String,
    pub limit_micros: i64,
    /// Charged in the window (free and balance parts) plus what reservations taken in it hold.
    pub spent_micros: i64,
    /// What may still be spent in the window (0 when a lowered limit is below what was spent).
    pub remaining_micros: i64,
    #[schema(format = DateTime)]
    pub window_start: String,
    /// When the next window starts and the counter starts again from 0.
    #[schema(format = DateTime)]
    pub resets_at: String,
}

/// The caller's limits.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = SpendLimits)]
pub struct LimitsJson {
    pub limits: Vec<LimitJson>,
}

fn instant(ms: i64) -> Result<String, ApiError> {
    DateTime::from_timestamp_millis(ms)
        .map(rfc3339)
        .ok_or_else(|| ApiError::internal("a limit's window is out of range"))
}

fn limits_json(statuses: &[pb::SpendLimitStatus]) -> Result<LimitsJson, ApiError> {
    let limits = statuses
        .iter()
        .map(|status| {
            let limit = status.limit.clone().unwrap_or_default();
            Ok(LimitJson {
                scope: limit.scope,
                window: limit.window,
                limit_micros: limit.limit_micros,
                spent_micros: status.spent_micros,
                remaining_micros: status.remaining_micros,
                window_start: instant(status.window_start_ms)?,
                resets_at: instant(status.resets_at_ms)?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(LimitsJson { limits })
}

/// The request a body asks for, checked whole: every violation at once.
fn limits_request(user: &UserId, body: Value) -> Result<pb::SetSpendLimitsRequest, ApiError> {
    if !body.is_object() {
        return Err(ApiError::invalid("the body must be a JSON object"));
    }
    let body: LimitsBody = serde_json::from_value(body)
        .map_err(|error| ApiError::invalid(format!("invalid body: {error}")))?;
    let mut violations: Vec<String> = Vec::new();
    let mut each = Vec::with_capacity(body.limits.len());
    for limit in &body.limits {
        match SpendLimit::parse(&limit.scope, &limit.window, limit.limit_micros) {
            Ok(limit) => each.push(limit),
            Err(violation) => violations.push(violation.to_string()),
        }
    }
    let set = limits::checked_set(limits::tightest_per_scope(each))
        .map_err(|violation| violations.push(violation.to_string()));
    violations.dedup();
    match set {
        Ok(set) if violations.is_empty() => Ok(pb::SetSpendLimitsRequest {
            user_id: user.to_string(),
            limits: set.iter().map(SpendLimit::message).collect(),
            actor: format!("user:{user}"),
            set_id: String::new(),
        }),
        _ => Err(ApiError::invalid(violations.join("; "))),
    }
}

/// The caller's spend limits.
///
/// Each limit with what was spent in its current window (charges decided in it, free and
/// balance parts alike, plus what reservations taken in it hold), what remains, and when the
/// window started and resets, in the billing time zone.
#[utoipa::path(
    get,
    path = "/api/v1/billing/limits",
    tag = openapi::BILLING_TAG,
    security(("bearer_jwt" = [])),
    responses(
        (status = 200, description = "The limits and their windows", body = LimitsJson),
        (status = 401, description = "No valid bearer token (`UNAUTHENTICATED`)", body = ErrorBody),
        (status = 500, description = "A fault of the service (`INTERNAL`)", body = ErrorBody),
        (status = 503, description = "command-svc cannot answer (`UNAVAILABLE`, \
            `STORE_UNAVAILABLE`)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user))]
async fn get_limits(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
) -> Result<Json<LimitsJson>, ApiError> {
    let shown = state.command.get_spend_limits(&user).await?;
    Ok(Json(limits_json(&shown.limits)?))
}

/// Replaces the caller's spend limits, the whole set.
///
/// A charge or a reservation that would take any limit it matches above the limit is refused
/// whole (`SPEND_LIMIT_REACHED`) and changes nothing. A limit kept (same scope and window) keeps
/// what was spent; a new one starts from what its scope already spent in the current window.
/// An empty list removes every limit.
#[utoipa::path(
    put,
    path = "/api/v1/billing/limits",
    tag = openapi::BILLING_TAG,
    security(("bearer_jwt" = [])),
    request_body(content = LimitsBody, content_type = "application/json"),
    responses((status = 200, description = "The limits as saved", body = LimitsJson), SaveFailure)
)]
#[tracing::instrument(skip_all, fields(user_id = %user))]
async fn put_limits(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<LimitsJson>, ApiError> {
    let Json(body) = body?;
    let request = limits_request(&user, body)?;
    let saved = state.command.set_spend_limits(request).await?;
    Ok(Json(limits_json(&saved.limits)?))
}
