//! `GET /api/v1/billing/prices`: the caller's price list, as command-svc (which owns prices)
//! holds it: the version in effect now, and the versions scheduled after it, earliest first.
//! Forwarded as `GetPriceList` with the `orders` token.

use axum::{Json, extract::State};
use chrono::DateTime;
use serde::Serialize;
use shared::proto::v1 as pb;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    auth::AuthUser,
    error::{ApiError, ErrorBody},
    openapi, rfc3339,
};
use crate::app::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(get_prices))
}

/// The caller's price list: the version in effect (`version` and `effective_from` `null`, and no
/// prices, while none is) and the later ones.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = PriceList)]
pub struct PricesView {
    /// The list's name.
    pub name: String,
    /// The version in effect; `null` while none is.
    #[schema(required = true)]
    pub version: Option<i64>,
    pub currency: String,
    /// When the version in effect took effect; `null` while none is.
    #[schema(required = true, format = DateTime)]
    pub effective_from: Option<String>,
    /// Every price of the version in effect, by API, then meter.
    pub prices: Vec<PriceJson>,
    /// The versions that take effect later, earliest first.
    pub scheduled: Vec<ScheduledJson>,
}

/// A version that takes effect later.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ScheduledPriceList)]
pub struct ScheduledJson {
    pub name: String,
    pub version: i64,
    pub currency: String,
    #[schema(format = DateTime)]
    pub effective_from: String,
    pub prices: Vec<PriceJson>,
}

/// `price_micros` for every `per_units` units of `meter` used by a call of `api_id`. A call is
/// charged ⌈Σ quantity × price_micros ÷ per_units⌉ over its meters, rounded up once.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Price)]
pub struct PriceJson {
    pub api_id: String,
    pub meter: String,
    pub price_micros: i64,
    pub per_units: i64,
}

fn prices_json(list: &pb::PriceList) -> Vec<PriceJson> {
    list.prices
        .iter()
        .map(|price| PriceJson {
            api_id: price.api_id.clone(),
            meter: price.meter.clone(),
            price_micros: price.price_micros,
            per_units: price.per_units,
        })
        .collect()
}

fn instant(ms: i64) -> Result<String, ApiError> {
    DateTime::from_timestamp_millis(ms)
        .map(rfc3339)
        .ok_or_else(|| ApiError::internal("a price list's instant is out of range"))
}

fn scheduled_json(list: &pb::PriceList) -> Result<ScheduledJson, ApiError> {
    Ok(ScheduledJson {
        name: list.name.clone(),
        version: list.version,
        currency: list.currency.clone(),
        effective_from: instant(list.effective_from_ms)?,
        prices: prices_json(list),
    })
}

/// The caller's prices.
///
/// The list that prices the caller's usage, as in effect now, and the versions scheduled after
/// it. A call that reports usage is charged by the version in effect when it is decided.
#[utoipa::path(
    get,
    path = "/api/v1/billing/prices",
    tag = openapi::BILLING_TAG,
    security(("bearer_jwt" = [])),
    responses(
        (status = 200, description = "The list in effect and the scheduled versions", body = PricesView),
        (status = 401, description = "No valid bearer token (`UNAUTHENTICATED`)", body = ErrorBody),
        (status = 500, description = "A fault of the service (`INTERNAL`)", body = ErrorBody),
        (status = 503, description = "command-svc cannot answer (`UNAVAILABLE`, \
            `STORE_UNAVAILABLE`)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user))]
async fn get_prices(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
) -> Result<Json<PricesView>, ApiError> {
    let shown = state.command.get_price_list(&user).await?;
    let scheduled = shown
        .scheduled
        .iter()
        .map(scheduled_json)
        .collect::<Result<Vec<_>, _>>()?;
    let view = match &shown.current {
        Some(current) => PricesView {
            name: current.name.clone(),
            version: Some(current.version),
            currency: current.currency.clone(),
            effective_from: Some(instant(current.effective_from_ms)?),
            prices: prices_json(current),
            scheduled,
        },
        None => {
            // Nothing in effect yet: the account names its list and currency.
            let account = state.command.get_account(&user).await?;
            PricesView {
                name: account.price_list,
                version: None,
                currency: account.currency,
                effective_from: None,
                prices: Vec::new(),
                scheduled,
            }
        }
    };
    Ok(Json(view))
}
