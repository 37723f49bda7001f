//! The payment provider's webhook: `POST /api/v1/billing/recharge/callback`.
//!
//! The signature is `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>`, checked
//! against the current secret and every previous one (rotation), with the timestamp at most the
//! configured tolerance from now. Only a verified body is parsed; only a valid one is applied.

use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
pub use shared::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use shared::{
    config::Secret,
    signature::{self, Scheme},
};

use super::{error::HttpError, http::HttpState, parse};
use crate::events::OrderOut;

/// A payment callback's signature of `body` at `timestamp` with `secret` (for providers' test
/// tools and this service's tests).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    signature::sign(Scheme::Payment, secret, timestamp, body)
}

/// The secrets a signature may be made with, newest first, and how fresh it must be.
#[derive(Clone, Debug)]
pub struct WebhookKeys {
    pub secrets: Vec<Secret>,
    pub tolerance_secs: i64,
}

/// Fields a provider adds later are ignored: an authentic notification must not be refused for
/// saying more than the contract needs.
#[derive(Deserialize)]
struct CallbackBody {
    order_no: String,
    provider_txn_id: String,
    paid_amount_micros: i64,
    success: bool,
}

impl WebhookKeys {
    /// Accepts a fresh signature made with any configured secret; compares in constant time.
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), HttpError> {
        let unauthorized =
            |why: &str| HttpError::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", why);
        let header = |name| headers.get(name).and_then(|value| value.to_str().ok());
        let timestamp: i64 = header(TIMESTAMP_HEADER)
            .and_then(|text| text.trim().parse().ok())
            .ok_or_else(|| unauthorized("missing or malformed X-Billing-Timestamp"))?;
        if now.timestamp().abs_diff(timestamp) > self.tolerance_secs.unsigned_abs() {
            return Err(unauthorized(
                "the signature's timestamp is outside the accepted window",
            ));
        }
        let signature = header(SIGNATURE_HEADER)
            .filter(|text| text.trim().starts_with("sha256="))
            .ok_or_else(|| unauthorized("missing or malformed X-Billing-Signature"))?;
        let valid = self.secrets.iter().any(|secret| {
            signature::verify(Scheme::Payment, secret.expose(), timestamp, body, signature)
        });
        if valid {
            Ok(())
        } else {
            Err(unauthorized("the signature does not match"))
        }
    }
}

pub async fn recharge_callback(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, HttpError> {
    let body = body.map_err(|rejection| {
        let code = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "PAYLOAD_TOO_LARGE"
        } else {
            "INVALID_ARGUMENT"
        };
        HttpError::new(rejection.status(), code, rejection.body_text())
    })?;
    state
        .webhook
        .verify(&headers, &body, state.commands.now())?;
    let parsed: CallbackBody = serde_json::from_slice(&body).map_err(|error| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            format!("malformed body: {error}"),
        )
    })?;
    let callback = parse::recharge_callback(
        &parsed.order_no,
        &parsed.provider_txn_id,
        parsed.paid_amount_micros,
        parsed.success,
    )?;
    let result = state.commands.recharge_callback(&callback).await?;
    Ok(Json(json!({
        "outcome": result.outcome.as_str(),
        "order": result.order.as_ref().map(order_json),
        "replayed": result.replayed,
        "unmatched_id": result.unmatched_id,
    })))
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn order_json(order: &OrderOut) -> Value {
    let message = order.message();
    json!({
        "order_no": message.order_no,
        "user_id": message.user_id,
        "amount_micros": message.amount_micros,
        "channel": message.channel,
        "status": message.status().as_str_name().trim_start_matches("ORDER_STATUS_"),
        "provider_txn_id": order.row.provider_txn_id,
        "created_at": rfc3339(order.row.created_at),
        "paid_at": order.row.paid_at.map(rfc3339),
        "expires_at": rfc3339(order.row.expires_at),
    })
}
