//! Recharge orders: `POST /api/v1/billing/recharge` forwards to command-svc, which owns every
//! write; `GET /api/v1/billing/recharge/orders[/{order_no}]` reads the read model.
//!
//! - The body of a recharge is strict: `amount_micros` a JSON integer in 1 ..= 10^12, `channel`
//!   (0 ..= 32 characters) and `idempotency_key` (0 ..= 128 printable ASCII) optional, and no
//!   other field — a misspelt field is refused rather than ignored, since this request moves
//!   money. Everything is validated before it is forwarded.
//! - A replay of an idempotency key answers 201 with the same order as its creation showed it
//!   (PENDING, or EXPIRED once past `expires_at`); `GET` of the order tells what became of it.
//! - One order is read from `rm_orders`; an order created but not projected yet is asked of
//!   command-svc, which answers only for its owner. Unknown, or another user's: 404.
//! - The list is `rm_orders` alone, newest first (`created_at`, then `order_no`).
//! - Statuses are shown through [`shared::order::shown_status`] at the service clock's now, so a
//!   PENDING order past its expiry shows EXPIRED.

use axum::{
    Json,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
    http::StatusCode,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::{
    ids::{Channel, FieldViolation, IdempotencyKey, OrderNo, UserId, Violations},
    money,
    order::{OrderStatus, ShownStatus, shown_status},
    proto::v1 as pb,
};
use utoipa::{
    IntoParams, PartialSchema, ToSchema,
    openapi::{RefOr, schema::Schema},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    auth::AuthUser,
    cursor,
    error::{ApiError, ErrorBody},
    openapi, rfc3339,
};
use crate::{
    app::AppState,
    store::queries::{self, OrderRow},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(create_recharge))
        .routes(routes!(list_orders))
        .routes(routes!(get_order))
}

/// A recharge request: a JSON object with no other field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RechargeRequest)]
struct RechargeBody {
    /// A JSON integer (`1000000.0` is the same integer; a string or a fraction is refused).
    #[serde(deserialize_with = "super::json_integer")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64, example = 1_000_000)]
    amount_micros: i64,
    /// The payment channel, e.g. `alipay`; 0..32 characters.
    #[serde(default)]
    #[schema(max_length = 32, example = "alipay")]
    channel: Option<String>,
    /// Makes a retry return the same order; 0..128 printable ASCII.
    #[serde(default)]
    #[schema(max_length = 128, pattern = "^[ -~]*$")]
    idempotency_key: Option<String>,
}

impl RechargeBody {
    /// Only an object: serde would also take a struct from an array of its fields in order.
    fn from_json(body: Value) -> Result<RechargeBody, ApiError> {
        if !body.is_object() {
            return Err(ApiError::invalid("the body must be a JSON object"));
        }
        serde_json::from_value(body)
            .map_err(|error| ApiError::invalid(format!("invalid body: {error}")))
    }
}

/// The status an order shows ([`ShownStatus`]), as a schema.
struct OrderStatusSchema;

impl OrderStatusSchema {
    const ALL: [ShownStatus; 4] = [
        ShownStatus::Pending,
        ShownStatus::Paid,
        ShownStatus::Failed,
        ShownStatus::Expired,
    ];
}

/// A status added to [`ShownStatus`] fails to compile here until [`OrderStatusSchema::ALL`]
/// lists it.
const _: fn(ShownStatus) = |status| match status {
    ShownStatus::Pending | ShownStatus::Paid | ShownStatus::Failed | ShownStatus::Expired => {}
};

impl PartialSchema for OrderStatusSchema {
    fn schema() -> RefOr<Schema> {
        openapi::string_enum(OrderStatusSchema::ALL.map(ShownStatus::as_str))
    }
}

impl ToSchema for OrderStatusSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "OrderStatus".into()
    }
}

