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
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use shared::config::Secret;

use super::{error::HttpError, http::HttpState, parse};
use crate::events::OrderOut;

pub const TIMESTAMP_HEADER: &str = "x-billing-timestamp";
pub const SIGNATURE_HEADER: &str = "x-billing-signature";

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

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature of `body` sent at `timestamp` with `secret`, as the header carries it.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
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
            .and_then(|text| text.trim().strip_prefix("sha256="))
            .and_then(|hex_text| hex::decode(hex_text).ok())
            .ok_or_else(|| unauthorized("missing or malformed X-Billing-Signature"))?;
        let valid = self.secrets.iter().any(|secret| {
            mac(secret.expose(), timestamp, body)
                .verify_slice(&signature)
                .is_ok()
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
        HttpError::new(
            rejection.status(),
            "INVALID_ARGUMENT",
            rejection.body_text(),
        )
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