/// The answer to a recharge: the order as it was opened.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CreatedOrder)]
pub struct CreatedJson {
    pub order_no: String,
    /// `PENDING` for a new order; a replayed key shows the order as created (`EXPIRED` once past
    /// `expires_at`): its status since is read with `GET`.
    #[schema(value_type = OrderStatusSchema)]
    pub status: &'static str,
    pub amount_micros: i64,
    pub channel: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// A recharge order. `status` is shown at the service's now: a PENDING order at or past
/// `expires_at` shows EXPIRED.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Order)]
pub struct OrderJson {
    pub order_no: String,
    #[schema(value_type = OrderStatusSchema)]
    pub status: &'static str,
    pub amount_micros: i64,
    pub channel: String,
    /// The payment provider's transaction; `null` until one is known.
    #[schema(required = true)]
    pub provider_txn_id: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// `null` unless paid.
    #[schema(format = DateTime, required = true)]
    pub paid_at: Option<String>,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// One page of orders, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrdersPage {
    pub orders: Vec<OrderJson>,
    /// The `cursor` of the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct OrdersParams {
    /// Orders per page.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 20)]
    limit: Option<String>,
    /// The previous page's `next_cursor`: the page starts after that order.
    cursor: Option<String>,
}

/// An order from either source, before its status is shown at an instant.
struct Order {
    order_no: String,
    status: OrderStatus,
    amount_micros: i64,
    channel: String,
    provider_txn_id: Option<String>,
    created_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
    expires_at: DateTime<Utc>,
}

impl Order {
    fn from_row(row: OrderRow) -> Result<Order, ApiError> {
        let status = OrderStatus::parse(&row.status).ok_or_else(|| {
            ApiError::internal(format!(
                "rm_orders has status {:?} for {}",
                row.status, row.order_no
            ))
        })?;
        Ok(Order {
            order_no: row.order_no,
            status,
            amount_micros: row.amount_micros,
            channel: row.channel,
            provider_txn_id: row.provider_txn_id.filter(|txn| !txn.is_empty()),
            created_at: row.created_at,
            paid_at: row.paid_at,
            expires_at: row.expires_at,
        })
    }

    /// command-svc's message; EXPIRED is a PENDING order as stored, shown again at our now.
    fn from_message(message: pb::RechargeOrder) -> Result<Order, ApiError> {
        let status = match message.status() {
            pb::OrderStatus::Pending | pb::OrderStatus::Expired => OrderStatus::Pending,
            pb::OrderStatus::Paid => OrderStatus::Paid,
            pb::OrderStatus::Failed => OrderStatus::Failed,
            pb::OrderStatus::Unspecified => {
                return Err(ApiError::internal(format!(
                    "command-svc sent order {} without a status",
                    message.order_no
                )));
            }
        };
        let instant = |ms: i64, what: &str| {
            DateTime::from_timestamp_millis(ms).ok_or_else(|| {
                ApiError::internal(format!("command-svc sent order {what} {ms} out of range"))
            })
        };
        Ok(Order {
            status,
            amount_micros: message.amount_micros,
            channel: message.channel,
            provider_txn_id: Some(message.provider_txn_id).filter(|txn| !txn.is_empty()),
            created_at: instant(message.created_at_ms, "created_at")?,
            paid_at: match message.paid_at_ms {
                0 => None,
                ms => Some(instant(ms, "paid_at")?),
            },
            expires_at: instant(message.expires_at_ms, "expires_at")?,
            order_no: message.order_no,
        })
    }

    fn json(self, now: DateTime<Utc>) -> OrderJson {
        OrderJson {
            status: shown_status(self.status, self.expires_at, now).as_str(),
            order_no: self.order_no,
            amount_micros: self.amount_micros,
            channel: self.channel,
            provider_txn_id: self.provider_txn_id,
            created_at: rfc3339(self.created_at),
            paid_at: self.paid_at.map(rfc3339),
            expires_at: rfc3339(self.expires_at),
        }
    }
}

/// Every field checked, every violation reported at once.
fn recharge_request(
    user: &UserId,
    body: RechargeBody,
) -> Result<pb::CreateRechargeOrderRequest, ApiError> {
    let mut violations = Violations::new();
    let amount = violations.take(
        money::parse_amount(body.amount_micros)
            .map_err(|error| FieldViolation::new("amount_micros", error.to_string())),
    );
    let channel = violations.take(Channel::parse(
        "channel",
        body.channel.as_deref().unwrap_or_default(),
    ));
    let key = violations.take(IdempotencyKey::parse(
        "idempotency_key",
        body.idempotency_key.as_deref().unwrap_or_default(),
    ));
    match (violations.finish(), amount, channel, key) {
        (Ok(()), Some(amount), Some(channel), Some(key)) => Ok(pb::CreateRechargeOrderRequest {
            user_id: user.to_string(),
            amount_micros: amount.get(),
            channel: channel.into_string(),
            idempotency_key: key.into_string(),
        }),
        (Err(violations), ..) => Err(ApiError::invalid(
            violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )),
        _ => Err(ApiError::internal("a refused field recorded no violation")),
    }
}

/// Opens a recharge order.
///
/// Validated, then forwarded to command-svc, which owns every write. A repeated
/// `idempotency_key` answers 201 with the same order. On a 503 the outcome is unknown: retry
/// with the same key.
#[utoipa::path(
    post,
    path = "/api/v1/billing/recharge",
    tag = openapi::BILLING_TAG,
    security(("bearer_jwt" = [])),
    request_body(content = RechargeBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The order, PENDING (or the key's order as it was created)",
            body = CreatedJson),
        (status = 400, description = "A bad body, every violated field at once \
            (`INVALID_ARGUMENT`)", body = ErrorBody),
        (status = 401, description = "No valid bearer token (`UNAUTHENTICATED`)", body = ErrorBody),
        (status = 409, description = "The key was used with another amount \
            (`IDEMPOTENCY_KEY_REUSED`)", body = ErrorBody),
        (status = 413, description = "A body over `listeners.max_body_bytes`, 8 KiB by default \
            (`PAYLOAD_TOO_LARGE`)", body = ErrorBody),
        (status = 415, description = "The body is not `application/json` \
            (`UNSUPPORTED_MEDIA_TYPE`)", body = ErrorBody),
        (status = 422, description = "The order would take the balance past its limit \
            (`BALANCE_LIMIT`)", body = ErrorBody),
        (status = 500, description = "A fault of the service (`INTERNAL`)", body = ErrorBody),
        (status = 503, description = "command-svc cannot answer (`UNAVAILABLE`, \
            `STORE_UNAVAILABLE`); the outcome is unknown", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user))]
async fn create_recharge(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedJson>), ApiError> {
    let Json(body) = body?;
    let request = recharge_request(&user, RechargeBody::from_json(body)?)?;
    let order = Order::from_message(state.command.create_recharge_order(request).await?)?;
    let json = order.json(state.clock.now());
    Ok((
        StatusCode::CREATED,
        Json(CreatedJson {
            order_no: json.order_no,
            status: json.status,
            amount_micros: json.amount_micros,
            channel: json.channel,
            created_at: json.created_at,
            expires_at: json.expires_at,
        }),
    ))
}

/// One of the caller's orders.
///
/// From the read model; an order not projected yet is asked of command-svc.
#[utoipa::path(
    get,
    path = "/api/v1/billing/recharge/orders/{order_no}",
    tag = openapi::BILLING_TAG,
    security(("bearer_jwt" = [])),
    params(("order_no" = String, Path,
        description = "The order's number, 1..128 printable ASCII")),
    responses(
        (status = 200, description = "The order", body = OrderJson),
        (status = 400, description = "A malformed order number (`INVALID_ARGUMENT`)",
            body = ErrorBody),
        (status = 401, description = "No valid bearer token (`UNAUTHENTICATED`)", body = ErrorBody),
        (status = 404, description = "An unknown order, or another user's (`ORDER_NOT_FOUND`)",
            body = ErrorBody),
        (status = 500, description = "A fault of the service (`INTERNAL`)", body = ErrorBody),
        (status = 503, description = "Neither the read model nor command-svc can answer \
            (`UNAVAILABLE`)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user))]
async fn get_order(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    order_no: Result<Path<String>, PathRejection>,
) -> Result<Json<OrderJson>, ApiError> {
    let Path(order_no) = order_no?;
    let order_no =
        OrderNo::parse("order_no", &order_no).map_err(|v| ApiError::invalid(v.to_string()))?;
    let stored = queries::find_order(state.store.pool(), user.as_str(), order_no.as_str()).await;
    let order = match stored {
        Ok(Some(row)) => Order::from_row(row)?,
        // Not projected yet (or the read model is unreachable): command-svc knows every order.
        Ok(None) => Order::from_message(state.command.get_recharge_order(&user, &order_no).await?)?,
        Err(error) => {
            tracing::warn!(%error, "rm_orders unreadable; asking command-svc");
            Order::from_message(state.command.get_recharge_order(&user, &order_no).await?)?
        }
    };
    Ok(Json(order.json(state.clock.now())))
}

/// The caller's orders, newest first.
///
/// Keyset pages by `created_at`, then `order_no`, from the read model.
#[utoipa::path(
    get,
    path = "/api/v1/billing/recharge/orders",
    tag = openapi::BILLING_TAG,
    security(("bearer_jwt" = [])),
    params(OrdersParams),
    responses(
        (status = 200, description = "A page of orders", body = OrdersPage),
        (status = 400, description = "A bad `limit` or `cursor` (`INVALID_ARGUMENT`)",
            body = ErrorBody),
        (status = 401, description = "No valid bearer token (`UNAUTHENTICATED`)", body = ErrorBody),
        (status = 500, description = "A fault of the service (`INTERNAL`)", body = ErrorBody),
        (status = 503, description = "MySQL cannot answer (`UNAVAILABLE`)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user))]
async fn list_orders(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    params: Result<Query<OrdersParams>, QueryRejection>,
) -> Result<Json<OrdersPage>, ApiError> {
    let Query(params) = params?;
    let limit = cursor::parse_limit(params.limit.as_deref())?;
    let after = params
        .cursor
        .as_deref()
        .filter(|token| !token.is_empty())
        .map(cursor::orders_position)
        .transpose()?
        .map(|(at, order_no)| (super::within_store_range(at), order_no));
    let mut rows = queries::orders_page(
        state.store.pool(),
        user.as_str(),
        after.as_ref().map(|(at, no)| (*at, no.as_str())),
        limit + 1,
    )
    .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = match rows.last() {
        Some(last) if more => Some(cursor::orders_cursor(last.created_at, &last.order_no)),
        _ => None,
    };
    let now = state.clock.now();
    let orders = rows
        .into_iter()
        .map(|row| Order::from_row(row).map(|order| order.json(now)))
        .collect::<Result<_, _>>()?;
    Ok(Json(OrdersPage {
        orders,
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserId {
        UserId::parse("user_id", "dev-1").unwrap()
    }

    fn body(json: Value) -> Result<RechargeBody, ApiError> {
        RechargeBody::from_json(json)
    }

    #[test]
    fn a_recharge_body_is_strict() {
        use serde_json::json;
        let ok = body(json!({ "amount_micros": 1_000_000, "channel": "alipay" })).unwrap();
        let request = recharge_request(&user(), ok).unwrap();
        assert_eq!(
            (
                request.user_id.as_str(),
                request.amount_micros,
                request.idempotency_key.as_str()
            ),
            ("dev-1", 1_000_000, "")
        );
        for wrong_type in [
            json!({ "amount_micros": "1000000" }),
            json!({ "amount_micros": 1.5 }),
            json!({ "amount_micros": 1.0000001e6 }),
            json!({ "amount_micros": 1_000_000, "user_id": "dev-2" }),
            json!({ "channel": "alipay" }),
            json!([1_000_000]),
            json!(1_000_000),
        ] {
            assert!(body(wrong_type.clone()).is_err(), "{wrong_type}");
        }
        let written_as_float = body(json!({ "amount_micros": 74_125_498.0 })).unwrap();
        assert_eq!(written_as_float.amount_micros, 74_125_498);
        for out_of_range in [0, -1, 1_000_000_000_001, i64::MAX] {
            let parsed = body(json!({ "amount_micros": out_of_range })).unwrap();
            assert!(recharge_request(&user(), parsed).is_err(), "{out_of_range}");
        }
        let long_channel = body(json!({ "amount_micros": 1, "channel": "x".repeat(33) })).unwrap();
        assert!(recharge_request(&user(), long_channel).is_err());
        let bad_key = body(json!({ "amount_micros": 1, "idempotency_key": "é" })).unwrap();
        assert!(recharge_request(&user(), bad_key).is_err());
    }
}
